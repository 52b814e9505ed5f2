"""An auxiliary head that names the other sound of a clip: trained with the model, never exported.

The event and tag heads are told only whether a siren sounds. A model that must tell a siren from a
ringtone, a steady tone, a chord or a reversing alarm learns that from a yes/no answer per clip. This
head is also told *which* other sound a clip holds, from a field of the manifest's per-row metadata
(the generator writes ``synth.clutter_sound``: one of its untagged kinds, or none). Naming the kind
makes the audio encoder keep those sounds apart from each other and from sirens: an auxiliary task
as extra supervision of a shared encoder (Caruana, 1997, "Multitask learning").

The head is one linear layer on the mean of the audio tokens. It trains beside the model like the
distillation projector (saved in ``last.pt`` for an exact resume), and is in neither ``best.pt``
nor the bundle, so the exported model is unchanged. A row without the field (a user's own data),
and a sample whose audio modality dropout removed, add nothing to its loss.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
from torch import nn

from fusionedge.sdk.errors import DataError

from .losses import IGNORE_INDEX

__all__ = ["NO_VALUE", "meta_targets", "AudioMetaHead", "aux_audio_loss"]

#: The class name of a row whose field is present and null (the generator's "no other sound").
NO_VALUE = "none"
_MISSING = object()


def _meta_value(meta: dict, key: str) -> object:
    """The value at a dotted ``key`` (``"synth.clutter_sound"``) of a row's metadata, ``_MISSING`` if absent."""
    node: object = meta
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def meta_targets(metas: Sequence[dict], key: str) -> tuple[torch.Tensor, tuple[str, ...], dict[str, int]]:
    """Class indices of one metadata field over a split.

    Args:
        metas: each row's metadata (``Sample.meta``), in the split's order.
        key: dotted field name.

    Raises:
        DataError: no row has the field, a value is not a string or null, or all rows have one value
            (nothing to learn).

    Returns:
        ``(targets (N,) int64 with IGNORE_INDEX where the field is absent, class names sorted with
        NO_VALUE first, count per class)``.
    """
    values: list[str | None] = []
    for i, meta in enumerate(metas):
        v = _meta_value(meta, key)
        if v is _MISSING:
            values.append(None)
            continue
        if v is not None and not isinstance(v, str):
            raise DataError(f"row {i}: metadata {key!r} must be a string or null, got {type(v).__name__} {v!r}")
        values.append(NO_VALUE if v is None else v)
    counts = Counter(v for v in values if v is not None)
    if not counts:
        raise DataError(f"no training row has the metadata field {key!r} (e.g. the generator's "
                        "'synth.clutter_sound'): nothing for the auxiliary audio head to learn")
    if len(counts) < 2:
        raise DataError(f"every training row has {key!r} = {next(iter(counts))!r}: the auxiliary audio head "
                        "needs at least two values")
    classes = tuple(sorted(counts, key=lambda c: (c != NO_VALUE, c)))
    index = {c: i for i, c in enumerate(classes)}
    targets = torch.tensor([IGNORE_INDEX if v is None else index[v] for v in values], dtype=torch.int64)
    return targets, classes, {c: counts[c] for c in classes}


class AudioMetaHead(nn.Module):
    """Audio tokens ``(B, N, C)`` → class logits ``(B, K)`` through their mean and one linear layer."""

    def __init__(self, audio_dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(audio_dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens.mean(dim=1))


def aux_audio_loss(logits: torch.Tensor, targets: torch.Tensor, audio_present: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the samples that heard their audio and have a class (0 when none has).

    Args:
        logits: ``(B, K)``. targets: ``(B,)`` class indices or ``IGNORE_INDEX``.
        audio_present: ``(B,)`` the audio presence after modality dropout (0: the sample heard nothing).
    """
    targets = torch.where(audio_present > 0, targets, torch.full_like(targets, IGNORE_INDEX))
    if not bool((targets != IGNORE_INDEX).any()):
        return logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) whole
    return nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
