"""The one definition of preprocessing, shared by training and by the runtime.

Training (``fusionedge.training``) and the device runtime both call these functions, so a model sees
on the device exactly what it saw while it learned. The order of work for one clip:

1. :func:`clip_frame_indices` picks the ``T`` frames of the clip window (the last one is the
   "current" frame that detections refer to);
2. :func:`preprocess_frame` turns each ``uint8`` frame (RGB, BGR or NV12) into the model's
   ``float32`` ``(3, H, W)`` RGB input in one step: resize to the model size, then
   ``(x/255 - mean) / std``. Its definition is :func:`preprocess_frame_reference` (NumPy, float64):
   a separable resize computed in float (no rounding to integers), per axis **area** resampling
   (each output pixel is the mean of the input pixels it covers, weighted by the exact fractional
   coverage — the math of ``cv2.INTER_AREA`` without its rounding) when the axis shrinks or keeps
   its size, and **bilinear** (half-pixel centres, edges clamped) when it grows. No letterbox, so
   :func:`scale_boxes` maps boxes back by a plain per-axis scale. The native extension
   (``NATIVE_AVAILABLE``) computes the same thing in one pass with the same weights (within 1e-5);
3. :func:`preprocess_audio` down-mixes to mono, resamples (windowed-sinc, band-limited; the kernel
   is :mod:`fusionedge.sdk.resample`) to the model's rate and crops or zero-pads to the window.

:func:`resize_frame` (OpenCV, ``uint8`` out) and :func:`normalize_image` remain as utilities (e.g.
for drawing); the model input is :func:`preprocess_frame`.

**NV12** (what Jetson cameras deliver) is a ``(H * 3 / 2, W)`` ``uint8`` array: the ``H`` rows of
the Y plane, then ``H / 2`` rows of interleaved U, V at half resolution (each chroma pair covers a
2x2 block of pixels). It is read as **BT.601 limited range** (Y in [16, 235], chroma in [16, 240]),
see :func:`nv12_to_rgb_reference`.

**Time convention.** Frame ``i`` of a video at ``fps`` is at ``i / fps`` seconds; audio sample ``j``
at ``j / sample_rate``. A clip window is ``[start, start + clip_seconds)``: the frames whose time lies
in it, and the audio samples of that span.

Only NumPy (and OpenCV, imported when :func:`resize_frame` is called) — never torch.

The module stays past 600 lines on purpose: it is the single definition that training and the
runtime both import, and its frame and audio halves share one time convention and one set of input
checks (the last third of the file), which a split would either duplicate or make a second module
that both halves depend on.
"""

from __future__ import annotations

import functools
import logging
import math
from fractions import Fraction
from typing import TYPE_CHECKING, Sequence

import numpy as np

from fusionedge.sdk.errors import InputError
from fusionedge.sdk.resample import filter_half_length, resample_window

if TYPE_CHECKING:
    from fusionedge.sdk.spec import InputGeometry

__all__ = [
    "NATIVE_AVAILABLE",
    "clip_frame_indices",
    "frame_window",
    "COLORS",
    "preprocess_frame",
    "preprocess_frame_reference",
    "nv12_to_rgb_reference",
    "resize_frame",
    "normalize_image",
    "normalize_image_reference",
    "preprocess_video",
    "preprocess_audio",
    "resample_audio",
    "resample_context",
    "scale_boxes",
    "MIN_SAMPLE_RATE",
    "MAX_SAMPLE_RATE",
]

log = logging.getLogger(__name__)

try:  # the extension is optional: a source checkout without a build still runs (slower)
    from fusionedge.sdk import _native
except ImportError as _e:  # pragma: no cover - depends on the build
    _native = None
    log.debug("fusionedge.sdk._native not built (%s); using the NumPy preprocessing path", _e)

#: True when the compiled fast path (``fusionedge.sdk._native``) is importable.
NATIVE_AVAILABLE: bool = _native is not None

