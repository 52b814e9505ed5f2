"""What a user declares when importing a model: presets, the ``--input`` declaration, labels.

``fusionedge import`` takes a model family (``--preset``: ``yolov8``, ``yolo11``, ``yolov5``,
``centernet``, ``imagenet``), an ``--input`` declaration over the preset's defaults
(:func:`parse_input_spec`) and a labels file (:func:`read_labels`). This module turns them into
:class:`InputDecl` / :class:`Preset` values and refuses malformed ones with one-line
:class:`~fusionedge.sdk.errors.InputError` messages; checking them against the ONNX graph is
:mod:`fusionedge.export.import_onnx`'s job.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fusionedge.sdk.errors import InputError

__all__ = ["PRESETS", "TASK_DEFAULTS", "InputDecl", "Preset", "parse_input_spec", "read_labels"]
#: Most labels read from a labels file.
MAX_LABELS = 100_000
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputDecl:
    """How the model's one input is fed; None fields are taken from the preset or the model."""

    name: str | None = None
    modality: str | None = None  # "image" or "audio"
    layout: str | None = None  # NCHW / NHWC (image), NS (audio)
    color: str | None = None  # RGB / BGR
    size: tuple[int, int] | None = None  # (width, height)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    scale: float | None = None
    resize: str | None = None  # stretch / letterbox
    pad_value: float | None = None
    sample_rate: int | None = None
    seconds: float | None = None

    def merged(self, over: InputDecl) -> InputDecl:
        """These fields, each replaced by ``over``'s where that one is set."""
        return replace(self, **{k: v for k, v in vars(over).items() if v is not None})


@dataclass(frozen=True)
class Preset:
    """Defaults for a family of exported models."""

    task: str
    input: InputDecl
    decode: str  # "yolo", "centernet", "softmax", "sigmoid" or "none"
    params: dict[str, Any] = field(default_factory=dict)


_YOLO_INPUT = InputDecl(
    modality="image",
    layout="NCHW",
    color="RGB",
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    scale=1 / 255,
    resize="letterbox",
    pad_value=114.0,
)
_IMAGENET_INPUT = InputDecl(
    modality="image",
    layout="NCHW",
    color="RGB",
    mean=_IMAGENET_MEAN,
    std=_IMAGENET_STD,
    scale=1 / 255,
    resize="stretch",
)
#: The families ``--preset`` names.
PRESETS: dict[str, Preset] = {
    "yolov8": Preset("detect", _YOLO_INPUT, "yolo", {"layout": "channels-first", "objectness": False}),
    "yolo11": Preset("detect", _YOLO_INPUT, "yolo", {"layout": "channels-first", "objectness": False}),
    "yolov5": Preset("detect", _YOLO_INPUT, "yolo", {"layout": "anchors-first", "objectness": True}),
    "centernet": Preset("detect", _IMAGENET_INPUT, "centernet"),
    "imagenet": Preset("classify", _IMAGENET_INPUT, "softmax"),
}
#: What a task assumes without a preset.
TASK_DEFAULTS: dict[str, Preset] = {
    "classify": PRESETS["imagenet"],
    "detect": PRESETS["yolov8"],
    # no default length: it is read from a fixed-length input (1 s where the input's length is dynamic)
    "audio-classify": Preset("audio-classify", InputDecl(modality="audio", layout="NS"), "softmax"),
}


# ------------------------------------------------------------------------------------ parsing


def _number(text: str, what: str) -> float:
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError) as e:
        raise InputError(f"--input: {what} must be a number (or a fraction like 1/255), got {text!r}") from e
    if not math.isfinite(value):
        raise InputError(f"--input: {what} must be finite, got {text!r}")
    return value


