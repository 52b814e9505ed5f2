"""Quantization-aware fine-tuning (QAT): train with INT8 rounding simulated, export the same Q/DQ form as PTQ.

What is simulated mirrors what ``onnxruntime.quantization.quantize_static`` (the PTQ path,
:mod:`fusionedge.export.quantize`) does to the graph, for a :class:`QATConfig` matching its
``QuantizeConfig``:

* weights of every ``Conv1d``/``Conv2d``/``Linear``: symmetric int8, per output channel or per tensor;
* the inputs of those layers: asymmetric uint8 (``cpu`` profile) from an exponential moving min/max;
* with ``quantize_frontend=True`` also the audio front end's DFT convolution (input waveform and DFT
  kernels) and the mel matmul (power spectrum and filterbank), as PTQ does without front-end exclusion.

Rounding uses the straight-through estimator (the gradient passes the rounding unchanged), so the
weights learn to sit where rounding hurts least. After fine-tuning, the fake-quant is removed: this
module returns an FP32 model. Making an INT8 bundle of it (export, then the *same*
``quantize_static`` settings as PTQ, so the graph has exactly PTQ's Q/DQ form and only the weights
differ) is the exporter's job: :func:`fusionedge.export.qat.qat_to_bundle`. (Activation ranges are
recalibrated on the fine-tuned model; they match the ranges the fake-quant observed to within the
calibration set's spread.)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from fusionedge.sdk.errors import FusionEdgeError

__all__ = ["QATError", "QATConfig", "FakeQuantActivation", "fake_quant_weight", "weight_qmax", "prepare_qat",
           "strip_qat", "finetune_qat"]


@dataclass(frozen=True)
class QATConfig:
    """What to simulate and how long to train.

    Attributes:
        per_channel: per-output-channel weight scales (False: one per tensor), as PTQ ``per_channel``.
        quantize_frontend: also simulate quantizing the audio front end (PTQ ``exclude_frontend=False``).
        weight_bits: the symmetric weight grid, ``2^(b-1) - 1`` levels each side (PTQ ``weight_bits``).
        reduce_range: 8-bit weights on the ``cpu`` profile's 7-bit grid, [-64, 64] (PTQ
            ``QuantizeConfig.weights_7bit``: ONNX Runtime's reduced int8 range), so that fine-tuning
            rounds the weights to the grid the export will use.
        epochs: fine-tuning epochs.
        lr: AdamW learning rate (small: this refines a trained model).
        batch_size: samples per step.
        momentum: EMA momentum of the activation range observers.
        seed: the run's seed.
    """

    per_channel: bool = True
    quantize_frontend: bool = False
    weight_bits: int = 8  # as PTQ ``QuantizeConfig.weight_bits``: 4 simulates W4A8
    reduce_range: bool = True  # as PTQ ``QuantizeConfig.weights_7bit`` (the default ``cpu`` profile)
    epochs: int = 1
    lr: float = 2e-4
    batch_size: int = 32
    momentum: float = 0.9
    seed: int = 0

    @property
    def weight_qmax(self) -> int:
        """The weight grid's largest level: ``2^(b-1) - 1``, or 64 for 8 bits on the reduced range."""
        return weight_qmax(self.weight_bits, self.reduce_range)


def weight_qmax(bits: int, reduce_range: bool) -> int:
    """The largest level of the symmetric weight grid the exporter uses for these settings.

    ONNX Runtime's ``reduce_range`` puts int8 weights on [-64, 64] (scale ``max|w| / 64``); a coarser
    ``weight_bits`` grid is applied after it (``export.quantize.requantize_weights``).
    """
    return 64 if reduce_range and bits == 8 else 2 ** (bits - 1) - 1


class QATError(FusionEdgeError):
    """Quantization-aware fine-tuning diverged."""


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return g