#: Lowest and highest audio sample rates accepted (Hz): a rate outside them is a corrupt header or a
#: wrong argument, and would make the resampler's filter tables enormous.
MIN_SAMPLE_RATE: int = 1_000
MAX_SAMPLE_RATE: int = 384_000

# Half-open windows are computed from float seconds * fps; this tolerance keeps e.g. 1.0 s * 30 fps
# = 30.000000000000004 from adding a 31st frame.
_EPS = 1e-6


# --------------------------------------------------------------------------------------- video


def frame_window(fps: float, start_seconds: float, seconds: float | None) -> tuple[int, int | None]:
    """Frame index range ``[first, stop)`` of the window ``[start, start + seconds)``.

    Frame ``i`` is at ``i / fps`` s; the window holds the frames with ``start <= i/fps < start + seconds``.
    :func:`fusionedge.sdk.media.read_video` reads exactly these frames, so reading a window and then
    preprocessing it from 0 equals preprocessing the whole video at ``start_seconds``.

    Args:
        fps: frames per second, > 0.
        start_seconds: window start, >= 0.
        seconds: window length, > 0, or None for "to the end".

    Returns:
        ``(first, stop)``; ``stop`` is None when ``seconds`` is None.

    Raises:
        InputError: fps, start or length is not a finite positive number.
    """
    fps = _positive_finite(fps, "fps")
    start = _start(start_seconds)
    first = max(0, math.ceil(start * fps - _EPS))
    if seconds is None:
        return first, None
    length = _positive_finite(seconds, "clip length in seconds")
    stop = max(first + 1, math.ceil((start + length) * fps - _EPS))
    return first, stop


def clip_frame_indices(
    n_frames: int, fps: float, geometry: "InputGeometry", start_seconds: float = 0.0
) -> np.ndarray:
    """Indices of the ``T = geometry.clip_frames`` frames that make one clip.

    The window is ``[start, start + clip_seconds)`` (see :func:`frame_window`). The ``T`` indices are
    spread evenly (rounded, half up) from the window's first frame to its last one; the last index is
    the frame at or just before the window's end — the "current" frame detections refer to. When the
    video ends inside the window, the window is cut at the last frame, which stays the current frame;
    with fewer frames than ``T`` some frames repeat.

    Args:
        n_frames: frames available in the video, >= 1.
        fps: the video's frame rate, > 0.
        geometry: the model's input geometry (``clip_frames``, ``clip_seconds``).
        start_seconds: window start in seconds from frame 0.

    Returns:
        ``(T,)`` int64 indices into the video, non-decreasing.

    Raises:
        InputError: no frames, a bad fps/start, or a start at or past the end of the video.
    """
    if int(n_frames) != n_frames or n_frames < 1:
        raise InputError(f"n_frames must be a positive integer, got {n_frames!r}")
    n_frames = int(n_frames)
    t = int(geometry.clip_frames)
    if t < 1:
        raise InputError(f"geometry.clip_frames must be >= 1, got {geometry.clip_frames!r}")
    first, stop = frame_window(fps, start_seconds, geometry.clip_seconds)
    if first >= n_frames:
        raise InputError(
            f"start_seconds={start_seconds} is past the end of the video "
            f"({n_frames} frames at {fps:g} fps = {n_frames / fps:.3f} s)"
        )
    last = min(stop, n_frames) - 1
    if t == 1:
        return np.array([last], dtype=np.int64)
    pos = first + (last - first) * np.arange(t, dtype=np.float64) / (t - 1)
    idx = np.floor(pos + 0.5).astype(np.int64)
    idx[-1] = last  # exact, whatever the float rounding did
    return idx