def parse_input_spec(text: str) -> InputDecl:
    """Parse ``[NAME:]key=value,...``, e.g. ``images:modality=image,size=640x640,scale=1/255``.

    Keys: ``modality`` (image | audio), ``layout`` (NCHW | NHWC | NS), ``color`` (RGB | BGR),
    ``size`` (WIDTHxHEIGHT), ``mean`` and ``std`` (three numbers, comma-separated, on scaled pixels),
    ``scale`` (a number or fraction a 0-255 pixel is multiplied by), ``resize`` (stretch | letterbox),
    ``pad`` (the letterbox fill, 0-255), ``sample_rate`` (Hz) and ``seconds`` (waveform length).

    Raises:
        InputError: an unknown key, a repeated key or a bad value, named.
    """
    name, _, body = text.rpartition(":") if ":" in text else ("", "", text)
    tokens = [t.strip() for t in body.split(",") if t.strip()]
    pairs: list[list[str]] = []
    for token in tokens:  # "mean=0.485,0.456,0.406": a token without '=' continues the previous value
        if "=" in token:
            key, value = token.split("=", 1)
            pairs.append([key.strip(), value.strip()])
        elif pairs:
            pairs[-1][1] += "," + token
        else:
            raise InputError(f"--input: expected key=value, got {token!r}")
    values: dict[str, Any] = {}
    seen: set[str] = set()
    for key, value in pairs:
        if key in seen:
            raise InputError(f"--input: {key} given twice")
        seen.add(key)
        if key in ("modality", "layout", "color", "resize"):
            choices = {
                "modality": ("image", "audio"),
                "layout": ("NCHW", "NHWC", "NS"),
                "color": ("RGB", "BGR"),
                "resize": ("stretch", "letterbox"),
            }[key]
            v = value if key in ("modality", "resize") else value.upper()
            if v not in choices:
                raise InputError(f"--input: {key} must be one of {', '.join(choices)}, got {value!r}")
            values[key] = v
        elif key == "size":
            m = re.fullmatch(r"(\d+)[xX](\d+)", value)
            if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
                raise InputError(f"--input: size must be WIDTHxHEIGHT, e.g. 640x640, got {value!r}")
            values["size"] = (int(m.group(1)), int(m.group(2)))
        elif key in ("mean", "std"):
            parts = [p for p in re.split(r"[,/;]", value) if p]
            if len(parts) != 3:
                raise InputError(f"--input: {key} must be three numbers, got {value!r}")
            nums = tuple(_number(p, key) for p in parts)
            if key == "std" and min(nums) <= 0:
                raise InputError(f"--input: std must be > 0, got {value!r}")
            values[key] = nums
        elif key in ("scale", "pad", "seconds"):
            v = _number(value, key)
            if key != "pad" and v <= 0:
                raise InputError(f"--input: {key} must be > 0, got {value!r}")
            values["pad_value" if key == "pad" else key] = v
        elif key == "sample_rate":
            if not value.isdigit() or int(value) < 1:
                raise InputError(f"--input: sample_rate must be a positive integer (Hz), got {value!r}")
            values["sample_rate"] = int(value)
        else:
            raise InputError(
                f"--input: unknown key {key!r} (known: modality, layout, color, size, mean, std, "
                f"scale, resize, pad, sample_rate, seconds)"
            )
    return InputDecl(name=name or None, **values)


def read_labels(path: str | os.PathLike) -> list[str]:
    """One label a line (blank lines and surrounding spaces ignored), or a JSON list of strings.

    Raises:
        InputError: the file is missing, unreadable, empty, or holds a duplicate label.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise InputError(f"{p}: labels file not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read the labels file ({e})") from e
    if text.lstrip().startswith("["):
        from fusionedge.sdk.fileio import loads_json

        data = loads_json(text, what=str(p))
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise InputError(f"{p}: expected a JSON list of strings")
        labels = [x.strip() for x in data]
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels or any(not x for x in labels):
        raise InputError(f"{p}: expected at least one label, one a line, none empty")
    if len(labels) > MAX_LABELS:
        raise InputError(f"{p}: more than {MAX_LABELS} labels")
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise InputError(f"{p}: duplicate labels {dupes[:5]}")
    return labels