def fake_quant_weight(w: torch.Tensor, per_channel: bool, bits: int = 8, qmax: int | None = None) -> torch.Tensor:
    """Symmetric int8 fake quantization of a weight (scale = max|w| / qmax, per output channel or tensor).

    Args:
        w: the weight, output channels first.
        per_channel: one scale per output channel.
        bits: the grid's bits (``qmax = 2^(bits-1) - 1``) when ``qmax`` is not given.
        qmax: the grid's largest level (:func:`weight_qmax`).

    Returns:
        ``w`` rounded to the int8 grid, with straight-through gradients.
    """
    if per_channel and w.dim() > 1:
        amax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (w.dim() - 1)))
    else:
        amax = w.detach().abs().amax().clamp_min(1e-12)
    top = float(2 ** (bits - 1) - 1 if qmax is None else qmax)
    scale = amax / top
    return torch.clamp(_RoundSTE.apply(w / scale), -top, top) * scale


class FakeQuantActivation(nn.Module):
    """Asymmetric uint8 fake quantization with an EMA min/max observer (the range always includes 0)."""

    def __init__(self, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = float(momentum)
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            lo, hi = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
            if not bool(self.seen):
                self.lo.copy_(lo), self.hi.copy_(hi), self.seen.fill_(True)
            else:
                m = self.momentum
                self.lo.mul_(m).add_((1 - m) * lo)
                self.hi.mul_(m).add_((1 - m) * hi)
        scale = ((self.hi - self.lo) / 255.0).clamp_min(1e-12)
        zero = torch.round(-self.lo / scale)
        q = torch.clamp(_RoundSTE.apply(x / scale) + zero, 0, 255)
        return (q - zero) * scale


class _QATLayer(nn.Module):
    """A Conv/Linear whose input and weight are fake-quantized."""

    def __init__(self, layer: nn.Module, cfg: QATConfig) -> None:
        super().__init__()
        self.layer = layer
        self.act = FakeQuantActivation(cfg.momentum)
        self.per_channel, self.qmax = cfg.per_channel, cfg.weight_qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        w = fake_quant_weight(self.layer.weight, self.per_channel, qmax=self.qmax)
        if isinstance(self.layer, nn.Linear):
            return nn.functional.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)  # type: ignore[operator]