def resize_frame(frame: np.ndarray, geometry: "InputGeometry") -> np.ndarray:
    """Stretch one frame to the model input size (no letterbox), as ``uint8`` — a utility.

    The model's input is :func:`preprocess_frame` (float resize, no rounding); this OpenCV resize
    rounds to integers and differs from it by up to about one pixel level (e.g. for drawing or
    saving a preview). ``cv2.INTER_AREA`` when neither side grows (it averages, so it does not
    alias), ``cv2.INTER_LINEAR`` when a side grows. A frame already at the size is returned as is
    (not copied).

    Args:
        frame: ``(h, w, 3)`` uint8.
        geometry: gives ``height`` and ``width`` of the model input.

    Returns:
        ``(geometry.height, geometry.width, 3)`` uint8, C-contiguous.

    Raises:
        InputError: the frame is not a ``(h, w, 3)`` uint8 array.
    """
    _check_image(frame, "frame")
    h, w = frame.shape[:2]
    th, tw = int(geometry.height), int(geometry.width)
    if (h, w) == (th, tw):
        return np.ascontiguousarray(frame)
    import cv2  # lazy: the runtime imports preprocess before any frame exists

    interp = cv2.INTER_AREA if (th <= h and tw <= w) else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(frame), (tw, th), interpolation=interp)


def normalize_image_reference(
    image: np.ndarray, mean: Sequence[float], std: Sequence[float], *, bgr: bool = False
) -> np.ndarray:
    """The oracle: ``(x / 255 - mean) / std`` per channel in float64, rounded to float32 once.

    Args:
        image: ``(H, W, 3)`` uint8, RGB (or BGR with ``bgr=True``).
        mean: three per-channel means on [0, 1] pixel values, RGB order.
        std: three per-channel standard deviations, RGB order, > 0.
        bgr: the image's channels are in BGR order; the output is RGB regardless.

    Returns:
        ``(3, H, W)`` float32, RGB.

    Raises:
        InputError: wrong shape/dtype, or mean/std not three finite numbers (std > 0).
    """
    _check_image(image, "image")
    m, s = _check_mean_std(mean, std)
    x = image.astype(np.float64)
    if bgr:
        x = x[..., ::-1]
    y = (x / 255.0 - np.asarray(m)) / np.asarray(s)  # (H, W, 3) float64
    return np.ascontiguousarray(y.transpose(2, 0, 1)).astype(np.float32)


def normalize_image(
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    out: np.ndarray | None = None,
    bgr: bool = False,
) -> np.ndarray:
    """Normalize a ``uint8`` HWC image into ``float32`` CHW, the fast way.

    Uses the native extension when built (one pass, GIL released) and a NumPy lookup table
    otherwise; both equal :func:`normalize_image_reference` bit for bit.

    Args:
        image: ``(H, W, 3)`` uint8, RGB (or BGR with ``bgr=True``). Any strides (copied if needed).
        mean: three per-channel means on [0, 1] pixel values, RGB order.
        std: three per-channel standard deviations, RGB order, > 0.
        out: optional preallocated ``(3, H, W)`` float32 C-contiguous writable array (e.g. one slot
            of a batch tensor); it is filled in place and returned.
        bgr: the image's channels are in BGR order (an OpenCV frame); the output is RGB regardless.

    Returns:
        ``out`` if given, else a new ``(3, H, W)`` float32 array.

    Raises:
        InputError: wrong image shape/dtype, a wrong ``out``, or bad mean/std.
    """
    _check_image(image, "image")
    m, s = _check_mean_std(mean, std)
    h, w = image.shape[:2]
    out = _check_out(out, h, w)
    image = np.ascontiguousarray(image)
    if _native is not None:
        _native.normalize_hwc_to_chw(image, out, m, s, bool(bgr))
    else:
        _normalize_lut(image, m, s, out, bgr)
    return out


def _normalize_lut(image: np.ndarray, m: tuple, s: tuple, out: np.ndarray, bgr: bool) -> None:
    """NumPy fallback: a uint8 channel has 256 values, so compute them once and gather."""
    lut = ((np.arange(256, dtype=np.float64)[:, None] / 255.0 - np.asarray(m)) / np.asarray(s)).astype(
        np.float32
    )  # (256, 3), same float64 expression as the reference
    for k in range(3):
        src = 2 - k if bgr else k
        np.take(lut[:, k], image[..., src], out=out[k])


