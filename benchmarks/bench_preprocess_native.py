"""Fused native frame preprocessing vs OpenCV + NumPy, and vs a plain copy of the frame's bytes.

One camera frame (640x480 or 1280x720, uint8) -> the model's (3, 96, 160) float32 input:

* ``native``: :func:`fusionedge.sdk.preprocess.preprocess_frame` into a preallocated buffer (one
  pass: resize taps + normalization + CHW; BGR as OpenCV delivers it, NV12 as Jetson cameras do);
* ``opencv_numpy``: the usual way — ``cv2.resize`` (INTER_AREA), then BGR -> RGB, ``/ 255``,
  ``- mean``, ``/ std`` and the HWC -> CHW transpose in NumPy on the small image (for NV12,
  ``cv2.cvtColor`` to RGB first); OpenCV uses every core it has, the native path one;
* ``memcpy``: ``np.copyto`` of the input frame's bytes — the floor any preprocessing pays to read
  the frame once.

Each size is one benchmark group, so ``pytest benchmarks/bench_preprocess_native.py`` prints the
native time as a multiple of the others.
"""

from __future__ import annotations

import numpy as np
import pytest

from fusionedge.sdk.preprocess import preprocess_frame, preprocess_frame_reference
from fusionedge.sdk.spec import InputGeometry

GEOMETRY = InputGeometry()  # the model input: 160x96
SIZES = [(480, 640), (720, 1280)]
IDS = ["640x480", "1280x720"]


def _bgr(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _nv12(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(1)  # limited range, as a camera delivers it
    return np.concatenate([rng.integers(16, 236, (h, w)), rng.integers(16, 241, (h // 2, w))]).astype(np.uint8)


def _opencv_numpy(frame: np.ndarray, nv12: bool = False) -> np.ndarray:
    import cv2

    g = GEOMETRY
    if nv12:
        small = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_NV12), (g.width, g.height),
                           interpolation=cv2.INTER_AREA)
    else:  # resize first, then swap BGR -> RGB on the small image
        small = cv2.resize(frame, (g.width, g.height), interpolation=cv2.INTER_AREA)[..., ::-1]
    x = (small.astype(np.float32) / 255.0 - np.asarray(g.mean, np.float32)) / np.asarray(g.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_native(benchmark, size):
    """preprocess_frame, BGR in, into a preallocated (3, 96, 160) buffer."""
    benchmark.group = f"frame {size[1]}x{size[0]} (bgr)"
    frame = _bgr(*size)
    out = np.empty((3, GEOMETRY.height, GEOMETRY.width), np.float32)
    ret = benchmark(preprocess_frame, frame, GEOMETRY, color="bgr", out=out)
    assert ret is out
    assert np.abs(out - preprocess_frame_reference(frame, GEOMETRY, color="bgr")).max() <= 1e-5


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_opencv_numpy(benchmark, size):
    """cv2.resize (INTER_AREA) + NumPy BGR->RGB, normalize and CHW transpose."""
    benchmark.group = f"frame {size[1]}x{size[0]} (bgr)"
    out = benchmark(_opencv_numpy, _bgr(*size))
    assert out.shape == (3, GEOMETRY.height, GEOMETRY.width)


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_memcpy(benchmark, size):
    """np.copyto of the frame's bytes (h * w * 3)."""
    benchmark.group = f"frame {size[1]}x{size[0]} (bgr)"
    frame = _bgr(*size)
    dst = np.empty_like(frame)
    benchmark(np.copyto, dst, frame)
    assert np.array_equal(dst, frame)


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_native_nv12(benchmark, size):
    """preprocess_frame, NV12 in (BT.601 limited range), into a preallocated buffer."""
    benchmark.group = f"frame {size[1]}x{size[0]} (nv12)"
    frame = _nv12(*size)
    out = np.empty((3, GEOMETRY.height, GEOMETRY.width), np.float32)
    benchmark(preprocess_frame, frame, GEOMETRY, color="nv12", out=out)
    assert np.abs(out - preprocess_frame_reference(frame, GEOMETRY, color="nv12")).max() <= 1e-5


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_opencv_numpy_nv12(benchmark, size):
    """cv2.cvtColor(NV12 -> RGB) + cv2.resize (INTER_AREA) + NumPy normalize and CHW transpose."""
    benchmark.group = f"frame {size[1]}x{size[0]} (nv12)"
    out = benchmark(_opencv_numpy, _nv12(*size), True)
    assert out.shape == (3, GEOMETRY.height, GEOMETRY.width)


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_memcpy_nv12(benchmark, size):
    """np.copyto of the NV12 frame's bytes (h * w * 3 / 2)."""
    benchmark.group = f"frame {size[1]}x{size[0]} (nv12)"
    frame = _nv12(*size)
    dst = np.empty_like(frame)
    benchmark(np.copyto, dst, frame)
    assert np.array_equal(dst, frame)
