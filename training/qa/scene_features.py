"""Scene features the question reader computes from its own inputs: object counts, lamp colour, motion.

The frozen student's stride-16 cells merge two objects in one cell, do not carry the colour of a
2-3 pixel traffic-light lamp, and average each frame to one token, so counting, "which lamp is lit"
and "is the emergency vehicle approaching" were not answerable from its context. These functions
compute those quantities directly from the clip's pixels, its waveform and the student's stride-4
centre heatmap, with ONNX-exportable tensor operations only, so ``qa.onnx`` stays one self-contained
graph:

* **counts**: per class, the heatmap's peaks as the runtime decoder finds them (a 3x3 max-pool
  equality and heat above :data:`PEAK_THRESHOLD`), clipped at :data:`MAX_COUNT`, scaled to [0, 1];
* **lamp**: in the last frame, a mean RGB over the pixels near the traffic-light heat (the heat
  upsampled to pixels and dilated), weighted by a softmax over brightness (the lit lamp is the
  brightest thing in a dark housing), and the lamp's height relative to the region's centre;
* **motion**: the area of saturated, bright pixels (an emergency vehicle's light bar) in the last
  half of the frames against the first half, in the whole frame and near the emergency-vehicle
  heat, and the audio's log-energy in its last third against its first (the vector's last
  :data:`AUDIO_SCENE_FEATURES` values, so that the reader can drop them with the audio).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fusionedge.sdk.spec import InputGeometry

__all__ = ["AUDIO_SCENE_FEATURES", "MAX_COUNT", "PEAK_THRESHOLD", "SCENE_FEATURES_VERSION", "peak_counts", "scene_dim", "scene_features"]

#: The runtime decoder's default score threshold for a centre peak.
PEAK_THRESHOLD = 0.3
#: Counts above this are clipped (the largest count any question's answer takes).
MAX_COUNT = 3
#: The last values of the scene vector come from the audio alone (the rest from the video).
AUDIO_SCENE_FEATURES = 1
#: Changes whenever the features below change (part of the kept-context cache key).
SCENE_FEATURES_VERSION = 2
_MEAN = InputGeometry.__dataclass_fields__["mean"].default
_STD = InputGeometry.__dataclass_fields__["std"].default
_LAMP_DILATE = 7  # pixels around the traffic-light heat that may hold its lamp (odd)
_LAMP_BETA = 30.0  # softmax sharpness over brightness in [0, 1]
_EV_DILATE = 7  # stride-4 cells around the emergency-vehicle heat (odd)


def scene_dim(num_classes: int) -> int:
    """Length of :func:`scene_features`' vector for a heatmap with ``num_classes`` classes."""
    return num_classes + 7


def peak_counts(heat: torch.Tensor, threshold: float = PEAK_THRESHOLD, max_count: int = MAX_COUNT) -> torch.Tensor:
    """Per class, the peaks of a centre heatmap (B, C, h, w) as the decoder counts them → (B, C) in [0, max_count]."""
    peak = (heat == F.max_pool2d(heat, 3, 1, 1)) & (heat > threshold)
    return peak.float().sum(dim=(2, 3)).clamp(max=float(max_count))


def _pixels(video: torch.Tensor) -> torch.Tensor:
    """Normalised video (B, T, 3, H, W) back to [0, 1] RGB."""
    mean = torch.tensor(_MEAN, dtype=video.dtype).reshape(1, 1, 3, 1, 1)
    std = torch.tensor(_STD, dtype=video.dtype).reshape(1, 1, 3, 1, 1)
    return (video * std + mean).clamp(0.0, 1.0)


