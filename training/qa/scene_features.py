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

Version 3 (:data:`SCENE_FEATURES_VERSION`) appends what the decoder's single threshold and the light
bar's area leave out: per class the :data:`PEAKS_KEPT` highest peak
heights of the heatmap, sorted, so that the reader learns its own count per class instead of
inheriting one threshold; the emergency vehicle's change of size between the first and the last
frame, found by matching the first frame's patch around the vehicle, zoomed by each of a fixed set
of scales and shifted by a few pixels, against the last frame's patch (normalised
cross-correlation; the crop, the zoom and the correlation's sums are products with small bilinear
matrices, under half a millisecond on a CPU); and, with the audio, the trend over the clip of the loudest bin of the siren's
band (a siren's envelope follows its motion, and the other sounds of a road mostly lie outside that
band or do not change). A reader records the version it was trained on (``QAConfig.scene_version``)
and is always given that version's vector, so readers trained on version 2 keep their inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.spec import InputGeometry

from ..models.audio_frontend import dft_kernels

__all__ = ["AUDIO_SCENE_FEATURES", "MAX_COUNT", "PEAKS_KEPT", "PEAK_THRESHOLD", "SCENE_FEATURES_VERSION",
           "SCENE_VERSIONS", "audio_scene_features", "ev_scale_change", "peak_counts", "peak_heights", "scene_dim",
           "scene_features", "siren_band_trend"]

#: The runtime decoder's default score threshold for a centre peak.
PEAK_THRESHOLD = 0.3
#: Counts above this are clipped (the largest count any question's answer takes).
MAX_COUNT = 3
#: The last values of a version-2 scene vector that come from the audio alone (the rest from the video).
AUDIO_SCENE_FEATURES = 1
#: Changes whenever the features below change (part of the kept-context cache key); new readers read it.
SCENE_FEATURES_VERSION = 3
#: The versions :func:`scene_features` still computes (a reader gets the version it was trained on).
SCENE_VERSIONS: tuple[int, ...] = (2, 3)
#: Peak heights kept per class (version 3): the largest count asked, and two more to compare with.
PEAKS_KEPT = MAX_COUNT + 2
_MEAN = InputGeometry.__dataclass_fields__["mean"].default
_STD = InputGeometry.__dataclass_fields__["std"].default
_LAMP_DILATE = 7  # pixels around the traffic-light heat that may hold its lamp (odd)
_LAMP_BETA = 30.0  # softmax sharpness over brightness in [0, 1]
_EV_DILATE = 7  # stride-4 cells around the emergency-vehicle heat (odd)
_SCALE_SPAN = 0.3  # log-scales searched between the first and the last frame: -0.3..0.3 (x0.74..x1.35)
_SCALES = 13
_SCALE_WINDOW, _SCALE_CROP, _SCALE_SHIFT = 24, 32, 3  # matched patch, crop around the vehicle, +-pixels searched
_SCALE_BETA = 50.0  # softmax sharpness over the correlation of each scale
_SIREN_BAND_HZ = (150.0, 2200.0)  # every siren's fundamental or its first harmonics
_SIREN_WINDOW_S = 0.025  # DFT window and hop of the band trend (40 Hz bins)


def _check_version(version: int) -> None:
    if version not in SCENE_VERSIONS:
        raise InputError(f"scene features version {version!r} is not one of {SCENE_VERSIONS}")


def audio_scene_features(version: int = SCENE_FEATURES_VERSION) -> int:
    """How many of the last values of a ``version`` scene vector come from the audio alone.

    Raises:
        InputError: an unknown version.
    """
    _check_version(version)
    return AUDIO_SCENE_FEATURES if version == 2 else AUDIO_SCENE_FEATURES + 1


def scene_dim(num_classes: int, version: int = SCENE_FEATURES_VERSION) -> int:
    """Length of :func:`scene_features`' vector for a heatmap with ``num_classes`` classes.

    Raises:
        InputError: an unknown version.
    """
    _check_version(version)
    base = num_classes + 7
    return base if version == 2 else base + num_classes * PEAKS_KEPT + 3