#: The pixel layouts :func:`preprocess_frame` accepts.
COLORS: tuple[str, ...] = ("rgb", "bgr", "nv12")
_COLOR_CODE = {"rgb": 0, "bgr": 1, "nv12": 2}

# BT.601 limited range -> RGB on [0, 255]: Y' = (Y - 16) * 255/219, chroma (C - 128) * 255/224.
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
_Y_SCALE = 255.0 / 219.0
_C_SCALE = 255.0 / 224.0


def nv12_to_rgb_reference(nv12: np.ndarray) -> np.ndarray:
    """NV12 to RGB, BT.601 limited range (what Jetson CSI cameras deliver), in float64.

    ``R = 1.164 (Y-16) + 1.596 (V-128)``, ``G = 1.164 (Y-16) - 0.392 (U-128) - 0.813 (V-128)``,
    ``B = 1.164 (Y-16) + 2.017 (U-128)`` (exact: ``255/219`` and ``255/224`` times the BT.601
    ``Kr = 0.299``, ``Kb = 0.114`` matrix), clamped to ``[0, 255]``. Each U, V pair applies to its
    2x2 block of pixels (nearest chroma, no interpolation).

    Args:
        nv12: ``(H * 3 / 2, W)`` uint8, H and W even: the Y plane, then interleaved U, V rows.

    Returns:
        ``(H, W, 3)`` float64 RGB on ``[0, 255]`` (not rounded).

    Raises:
        InputError: not a uint8 array of that shape.
    """
    h, w = _check_frame(nv12, "nv12", "nv12")
    y = (nv12[:h].astype(np.float64) - 16.0) * _Y_SCALE
    uv = nv12[h:].reshape(h // 2, w // 2, 2).astype(np.float64) - 128.0
    uv = np.repeat(np.repeat(uv, 2, axis=0), 2, axis=1) * _C_SCALE  # (h, w, 2)
    u, v = uv[..., 0], uv[..., 1]
    rgb = np.stack([
        y + 2.0 * (1.0 - _KR) * v,
        y - (2.0 * _KB * (1.0 - _KB) / _KG) * u - (2.0 * _KR * (1.0 - _KR) / _KG) * v,
        y + 2.0 * (1.0 - _KB) * u,
    ], axis=-1)
    return np.clip(rgb, 0.0, 255.0)


@functools.lru_cache(maxsize=64)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float64 weights of one axis; each row sums to 1. Read-only, cached.

    Area (box) when ``n_out <= n_in``: output ``i`` covers input ``[i s, (i + 1) s)`` with
    ``s = n_in / n_out``; input pixel ``j`` (``[j, j + 1)``) gets its overlap with that span / ``s``.
    Bilinear when ``n_out > n_in``: output ``i`` samples input position ``(i + 0.5) s - 0.5``,
    clamped to ``[0, n_in - 1]``, between its two neighbours.
    """
    s = n_in / n_out
    m = np.zeros((n_out, n_in), dtype=np.float64)
    i = np.arange(n_out)
    if n_out <= n_in:
        lo, hi = i * s, (i + 1) * s
        j = np.arange(n_in)
        overlap = np.minimum(j[None, :] + 1.0, hi[:, None]) - np.maximum(j[None, :], lo[:, None])
        m[:] = np.clip(overlap, 0.0, None) / s
    else:
        pos = np.clip((i + 0.5) * s - 0.5, 0.0, n_in - 1.0)
        j0 = np.floor(pos).astype(np.int64)
        f = pos - j0
        j1 = np.minimum(j0 + 1, n_in - 1)
        np.add.at(m, (i, j0), 1.0 - f)
        np.add.at(m, (i, j1), f)
    m.setflags(write=False)
    return m


@functools.lru_cache(maxsize=64)
def _resize_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The same weights, sparse: ``starts`` (n_out,) int32 and ``taps`` (n_out, K) float32.

    Output ``i`` is ``sum_k taps[i, k] * in[starts[i] + k]``; ``K`` is the widest row's support and
    ``starts[i] + K <= n_in`` (rows near the end start earlier and carry zero weights).
    """
    m = _resize_matrix(n_in, n_out)
    nz = m != 0.0
    first = nz.argmax(axis=1)
    last = n_in - 1 - nz[:, ::-1].argmax(axis=1)
    k = int((last - first).max()) + 1
    starts = np.minimum(first, n_in - k).astype(np.int32)
    taps = np.stack([m[r, starts[r]:starts[r] + k] for r in range(n_out)]).astype(np.float32)
    starts.setflags(write=False)
    taps.setflags(write=False)
    return starts, taps


def preprocess_frame_reference(
    frame: np.ndarray, geometry: "InputGeometry", *, color: str = "rgb"
) -> np.ndarray:
    """The definition of the model's frame input, in NumPy float64 (the oracle).

    RGB (from ``color``) on ``[0, 255]`` as float64 → separable resize to ``(geometry.height,
    geometry.width)`` as one weight-matrix product per axis (area when the axis shrinks or keeps
    its size, bilinear when it grows; see the module docstring) → ``(x/255 - mean) / std`` →
    float32 ``(3, H, W)`` RGB, rounded once.

    Args:
        frame: ``(h, w, 3)`` uint8 RGB or BGR, or ``(h * 3 / 2, w)`` uint8 NV12.
        geometry: ``height``, ``width``, ``mean``, ``std`` of the model input.
        color: ``"rgb"``, ``"bgr"`` or ``"nv12"`` (BT.601 limited range).

    Returns:
        ``(3, geometry.height, geometry.width)`` float32.

    Raises:
        InputError: a bad frame for ``color``, an unknown ``color``, or bad mean/std.
    """
    h, w = _check_frame(frame, color, "frame")
    m, s = _check_mean_std(geometry.mean, geometry.std)
    th, tw = _target_size(geometry)
    if color == "nv12":
        rgb = nv12_to_rgb_reference(frame)
    else:
        rgb = frame.astype(np.float64)
        if color == "bgr":
            rgb = rgb[..., ::-1]
    x = rgb.transpose(2, 0, 1)  # (3, h, w)
    x = _resize_matrix(h, th) @ x @ _resize_matrix(w, tw).T  # (3, th, tw)
    y = (x / 255.0 - np.asarray(m)[:, None, None]) / np.asarray(s)[:, None, None]
    return np.ascontiguousarray(y, dtype=np.float32)


def preprocess_frame(
    frame: np.ndarray,
    geometry: "InputGeometry",
    *,
    color: str = "rgb",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Turn one camera frame into the model's ``(3, H, W)`` float32 input, the fast way.

    Computes :func:`preprocess_frame_reference` (within 1e-5): with the native extension in one pass
    over the input (resize taps + normalization + CHW layout, GIL released, no allocation per frame
    once ``out`` is given); without it, the NumPy reference is copied into ``out``.

    Args:
        frame: ``(h, w, 3)`` uint8 RGB or BGR, or ``(h * 3 / 2, w)`` uint8 NV12; any strides
            (copied to C order if needed).
        geometry: ``height``, ``width``, ``mean``, ``std`` of the model input.
        color: ``"rgb"``, ``"bgr"`` (an OpenCV frame) or ``"nv12"`` (BT.601 limited range).
        out: optional preallocated ``(3, H, W)`` float32 C-contiguous writable array (e.g. one slot
            of a batch); it is filled in place and returned.

    Returns:
        ``out`` if given, else a new ``(3, H, W)`` float32 array.

    Raises:
        InputError: a bad frame for ``color``, an unknown ``color``, a wrong ``out``, or bad mean/std.
    """
    h, w = _check_frame(frame, color, "frame")
    m, s = _check_mean_std(geometry.mean, geometry.std)
    th, tw = _target_size(geometry)
    out = _check_out(out, th, tw)
    if _native is None:
        out[...] = preprocess_frame_reference(frame, geometry, color=color)
        return out
    ys, wy = _resize_taps(h, th)
    xs, wx = _resize_taps(w, tw)
    _native.preprocess_frame(np.ascontiguousarray(frame), out, ys, wy, xs, wx, m, s, _COLOR_CODE[color])
    return out


def _check_frame(frame: object, color: str, what: str) -> tuple[int, int]:
    """``(h, w)`` of a frame in layout ``color``; raises InputError naming the problem."""
    if color not in _COLOR_CODE:
        raise InputError(f"color must be one of {COLORS}, got {color!r}")
    if color != "nv12":
        _check_image(frame, what)
        return int(frame.shape[0]), int(frame.shape[1])  # type: ignore[union-attr]
    ok = isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 2
    if not ok or frame.shape[0] == 0 or frame.shape[0] % 3 or frame.shape[1] == 0 or frame.shape[1] % 2:
        raise InputError(f"{what} must be NV12: a uint8 array of shape (H * 3 / 2, W) with H and W even "
                         f"and > 0, got {_describe(frame)}")
    return frame.shape[0] // 3 * 2, int(frame.shape[1])


def _target_size(geometry: "InputGeometry") -> tuple[int, int]:
    th, tw = int(geometry.height), int(geometry.width)
    if th < 1 or tw < 1:
        raise InputError(f"geometry height and width must be >= 1, got {geometry.height}x{geometry.width}")
    return th, tw


def _check_out(out: np.ndarray | None, h: int, w: int) -> np.ndarray:
    if out is None:
        return np.empty((3, h, w), dtype=np.float32)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (3, h, w):
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise InputError(f"out must be a float32 array of shape (3, {h}, {w}), got {got}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise InputError("out must be C-contiguous and writable")
    return out


def preprocess_video(
    frames: np.ndarray, fps: float, geometry: "InputGeometry", start_seconds: float = 0.0
) -> np.ndarray:
    """Turn decoded frames into the model's ``video`` input for one sample.

    The clip's frames (:func:`clip_frame_indices`), each through :func:`preprocess_frame`.

    Args:
        frames: ``(N, h, w, 3)`` uint8 RGB (as :func:`fusionedge.sdk.media.read_video` returns).
        fps: the frames' rate, > 0.
        geometry: the model's input geometry.
        start_seconds: where the clip window starts, seconds from ``frames[0]``.

    Returns:
        ``(T, 3, H, W)`` float32.

    Raises:
        InputError: wrong shape/dtype, no frames, a bad fps, or a start past the end.
    """
    ok = isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4
    if not ok or frames.shape[-1] != 3:
        raise InputError(f"frames must be a uint8 array of shape (N, H, W, 3), got {_describe(frames)}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise InputError(f"frames is empty: shape {frames.shape}")
    idx = clip_frame_indices(frames.shape[0], fps, geometry, start_seconds)
    th, tw = _target_size(geometry)
    out = np.empty((len(idx), 3, th, tw), dtype=np.float32)
    for t, i in enumerate(idx):
        preprocess_frame(frames[i], geometry, out=out[t])
    return out


# --------------------------------------------------------------------------------------- audio


def preprocess_audio(
    samples: np.ndarray, sample_rate: int, geometry: "InputGeometry", start_seconds: float = 0.0
) -> np.ndarray:
    """Turn a waveform into the model's ``audio`` input for one sample.

    Down-mix to mono (the mean of the channels), take the window ``[start, start + clip_seconds)``,
    resample it to ``geometry.sample_rate`` with :func:`resample_audio` (filter context is taken from
    outside the window where the signal has it), and zero-pad where the signal ends early.

    Args:
        samples: ``(S,)`` or ``(S, C)`` float array, values nominally in [-1, 1].
        sample_rate: the samples' rate in Hz, > 0.
        geometry: the model's input geometry (``sample_rate``, ``clip_seconds``).
        start_seconds: window start in seconds from sample 0.

    Returns:
        ``(geometry.audio_samples,)`` float32 mono.

    Raises:
        InputError: not a float array of shape (S,) / (S, C), NaN or Inf in it, a bad rate or start.
    """
    _check_waveform(samples)
    sr_in = _sample_rate(sample_rate, "sample_rate")
    sr_out = _sample_rate(geometry.sample_rate, "geometry.sample_rate")
    start = _start(start_seconds)
    n_out = int(geometry.audio_samples)
    s0 = int(round(start * sr_in))  # the window starts at input sample s0 (within half a sample)
    # Only the window and the filter's context are down-mixed and checked: a long recording is
    # never copied whole.
    ratio = Fraction(sr_in, sr_out)
    half = filter_half_length(ratio.numerator, ratio.denominator) if ratio != 1 else 1
    lo = max(0, s0 - half + 1)
    hi = min(samples.shape[0], s0 + ((n_out - 1) * ratio.numerator) // ratio.denominator + half + 1)
    mono = _downmix(samples[lo:max(lo, hi)], offset=lo)
    return resample_window(mono, sr_in, sr_out, s0 - lo, n_out).astype(np.float32)


def resample_audio(samples: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono or multi-channel waveform (down-mixed to mono) to ``target_rate``.

    A Kaiser-windowed sinc (32 zero crossings, beta 8.6, -6 dB at 95% of the lower Nyquist
    frequency) evaluated at the exact rational positions, one phase table per ratio, taps
    normalised to unit DC gain. Output sample ``j`` is the band-limited signal at
    ``j / target_rate`` s. Measured for 44.1/48 kHz -> 16 kHz: flat within 0.01 dB up to 7 kHz,
    < -85 dB from 8 kHz (the new Nyquist frequency) up, so nothing aliases.

    Args:
        samples: ``(S,)`` or ``(S, C)`` float array.
        sample_rate: input rate in Hz.
        target_rate: output rate in Hz.

    Returns:
        ``(round(S * target_rate / sample_rate),)`` float32 mono.

    Raises:
        InputError: as :func:`preprocess_audio`.
    """
    _check_waveform(samples)
    sr_in = _sample_rate(sample_rate, "sample_rate")
    sr_out = _sample_rate(target_rate, "target_rate")
    mono = _downmix(samples, offset=0)
    n_out = int(round(mono.shape[0] * sr_out / sr_in))
    return resample_window(mono, sr_in, sr_out, 0, n_out).astype(np.float32)


def resample_context(sample_rate: int, target_rate: int) -> int:
    """Input samples the resampler reads on each side of a window (its filter's half length, + 1).

    A reader that takes this many samples before and after a window (where the signal has them)
    gives :func:`preprocess_audio` exactly what it would read from the whole signal.

    Args:
        sample_rate: input rate in Hz.
        target_rate: output rate in Hz.

    Returns:
        A number of input samples, >= 2.

    Raises:
        InputError: a rate outside ``MIN_SAMPLE_RATE`` .. ``MAX_SAMPLE_RATE``.
    """
    ratio = Fraction(_sample_rate(sample_rate, "sample_rate"), _sample_rate(target_rate, "target_rate"))
    half = filter_half_length(ratio.numerator, ratio.denominator) if ratio != 1 else 1
    return half + 1


def _check_waveform(samples: object) -> None:
    if not isinstance(samples, np.ndarray) or not np.issubdtype(samples.dtype, np.floating):
        raise InputError(
            f"audio samples must be a float array in [-1, 1] (scale int16 PCM by 1/32768), "
            f"got {_describe(samples)}"
        )
    if not (samples.ndim == 1 or (samples.ndim == 2 and samples.shape[1] >= 1)):
        raise InputError(f"audio samples must have shape (S,) or (S, C), got {samples.shape}")


def _downmix(samples: np.ndarray, offset: int) -> np.ndarray:
    """Float64 mono (the mean of the channels); NaN/Inf raise, naming the sample (``offset`` + index)."""
    mono = samples.astype(np.float64) if samples.ndim == 1 else samples.astype(np.float64).mean(axis=1)
    if not np.all(np.isfinite(mono)):
        bad = int(np.flatnonzero(~np.isfinite(mono))[0])
        kind = "NaN" if np.isnan(samples[bad]).any() else "Inf"
        raise InputError(f"audio samples contain {kind} (first at sample {offset + bad})")
    return mono


# --------------------------------------------------------------------------------------- boxes


def scale_boxes(boxes: np.ndarray, from_wh: tuple[int, int], to_wh: tuple[int, int]) -> np.ndarray:
    """Map ``x1y1x2y2`` boxes between two image sizes (the inverse of the stretch in :func:`resize_frame`).

    Args:
        boxes: ``(K, 4)`` x1, y1, x2, y2 in pixels of an image of size ``from_wh``.
        from_wh: ``(width, height)`` the boxes are in.
        to_wh: ``(width, height)`` to map them to.

    Returns:
        ``(K, 4)`` float64 boxes in ``to_wh`` pixels.

    Raises:
        InputError: boxes not ``(K, 4)`` numbers, or a size that is not two positive numbers.
    """
    b = np.asarray(boxes, dtype=np.float64) if _is_numeric(boxes) else None
    if b is None or b.ndim != 2 or b.shape[1] != 4:
        raise InputError(f"boxes must be a (K, 4) numeric array, got {_describe(boxes)}")
    fw, fh = _wh(from_wh, "from_wh")
    tw, th = _wh(to_wh, "to_wh")
    return b * np.array([tw / fw, th / fh, tw / fw, th / fh])


# --------------------------------------------------------------------------------------- checks


def _check_image(image: object, what: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{what} must be a uint8 array of shape (H, W, 3), got {_describe(image)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"{what} is empty: shape {image.shape}")


def _check_mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple, tuple]:
    try:
        m = tuple(float(v) for v in mean)
        s = tuple(float(v) for v in std)
    except (TypeError, ValueError) as e:
        raise InputError(f"mean and std must be three numbers each, got {mean!r}, {std!r}") from e
    if len(m) != 3 or len(s) != 3 or not all(math.isfinite(v) for v in m + s) or min(s) <= 0:
        raise InputError(f"mean and std must be three finite numbers each (std > 0), got {mean!r}, {std!r}")
    return m, s


def _start(value: float) -> float:
    try:
        start = float(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"start_seconds must be a number >= 0, got {value!r}") from e
    if not math.isfinite(start) or start < 0:
        raise InputError(f"start_seconds must be a finite number >= 0, got {value!r}")
    return start


def _positive_finite(value: float, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must be a positive number, got {value!r}") from e
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{what} must be a finite number > 0, got {value!r}")
    return v


def _positive_int(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InputError(f"{what} must be a positive integer (Hz), got {value!r}")
    return int(value)


def _sample_rate(value: int, what: str) -> int:
    rate = _positive_int(value, what)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InputError(f"{what} must be {MIN_SAMPLE_RATE} .. {MAX_SAMPLE_RATE} Hz, got {rate}")
    return rate


def _wh(value: tuple[int, int], what: str) -> tuple[float, float]:
    try:
        w, h = (float(v) for v in value)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must be (width, height), got {value!r}") from e
    if not (math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0):
        raise InputError(f"{what} must be two positive numbers (width, height), got {value!r}")
    return w, h


def _is_numeric(x: object) -> bool:
    try:
        return np.issubdtype(np.asarray(x).dtype, np.number)
    except (TypeError, ValueError):
        return False


def _describe(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array of shape {x.shape}"
    return type(x).__name__
