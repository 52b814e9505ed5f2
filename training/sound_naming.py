"""Sound naming: an auxiliary training loss that names each generator clip's untagged sound.

The tonal sounds that carry no tag (a steady tone, a ringtone, a seat-belt chime, a melody, a
chord ...) are the sounds a siren is mistaken for. The supervised loss tells the audio encoder only
that they are "not a siren", which it can learn from whatever separates them from the training
sirens; it is never asked what they are. This loss asks: a small head on the audio tokens (the
same mean-and-max pooling as the tag head) classifies each clip's untagged sound among
``SOUND_NAMES`` (``"none"`` and the generator's ``rules.CLUTTER_SOUNDS``), so the encoder has to
keep what tells a melody or a ringtone from a siren's sweep or two-tone alternation (auxiliary
tasks as a representation prior: Caruana, "Multitask Learning", 1997; naming the nuisance rather
than only rejecting it).

The head trains with the model and is saved with the run's extra modules (``last.pt``); it is not
part of the model, so ``best.pt``, the export and the runtime are unchanged. The targets come from
the generator's rows (``synth.clutter_sound`` in the manifest); a row without them, a draw whose
audio was dropped or mixed with another clip's, is not counted. A clutter swap moves the name with
the sound (``siren_swap.swap_sirens``). On the open-world recipe it was measured without a gain in
event accuracy (``training/EXPERIMENTS.md``), so it is an option, off by default.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from fusionedge.sdk.datamanifest import Sample
from fusionedge.sdk.errors import DataError

from .models.heads import AudioTagHead
from .synth.rules import CLUTTER_SOUNDS

__all__ = ["SOUND_NAMES", "UNNAMED", "sound_index", "sound_names_of", "sound_naming_head", "sound_naming_loss"]

#: The classes the head names: no untagged sound, then the generator's untagged sounds.
SOUND_NAMES: tuple[str, ...] = ("none", *CLUTTER_SOUNDS)
#: The target of a draw whose untagged sound is not known (not counted by the loss).
UNNAMED = -1


def sound_index(name: str | None) -> int:
    """The class of an untagged sound's name (``None``: ``"none"``).

    Raises:
        DataError: a name the generator does not make.
    """
    if name is None:
        return 0
    if name not in SOUND_NAMES:
        raise DataError(f"unknown untagged sound {name!r}; the generator makes {', '.join(SOUND_NAMES[1:])}")
    return SOUND_NAMES.index(name)


def sound_names_of(samples: Sequence[Sample]) -> torch.Tensor:
    """Each row's untagged sound as a class of ``SOUND_NAMES``, ``UNNAMED`` for a row the generator did not make.

    Raises:
        DataError: no row is the generator's (there is nothing to name), or a row names a sound the
            generator does not make.

    Returns:
        ``(N,)`` int64.
    """
    out = []
    for s in samples:
        info = s.meta.get("synth") if isinstance(s.meta, dict) else None
        if not isinstance(info, dict) or "clutter_sound" not in info or s.audio is None:
            out.append(UNNAMED)
            continue
        out.append(sound_index(info["clutter_sound"]))
    kinds = torch.tensor(out, dtype=torch.int64)
    if not (kinds != UNNAMED).any():
        raise DataError("sound naming needs the generator's rows (synth.clutter_sound in the manifest); "
                        "no training row has one")
    return kinds


def sound_naming_head(audio_dim: int, hidden: int) -> AudioTagHead:
    """Audio tokens ``(B, Na, Ca)`` → ``(B, len(SOUND_NAMES))`` logits: the tag head's pooling and MLP."""
    return AudioTagHead(audio_dim, hidden, len(SOUND_NAMES))


def sound_naming_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the draws whose sound is named (``target != UNNAMED``); 0 when none is.

    Args:
        logits: ``(B, K)``.
        target: ``(B,)`` int64 classes, ``UNNAMED`` where unknown.
    """
    named = (target != UNNAMED).float()
    ce = F.cross_entropy(logits, target.clamp(min=0), reduction="none")  # (B,)
    return (ce * named).sum() / named.sum().clamp(min=1.0)