def peak_counts(heat: torch.Tensor, threshold: float = PEAK_THRESHOLD, max_count: int = MAX_COUNT) -> torch.Tensor:
    """Per class, the peaks of a centre heatmap (B, C, h, w) as the decoder counts them → (B, C) in [0, max_count]."""
    peak = (heat == F.max_pool2d(heat, 3, 1, 1)) & (heat > threshold)
    return peak.float().sum(dim=(2, 3)).clamp(max=float(max_count))


def peak_heights(heat: torch.Tensor, k: int = PEAKS_KEPT) -> torch.Tensor:
    """Per class, the ``k`` highest peaks (3x3 max-pool equality) of a centre heatmap (B, C, h, w),
    highest first, 0 where there are fewer → (B, C, k)."""
    peak = torch.where(heat == F.max_pool2d(heat, 3, 1, 1), heat, torch.zeros_like(heat))
    return torch.topk(peak.flatten(2), k, dim=2).values


def _bilinear_rows(out_n: int, in_n: int, scale: float, shift: float) -> torch.Tensor:
    """(out_n, in_n) weights: output ``i`` samples the input at its centre + (i - centre) x scale + shift."""
    pos = (in_n - 1) / 2 + (torch.arange(out_n, dtype=torch.float32) - (out_n - 1) / 2) * scale + shift
    return torch.relu(1.0 - (pos[:, None] - torch.arange(in_n, dtype=torch.float32)[None, :]).abs())


