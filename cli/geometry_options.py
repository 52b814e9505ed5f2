"""The options that shape what a model sees: ``--input-size WxH``, ``--clip-frames``, ``--clip-seconds``,
``--sample-rate``, ``--output-stride`` and ``--modalities``.

``train``, ``distill``, ``pretrain`` and ``data synth`` take them, so a project at 320x240, 8 frames
over 2 s of 22.05 kHz audio is trained with the same commands as the quickstart. An option left out
keeps the default geometry's value (``fusionedge.sdk.spec.InputGeometry``). The values are parsed
here and checked where they are used (the run's config and the model's), before anything is read or
written; the result is recorded in the checkpoint and the bundle manifest, from which export, the
runtime, streaming and the benchmarks take it.
"""

from __future__ import annotations

import argparse
import dataclasses
import re

from fusionedge.sdk.errors import InputError
from fusionedge.sdk.spec import MODALITIES, InputGeometry

__all__ = ["add_geometry_options", "geometry_from_args", "modalities_from_args", "parse_input_size"]

_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_input_size(text: str) -> tuple[int, int]:
    """``"320x240"`` -> ``(320, 240)`` (width, height).

    Raises:
        InputError: not two positive integers joined by ``x``.
    """
    m = _SIZE.match(str(text))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise InputError(f"--input-size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 320x240")
    return int(m.group(1)), int(m.group(2))


def add_geometry_options(p: argparse.ArgumentParser, *, modalities: bool = True) -> None:
    """Add the geometry options (and ``--modalities`` unless ``modalities`` is False) to a verb's parser."""
    d = InputGeometry()
    g = p.add_argument_group("input geometry (recorded in the checkpoint and the bundle)")
    g.add_argument("--input-size", default=None, metavar="WxH",
                   help=f"model-input frame size in pixels (default {d.width}x{d.height})")
    g.add_argument("--clip-frames", type=int, default=None,
                   help=f"frames per clip window (default {d.clip_frames})")
    g.add_argument("--clip-seconds", type=float, default=None,
                   help=f"length of the window frames and audio come from, s (default {d.clip_seconds:g})")
    g.add_argument("--sample-rate", type=int, default=None,
                   help=f"audio input rate, Hz (default {d.sample_rate})")
    g.add_argument("--output-stride", type=int, default=None,
                   help=f"model-input pixels per detection heatmap cell (default {d.output_stride})")
    if modalities:
        g.add_argument("--modalities", default=None, metavar="LIST",
                       help="video,audio | video | audio: what the model reads (default: the model's, "
                            "or the one modality the data has)")


def geometry_from_args(args: argparse.Namespace, base: InputGeometry | None = None) -> InputGeometry | None:
    """The geometry the options ask for, or None when none was given (the caller's default stays).

    Raises:
        InputError: a malformed ``--input-size``.
    """
    changes: dict = {}
    if getattr(args, "input_size", None) is not None:
        changes["width"], changes["height"] = parse_input_size(args.input_size)
    for name in ("clip_frames", "clip_seconds", "sample_rate", "output_stride"):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    if not changes:
        return None
    return dataclasses.replace(base or InputGeometry(), **changes)


def modalities_from_args(args: argparse.Namespace) -> tuple[str, ...] | None:
    """``--modalities`` as a tuple in presence order, or None when not given.

    Raises:
        InputError: an unknown or repeated modality, or none.
    """
    text = getattr(args, "modalities", None)
    if text is None:
        return None
    names = [m.strip() for m in str(text).split(",") if m.strip()]
    bad = [m for m in names if m not in MODALITIES]
    if not names or bad or len(set(names)) != len(names):
        raise InputError(f"--modalities {text!r}: expected video,audio, video or audio")
    return tuple(m for m in MODALITIES if m in names)
