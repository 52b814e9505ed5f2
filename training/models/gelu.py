"""GELU written in the operator order that ONNX Runtime fuses into one ``Gelu`` kernel.

``torch.nn.GELU`` exports as ``Div → Erf → Add → Mul(0.5) → Mul(x)``, an order ONNX Runtime's GELU
fusion does not recognise, so every GELU of the model runs as five small kernels on a CPU. The same
function written as ``(x · 0.5) · (1 + erf(x / √2))`` exports as the sequence the fusion matches and
runs as one kernel; TensorRT's parser reads the same standard operators (``Div``, ``Erf``, ``Add``,
``Mul``). The values are those of ``nn.GELU()`` (the exact, erf-based form) up to float rounding.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Gelu"]

_SQRT2 = math.sqrt(2.0)


class Gelu(nn.Module):
    """``x · Φ(x)`` with the standard normal CDF ``Φ`` (``nn.GELU()``'s exact form); no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 0.5) * (1.0 + torch.erf(x / _SQRT2))