def ev_scale_change(pixels: torch.Tensor, ev_heat: torch.Tensor) -> torch.Tensor:
    """How much the emergency vehicle grew from the first to the last frame: ``pixels`` (B, T, 3, H, W)
    in [0, 1], ``ev_heat`` (B, 1, h, w) of the last frame → (B, 2): the log scale (a softmax over the
    searched scales of their best correlation, divided by the span searched: in [-1, 1], > 0: grew)
    and the best normalised correlation (how well any scale matched).

    The grey patch of the first frame around the vehicle's centre (a soft arg-max of its heat) is
    zoomed by each scale and shifted by up to a few pixels, and each candidate is correlated with the
    last frame's patch; the shifts absorb the camera's jitter and the vehicle's sideways drift."""
    b, _, _, hh, ww = pixels.shape
    h, w = ev_heat.shape[-2:]
    weight = torch.softmax(30.0 * ev_heat.flatten(1), dim=1)  # (B, hw)
    ys = ((torch.arange(h, dtype=pixels.dtype)[:, None].expand(h, w).reshape(-1) + 0.5) * (hh / h))
    xs = ((torch.arange(w, dtype=pixels.dtype)[None, :].expand(h, w).reshape(-1) + 0.5) * (ww / w))
    cx, cy = (weight * xs).sum(1), (weight * ys).sum(1)  # (B,) pixels
    crop, win = _SCALE_CROP, _SCALE_WINDOW
    r = torch.arange(crop, dtype=pixels.dtype) - (crop - 1) / 2
    # the crop is a bilinear sampling (pixel centres at +0.5, the border repeated) separable in y and x: two
    # products with (crop, H) and (crop, W) weight matrices, cheaper than a per-pixel grid sampler
    px = (cx[:, None] + r[None, :] - 0.5).clamp(0.0, ww - 1.0)  # (B, crop): sampled columns
    py = (cy[:, None] + r[None, :] - 0.5).clamp(0.0, hh - 1.0)
    wx = torch.relu(1.0 - (px[:, :, None] - torch.arange(ww, dtype=pixels.dtype)).abs())  # (B, crop, W)
    wy = torch.relu(1.0 - (py[:, :, None] - torch.arange(hh, dtype=pixels.dtype)).abs())  # (B, crop, H)
    grey = pixels[:, [0, -1]].mean(dim=2)  # (B, 2, H, W): first and last frame
    crops = wy[:, None] @ grey @ wx.transpose(1, 2)[:, None]  # (B, 2, crop, crop)
    first, last = crops[:, 0], crops[:, 1]
    o = (crop - win) // 2
    target = last[:, o:o + win, o:o + win]  # (B, win, win)
    logs = [_SCALE_SPAN * (2.0 * i / (_SCALES - 1) - 1.0) for i in range(_SCALES)]  # Python floats: constants
    shifts = range(-_SCALE_SHIFT, _SCALE_SHIFT + 1)
    n_s, n_d = _SCALES, len(shifts)
    # a vehicle grown by s in the last frame matches the first frame sampled at 1 / s about the centre
    rows = torch.stack([torch.stack([_bilinear_rows(win, crop, math.exp(-a), float(d)) for d in shifts])
                        for a in logs]).to(pixels.dtype)  # (S, D, win, crop)
    # the first crop less its mean c is zoomed (the candidates then have a mean near 0, and the sums of squares
    # below lose nothing to rounding); each candidate is cand_c + c u with u = a_y a_xᵀ, a = the rows' sums
    # (1 inside the crop, less where a row samples past its edge, which counts as 0 there)
    c = first.mean(dim=(1, 2))  # (B,)
    zoomed = (rows.reshape(1, n_s * n_d, win, crop) @ (first - c[:, None, None])[:, None])
    zoomed = zoomed.reshape(b, n_s, n_d, win, crop)  # (B, S, dy, y, j): rows done
    n = float(win * win)
    a = rows.sum(dim=3)  # (S, D, win)
    u_sum = a.sum(dim=2)[:, :, None] * a.sum(dim=2)[:, None, :]  # (S, dy, dx): sum(u)
    u_spread = (a.pow(2).sum(dim=2)[:, :, None] * a.pow(2).sum(dim=2)[:, None, :]) - u_sum.pow(2) / n
    t = target - target.mean(dim=(1, 2), keepdim=True)
    # every sum over a candidate's pixels is a product of small matrices (j: the crop's columns)
    weighted = (t[:, None, None] @ rows[None]).reshape(b, n_s, n_d, win * crop)  # (B, S, dx, y j): t @ rows[dx]
    t_cand = zoomed.reshape(b, n_s, n_d, win * crop) @ weighted.transpose(-1, -2)  # (B, S, dy, dx): sum(t cand_c)
    t_u = (a[None] @ t[:, None]) @ a.transpose(1, 2)[None]  # (B, S, dy, dx): sum(t u) = a_yᵀ t a_x
    total = zoomed.sum(dim=3) @ rows.sum(dim=2).transpose(-1, -2)  # (B, S, dy, dx): sum(cand_c)
    across = (a[:, :, None, :] @ zoomed).squeeze(3) @ (a[:, :, None, :] @ rows).squeeze(2).transpose(-1, -2)
    # sum(cand_c²) = |Z Rᵀ|² = <ZᵀZ, RᵀR> for Z = zoomed[dy], R = rows[dx]: two crop x crop Gram matrices instead
    # of every candidate's pixels; a bilinear row touches two neighbouring columns, so the constant RᵀR is
    # tridiagonal and only the diagonal and first off-diagonal of ZᵀZ count (with RᵀR's off-diagonal doubled)
    band = torch.cat([torch.arange(crop) * (crop + 1), torch.arange(crop - 1) * (crop + 1) + 1])  # (2 crop - 1,)
    gram = (zoomed.transpose(-1, -2) @ zoomed).reshape(b, n_s, n_d, crop * crop)
    gram = torch.index_select(gram, 3, band)  # (B, S, dy, band)
    gram_rows = torch.index_select((rows.transpose(-1, -2) @ rows).reshape(n_s, n_d, crop * crop), 2, band)  # (S, dx, band)
    gram_rows = gram_rows * torch.cat([torch.ones(crop), torch.full((crop - 1,), 2.0)]).to(pixels.dtype)
    square = gram @ gram_rows.transpose(-1, -2)[None]  # (B, S, dy, dx): sum(cand_c²)
    cc = c[:, None, None, None]
    # sum((cand - its mean)²) and sum(t (cand - its mean)) for cand = cand_c + c u
    spread = (square - total.pow(2) / n) + 2.0 * cc * (across - total * u_sum / n) + cc.pow(2) * u_spread
    mean = (total + cc * u_sum) / n
    num = t_cand + cc * t_u - mean * t.sum(dim=(1, 2))[:, None, None, None]
    den = t.pow(2).sum(dim=(1, 2)).sqrt()[:, None, None, None] * spread.clamp(min=0.0).sqrt() + 1e-6
    ncc = (num / den).flatten(2).amax(dim=2)  # (B, S): the best shift of each scale
    scale = (torch.softmax(_SCALE_BETA * ncc, dim=1) * torch.tensor(logs, dtype=pixels.dtype)).sum(1) / _SCALE_SPAN
    return torch.stack([scale, ncc.amax(dim=1)], dim=1)


