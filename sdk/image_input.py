"""Fit one image to a single-image model's declared input, and map boxes back to the image.

A schema-2 bundle's ``image`` input declares its size, layout (``NCHW`` / ``NHWC``), colour order,
``scale`` (what a 0-255 pixel is multiplied by), ``mean`` / ``std`` (applied after ``scale``) and
how the image is fitted: ``stretch`` resizes to the input size, ``letterbox`` keeps the aspect
ratio and pads the rest with ``pad_value`` (default 114), centred, as Ultralytics does before its
detectors. :func:`preprocess_image` returns the tensor and the :class:`ImageTransform` that maps
model-input pixels back to the original image, so boxes come back in the caller's pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from fusionedge.sdk.errors import InputError

__all__ = ["ImageSpec", "ImageTransform", "preprocess_image"]

#: Pad value of a letterboxed image when the manifest does not give one (Ultralytics' grey).
DEFAULT_PAD = 114.0


@dataclass(frozen=True)
class ImageSpec:
    """What an ``image`` input expects, as the manifest declares it."""

    height: int
    width: int
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # in the declared colour order, after ``scale``
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    scale: float = 1.0 / 255.0
    color: str = "RGB"
    layout: str = "NCHW"
    resize: str = "stretch"
    pad_value: float = DEFAULT_PAD

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> ImageSpec:
        """Build from a schema-checked manifest ``inputs[i]`` entry of modality ``image``."""
        pre = entry["preprocessing"]
        return cls(
            height=int(pre["height"]),
            width=int(pre["width"]),
            mean=tuple(float(v) for v in pre["mean"]),
            std=tuple(float(v) for v in pre["std"]),  # type: ignore[arg-type]
            scale=float(pre["scale"]),
            color=str(pre["color"]),
            layout=str(entry["layout"]),
            resize=str(pre["resize"]),
            pad_value=float(pre.get("pad_value", DEFAULT_PAD)),
        )

    @property
    def tensor_shape(self) -> tuple[int, int, int]:
        """The per-image tensor shape: ``(3, H, W)`` for NCHW, ``(H, W, 3)`` for NHWC."""
        return (3, self.height, self.width) if self.layout == "NCHW" else (self.height, self.width, 3)


@dataclass(frozen=True)
class ImageTransform:
    """How an image was fitted: model pixel ``x`` is image pixel ``(x - pad_x) / scale_x``."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    image_wh: tuple[int, int]  # (width, height) of the original image

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``(K, 4)`` ``x1, y1, x2, y2`` boxes in model-input pixels to the image, clipped to it."""
        out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        out[:, 0::2] = (out[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (out[:, 1::2] - self.pad_y) / self.scale_y
        w, h = self.image_wh
        out[:, 0::2] = np.clip(out[:, 0::2], 0.0, w)
        out[:, 1::2] = np.clip(out[:, 1::2], 0.0, h)
        return out


def preprocess_image(image: np.ndarray, spec: ImageSpec) -> tuple[np.ndarray, ImageTransform]:
    """Resize, colour-order, scale and normalize one RGB image into a model input tensor.

    Args:
        image: ``(H, W, 3)`` uint8 RGB, any size.
        spec: the input's declaration.

    Returns:
        ``(tensor, transform)``: float32 of :attr:`ImageSpec.tensor_shape`, and the mapping of model
        pixels back to ``image``.

    Raises:
        InputError: not a non-empty ``(H, W, 3)`` uint8 array.
    """
    import cv2  # lazy: only an image model needs it

    if not (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
        and image.shape[0] > 0
        and image.shape[1] > 0
    ):
        raise InputError(
            f"image must be uint8 RGB of shape (H, W, 3), got "
            f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
        )
    h, w = image.shape[:2]
    if spec.resize == "letterbox":
        r = min(spec.height / h, spec.width / w)
        new_w, new_h = max(1, round(w * r)), max(1, round(h * r))
        resized = image
        if (new_w, new_h) != (w, h):
            resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        left = round((spec.width - new_w) / 2 - 0.1)
        top = round((spec.height - new_h) / 2 - 0.1)
        canvas = np.full((spec.height, spec.width, 3), spec.pad_value, np.float32)
        canvas[top : top + new_h, left : left + new_w] = resized
        transform = ImageTransform(new_w / w, new_h / h, float(left), float(top), (w, h))
    else:
        interp = (
            cv2.INTER_AREA
            if spec.resize == "area-stretch" and spec.width <= w and spec.height <= h
            else cv2.INTER_LINEAR
        )
        canvas = cv2.resize(image, (spec.width, spec.height), interpolation=interp).astype(np.float32)
        transform = ImageTransform(spec.width / w, spec.height / h, 0.0, 0.0, (w, h))
    if spec.color == "BGR":
        canvas = canvas[:, :, ::-1]
    x = canvas * np.float32(spec.scale)
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    if not all(math.isfinite(v) and v > 0 for v in spec.std):
        raise InputError(f"image std must be finite and > 0, got {spec.std}")
    x = (x - mean) / std
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32), transform