class _QATFrontend(nn.Module):
    """The log-mel front end with PTQ's quantization points simulated when it is not excluded.

    ``quantize_static`` (QDQ) puts Q/DQ pairs on the DFT convolution's input, weight and output, on
    both products and the sum of the power spectrum, and on the mel matmul's weight and output. The output of the matmul is where most accuracy goes: quiet mel
    bins round to zero and the log turns them into ``log(eps)``.
    """

    def __init__(self, frontend: nn.Module, cfg: QATConfig) -> None:
        super().__init__()
        self.frontend = frontend
        self.per_channel, self.qmax = cfg.per_channel, cfg.weight_qmax
        names = ("audio", "spec", "rr", "ii", "power", "mel")
        self.q = nn.ModuleDict({n: FakeQuantActivation(cfg.momentum) for n in names})

    def power(self, audio: torch.Tensor) -> torch.Tensor:
        """The fake-quantized STFT power (B, n_fft/2+1, F), as the front end's ``power``."""
        f, q = self.frontend, self.q
        x = q["audio"](audio.unsqueeze(1))
        dft = fake_quant_weight(f.dft, self.per_channel, qmax=self.qmax)
        spec = q["spec"](nn.functional.conv1d(x, dft, stride=f.hop_length, padding=f.n_fft // 2))
        real, imag = spec[:, : f.n_freqs], spec[:, f.n_freqs:]
        return q["power"](q["rr"](real * real) + q["ii"](imag * imag))

    def num_frames(self, num_samples: int) -> int:
        """Frames the front end makes of ``num_samples`` samples."""
        return self.frontend.num_frames(num_samples)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.log_mel(self.power(audio))

    def log_mel(self, power: torch.Tensor) -> torch.Tensor:
        """Log-mel of a (fake-quantized) power spectrum, as the front end's ``log_mel``."""
        f, q = self.frontend, self.q
        mel_fb = fake_quant_weight(f.mel_fb.t(), self.per_channel, qmax=self.qmax).t()  # MatMul weight: per column
        mel = q["mel"](torch.matmul(power.transpose(1, 2), mel_fb))
        # the "+ eps" output is not fake-quantized: a rounded 0 there would give log(0) = -inf in training
        return torch.log(mel + f.eps).transpose(1, 2)


_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _wrap(module: nn.Module, cfg: QATConfig) -> None:
    from fusionedge.training.models.audio_frontend import LogMelFrontend

    for name, child in module.named_children():
        if isinstance(child, LogMelFrontend):
            if cfg.quantize_frontend:
                setattr(module, name, _QATFrontend(child, cfg))
        elif isinstance(child, _LAYERS):
            setattr(module, name, _QATLayer(child, cfg))
        elif isinstance(child, nn.MultiheadAttention):
            continue  # its projections run through F.multi_head_attention_forward, not the modules
        else:
            _wrap(child, cfg)


def prepare_qat(model: nn.Module, cfg: QATConfig = QATConfig()) -> nn.Module:
    """Wrap a model's Conv/Linear layers (and optionally its audio front end) with fake quantization, in place.

    Returns:
        ``model`` (for chaining).
    """
    _wrap(model, cfg)
    return model


def strip_qat(model: nn.Module) -> nn.Module:
    """Undo :func:`prepare_qat` in place: the original modules with their fine-tuned weights.

    Returns:
        ``model``.
    """
    for name, child in model.named_children():
        if isinstance(child, _QATLayer):
            setattr(model, name, child.layer)
        elif isinstance(child, _QATFrontend):
            setattr(model, name, child.frontend)
        else:
            strip_qat(child)
    return model


def finetune_qat(
    checkpoint: str | os.PathLike, data: str | os.PathLike, cfg: QATConfig = QATConfig(), *,
    limit: int | None = None, progress: bool = True,
) -> tuple[nn.Module, dict]:
    """Fine-tune a trained checkpoint with fake quantization; return the stripped FP32 model and its info.

    Args:
        checkpoint: a training checkpoint (``save_checkpoint``).
        data: the training data-set manifest (labelled).
        cfg: see :class:`QATConfig`.
        limit: use only the first ``limit`` samples.
        progress: progress bars on stderr.

    Returns:
        ``(model in eval mode without fake-quant, info)`` — ``info`` is the checkpoint's, with
        ``extra.qat`` recording the config; pass both to :func:`fusionedge.export.pipeline.export_model`.

    Raises:
        DataError: the data manifest is invalid. CheckpointError: the checkpoint is invalid.
    """
    from tqdm import tqdm

    from fusionedge.sdk.datamanifest import read_manifest
    from fusionedge.sdk.spec import InputGeometry
    from fusionedge.training.checkpoint import load_checkpoint
    from fusionedge.training.dataset import Labels, iterate_batches, load_clips
    from fusionedge.training.losses import LossWeights, multitask_loss

    torch.manual_seed(cfg.seed)
    model, info = load_checkpoint(checkpoint)
    geometry = InputGeometry.from_dict(dict(info["geometry"]))
    labels = Labels(**{k: tuple(v) for k, v in info["labels"].items()})
    samples = read_manifest(data, require_labels=True, events=labels.events, audio_tags=labels.audio_tags,
                            objects=labels.objects)[:limit]
    clips = load_clips(samples, geometry, labels, workers=2, progress=progress, desc="decode qat")
    prepare_qat(model, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    weights = LossWeights()
    for epoch in range(cfg.epochs):
        batches: Iterator = iterate_batches(clips, cfg.batch_size, shuffle=True, generator=gen)
        bar = tqdm(batches, desc=f"qat {epoch + 1}/{cfg.epochs}", file=sys.stderr, disable=not progress,
                   leave=False)
        for batch in bar:
            loss, _ = multitask_loss(model(batch["video"], batch["audio"], batch["presence"]), batch, weights)
            if not torch.isfinite(loss):
                raise QATError(f"QAT loss became {loss.item()} in epoch {epoch + 1}; lower QATConfig.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    strip_qat(model).eval()
    info = dict(info)
    info["extra"] = {**dict(info.get("extra") or {}), "qat": {
        "per_channel": cfg.per_channel, "quantize_frontend": cfg.quantize_frontend, "epochs": cfg.epochs,
        "lr": cfg.lr, "samples": len(samples), "seed": cfg.seed, "weight_bits": cfg.weight_bits,
        "reduce_range": cfg.reduce_range}}
    return model, info