def lamp_colour(frame: torch.Tensor, light_heat: torch.Tensor) -> torch.Tensor:
    """The lit lamp of a traffic light: ``frame`` (B, 3, H, W) in [0, 1], ``light_heat`` (B, 1, h, w) →
    (B, 4): chromaticity r, g, b, each as ``3 (c - 1/3)`` (0 for a grey pixel; the three lamps differ
    by about 0.2 in raw chromaticity, too little for the reader to pick up), and the lamp's height
    above the region's centre (in units of the dilation window, > 0: above)."""
    hh, ww = frame.shape[-2:]
    region = F.interpolate(light_heat, size=(hh, ww), mode="bilinear", align_corners=False)
    region = F.max_pool2d(region, _LAMP_DILATE, 1, _LAMP_DILATE // 2).flatten(1)  # (B, HW)
    inside = ((region - 0.1) / 0.2).clamp(0.0, 1.0)  # 0 far from any traffic-light heat, 1 near a centre
    hi, lo = frame.amax(dim=1).flatten(1), frame.amin(dim=1).flatten(1)  # (B, HW)
    # a lit lamp is bright and saturated; pixels outside the region are out by a margin no brightness beats
    weight = torch.softmax(_LAMP_BETA * (2.0 * hi - lo) + 100.0 * (inside - 1.0), dim=1)  # (B, HW)
    rgb = torch.einsum("bp,bcp->bc", weight, frame.flatten(2))
    chroma = rgb / (rgb.sum(dim=1, keepdim=True) + 1e-6)
    ys = (torch.arange(hh, dtype=frame.dtype)[:, None].expand(hh, ww).reshape(-1) + 0.5)  # (HW,)
    centre = (inside * ys).sum(1) / (inside.sum(1) + 1e-6)
    lamp_y = (weight * ys).sum(1)
    return torch.cat([3.0 * (chroma - 1.0 / 3.0), ((centre - lamp_y) / _LAMP_DILATE)[:, None]], dim=1)


def _bar_area(pixels: torch.Tensor) -> torch.Tensor:
    """Per pixel, how much it looks like a lit light bar: bright and saturated → (..., H, W) in [0, 1]."""
    hi, lo = pixels.amax(dim=-3), pixels.amin(dim=-3)
    return torch.sigmoid(20.0 * (hi - 0.6)) * torch.sigmoid(20.0 * (hi - lo - 0.4))


def scene_features(video: torch.Tensor, audio: torch.Tensor, heat: torch.Tensor, light_class: int,
                   ev_class: int) -> torch.Tensor:
    """The scene vector (see the module docstring): normalised ``video`` (B, T, 3, H, W), ``audio``
    (B, S), the stride-4 centre ``heat`` (B, C, h, w) after the sigmoid → (B, C + 7)."""
    counts = peak_counts(heat) / MAX_COUNT  # (B, C)
    pixels = _pixels(video)
    lamp = lamp_colour(pixels[:, -1], heat[:, light_class:light_class + 1])  # (B, 4)
    bar = _bar_area(pixels)  # (B, T, H, W)
    t = bar.shape[1]
    half = max(1, t // 2)
    near = F.interpolate(F.max_pool2d(heat[:, ev_class:ev_class + 1], _EV_DILATE, 1, _EV_DILATE // 2),
                         size=bar.shape[-2:], mode="nearest")  # (B, 1, H, W)
    area = bar.sum(dim=(2, 3))  # (B, T) in pixels
    area_near = (bar * near).sum(dim=(2, 3))
    grow = torch.log(area[:, -half:].mean(1) + 1.0) - torch.log(area[:, :half].mean(1) + 1.0)
    grow_near = torch.log(area_near[:, -half:].mean(1) + 1.0) - torch.log(area_near[:, :half].mean(1) + 1.0)
    third = max(1, audio.shape[1] // 3)
    energy = torch.log(audio[:, -third:].pow(2).mean(1) + 1e-6) - torch.log(audio[:, :third].pow(2).mean(1) + 1e-6)
    # on [-1, 1]: the light bar's area changes by a few tens of percent over a clip, the sound's energy by more
    motion = torch.stack([5.0 * grow, 5.0 * grow_near, 0.5 * energy], dim=1).clamp(-1.0, 1.0)  # (B, 3)
    return torch.cat([counts, lamp, motion], dim=1)