def siren_band_trend(audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """The change over the clip of the log power of the loudest bin in the siren's band: ``audio``
    (B, S) → (B,), the least-squares slope over 25 ms frames times the clip's length in frames
    (> 0: louder at the end)."""
    n_fft = max(2, round(sample_rate * _SIREN_WINDOW_S))
    lo = max(1, math.ceil(_SIREN_BAND_HZ[0] * n_fft / sample_rate))
    hi = min(n_fft // 2, math.floor(_SIREN_BAND_HZ[1] * n_fft / sample_rate))
    kernels = dft_kernels(n_fft).to(audio.dtype)
    half = n_fft // 2 + 1
    kernels = torch.cat([kernels[lo:hi + 1], kernels[half + lo:half + hi + 1]])  # the band's cos and sin
    spec = F.conv1d(audio[:, None, :], kernels, stride=n_fft)  # (B, 2K, N)
    k = hi + 1 - lo
    power = spec[:, :k].pow(2) + spec[:, k:].pow(2)  # (B, K, N)
    level = torch.log(power.amax(dim=1) + 1e-6)  # (B, N)
    n = level.shape[1]
    t = torch.arange(n, dtype=audio.dtype) - (n - 1) / 2
    return (level * t).sum(1) / (t.pow(2).sum() + 1e-6) * max(1, n - 1)


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
    rgb = (frame.flatten(2) @ weight[:, :, None]).squeeze(2)  # (B, 3): one product (an einsum runs slowly on ORT)
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
                   ev_class: int, *, sample_rate: int = 16000, version: int = SCENE_FEATURES_VERSION) -> torch.Tensor:
    """The scene vector (see the module docstring): normalised ``video`` (B, T, 3, H, W), ``audio``
    (B, S) at ``sample_rate``, the stride-4 centre ``heat`` (B, C, h, w) after the sigmoid →
    (B, :func:`scene_dim` (C, version)); the video's values first, the last
    :func:`audio_scene_features` (version) from the audio.

    Raises:
        InputError: an unknown version.
    """
    _check_version(version)
    counts = peak_counts(heat) / MAX_COUNT  # (B, C)
    pixels = _pixels(video)
    lamp = lamp_colour(pixels[:, -1], heat[:, light_class:light_class + 1])  # (B, 4)
    bar = _bar_area(pixels)  # (B, T, H, W)
    t = bar.shape[1]
    half = max(1, t // 2)
    ev_heat = heat[:, ev_class:ev_class + 1]
    near = F.interpolate(F.max_pool2d(ev_heat, _EV_DILATE, 1, _EV_DILATE // 2),
                         size=bar.shape[-2:], mode="nearest")  # (B, 1, H, W)
    area = bar.sum(dim=(2, 3))  # (B, T) in pixels
    area_near = (bar * near).sum(dim=(2, 3))
    grow = torch.log(area[:, -half:].mean(1) + 1.0) - torch.log(area[:, :half].mean(1) + 1.0)
    grow_near = torch.log(area_near[:, -half:].mean(1) + 1.0) - torch.log(area_near[:, :half].mean(1) + 1.0)
    third = max(1, audio.shape[1] // 3)
    energy = torch.log(audio[:, -third:].pow(2).mean(1) + 1e-6) - torch.log(audio[:, :third].pow(2).mean(1) + 1e-6)
    # on [-1, 1]: the light bar's area changes by a few tens of percent over a clip, the sound's energy by more
    video_motion = torch.stack([5.0 * grow, 5.0 * grow_near], dim=1).clamp(-1.0, 1.0)  # (B, 2)
    audio_motion = (0.5 * energy)[:, None].clamp(-1.0, 1.0)  # (B, 1)
    if version == 2:
        return torch.cat([counts, lamp, video_motion, audio_motion], dim=1)
    peaks = peak_heights(heat).flatten(1)  # (B, C K) in [0, 1]
    scale = ev_scale_change(pixels, ev_heat)  # (B, 2)
    # the siren's band changes by a few units of log power over a moving vehicle's clip
    siren = (0.25 * siren_band_trend(audio, sample_rate))[:, None].clamp(-1.0, 1.0)  # (B, 1)
    return torch.cat([counts, lamp, video_motion, peaks, scale, audio_motion, siren], dim=1)
