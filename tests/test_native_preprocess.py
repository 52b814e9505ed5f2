"""Fused frame preprocessing: the reference definition, native parity, NV12, the CUDA build."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fusionedge.sdk import preprocess as P
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.spec import InputGeometry

G = InputGeometry()  # 96x160
TOL = 1e-5
needs_native = pytest.mark.skipif(not P.NATIVE_AVAILABLE, reason="fusionedge.sdk._native is not built")
REPO = Path(__file__).resolve().parents[1]


def _frame(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _nv12(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)


def _unnormalize(x: np.ndarray) -> np.ndarray:
    """(3, H, W) model input -> (H, W, 3) RGB on [0, 255] (float64)."""
    m, s = np.asarray(G.mean)[:, None, None], np.asarray(G.std)[:, None, None]
    return ((x.astype(np.float64) * s + m) * 255.0).transpose(1, 2, 0)


# ------------------------------------------------------------------------------ the definition


@pytest.mark.parametrize("n_in, n_out", [(480, 96), (720, 96), (97, 96), (96, 96), (40, 96), (7, 160), (1, 5)])
def test_resize_weights_are_a_partition_of_unity(n_in: int, n_out: int) -> None:
    m = P._resize_matrix(n_in, n_out)
    assert m.shape == (n_out, n_in) and np.all(m >= 0)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
    starts, taps = P._resize_taps(n_in, n_out)
    assert starts.min() >= 0 and starts.max() + taps.shape[1] <= n_in
    dense = np.zeros_like(m)
    for i in range(n_out):
        dense[i, starts[i]:starts[i] + taps.shape[1]] = taps[i]
    np.testing.assert_allclose(dense, m, atol=1e-7)  # the sparse taps are the same weights


def test_area_weights_are_exact_box_averages() -> None:
    m = P._resize_matrix(480, 96)  # 5 rows per output row, each 1/5
    assert np.array_equal(m[3, 15:20], np.full(5, 0.2)) and m[3].sum() == pytest.approx(1.0)
    assert np.count_nonzero(m[3]) == 5
    half = P._resize_matrix(720, 96)  # 7.5 rows: 7 full and one half-covered row
    np.testing.assert_allclose(half[0, :8], [1 / 7.5] * 7 + [0.5 / 7.5])
    assert np.array_equal(P._resize_matrix(96, 96), np.eye(96))


@pytest.mark.parametrize("shape, interp", [((480, 640), "INTER_AREA"), ((301, 417), "INTER_AREA"),
                                           ((40, 60), "INTER_LINEAR"), ((33, 71), "INTER_LINEAR")])
def test_reference_is_opencv_resize_math_without_rounding(shape: tuple[int, int], interp: str) -> None:
    # cv2's float32 resize does the same area / bilinear math without rounding to integers
    import cv2

    frame = _frame(*shape, seed=1)
    ref = _unnormalize(P.preprocess_frame_reference(frame, G))
    cv = cv2.resize(frame.astype(np.float32), (G.width, G.height), interpolation=getattr(cv2, interp))
    assert np.abs(ref - cv).max() < 1e-3  # pixel units (float32 rounding in both)


def test_reference_at_model_size_is_plain_normalization() -> None:
    frame = _frame(G.height, G.width, seed=2)
    ref = P.preprocess_frame_reference(frame, G)
    np.testing.assert_allclose(ref, P.normalize_image_reference(frame, G.mean, G.std), atol=1e-6)


def test_reference_channel_orders_agree() -> None:
    frame = _frame(50, 70, seed=3)
    rgb = P.preprocess_frame_reference(frame, G)
    np.testing.assert_array_equal(P.preprocess_frame_reference(frame[..., ::-1].copy(), G, color="bgr"), rgb)


# ------------------------------------------------------------------------------ NV12


def test_nv12_reference_is_bt601_limited_range() -> None:
    import cv2

    rng = np.random.default_rng(4)  # a camera's limited-range values: Y in [16, 235], U, V in [16, 240]
    nv = np.concatenate([rng.integers(16, 236, (96, 160)), rng.integers(16, 241, (48, 160))]).astype(np.uint8)
    ref = P.nv12_to_rgb_reference(nv)
    assert ref.shape == (96, 160, 3) and ref.min() >= 0 and ref.max() <= 255
    # OpenCV's NV12 conversion is BT.601 limited range too; it rounds to uint8 (<= 0.5) in fixed point
    assert np.abs(ref - cv2.cvtColor(nv, cv2.COLOR_YUV2RGB_NV12)).max() <= 1.0
    black = np.concatenate([np.full((4, 4), 16, np.uint8), np.full((2, 4), 128, np.uint8)])
    white = np.concatenate([np.full((4, 4), 235, np.uint8), np.full((2, 4), 128, np.uint8)])
    np.testing.assert_allclose(P.nv12_to_rgb_reference(black), 0.0, atol=1e-9)
    np.testing.assert_allclose(P.nv12_to_rgb_reference(white), 255.0, atol=1e-9)


def test_nv12_chroma_covers_two_by_two_blocks() -> None:
    nv = np.concatenate([np.full((4, 4), 120, np.uint8), np.array([[90, 200, 160, 60], [128, 128, 128, 128]],
                                                                   np.uint8)])
    rgb = P.nv12_to_rgb_reference(nv)
    assert np.array_equal(rgb[0, 0], rgb[1, 1]) and np.array_equal(rgb[0, 2], rgb[1, 3])
    assert not np.array_equal(rgb[0, 0], rgb[0, 2]) and np.array_equal(rgb[2, 0], rgb[3, 3])


# ------------------------------------------------------------------------------ native parity

SIZES = [(480, 640), (720, 1280), (96, 160), (97, 161), (37, 53), (50, 300), (200, 90), (2, 2), (1, 1)]


# NV12 subsamples chroma 2x2, so it only exists at even sizes: those cases are not generated at all.
CASES = [(h, w, c) for c in ("rgb", "bgr", "nv12") for h, w in SIZES if c != "nv12" or (h % 2 == 0 and w % 2 == 0)]


@needs_native
@pytest.mark.parametrize("h, w, color", CASES)
def test_native_matches_reference(h: int, w: int, color: str) -> None:
    if color == "nv12":
        frame = _nv12(h, w, seed=h * 7 + w)
    else:
        frame = _frame(h, w, seed=h * 7 + w)
    ref = P.preprocess_frame_reference(frame, G, color=color)
    out = P.preprocess_frame(frame, G, color=color)
    assert out.shape == (3, G.height, G.width) and out.dtype == np.float32
    assert np.abs(out - ref).max() <= TOL


@needs_native
@pytest.mark.parametrize("height, width", [(31, 45), (250, 20), (1, 300)])
def test_native_matches_reference_at_other_model_sizes(height: int, width: int) -> None:
    g = replace(G, height=height, width=width)
    for color, frame in (("rgb", _frame(120, 90, seed=5)), ("nv12", _nv12(120, 90, seed=6))):
        ref = P.preprocess_frame_reference(frame, g, color=color)
        assert np.abs(P.preprocess_frame(frame, g, color=color) - ref).max() <= TOL


@needs_native
def test_native_writes_into_out_in_place() -> None:
    frame = _frame(480, 640, seed=8)
    batch = np.full((3, 3, G.height, G.width), 7.0, np.float32)
    ret = P.preprocess_frame(frame, G, color="bgr", out=batch[1])
    assert ret is not None and np.shares_memory(ret, batch) and ret.ctypes.data == batch[1].ctypes.data
    assert np.all(batch[0] == 7.0) and np.all(batch[2] == 7.0)  # nothing outside the slot
    assert np.abs(batch[1] - P.preprocess_frame_reference(frame, G, color="bgr")).max() <= TOL


@needs_native
def test_native_bgr_is_rgb_with_swapped_channels_exactly() -> None:
    frame = _frame(301, 417, seed=9)
    np.testing.assert_array_equal(P.preprocess_frame(frame[..., ::-1], G, color="bgr"), P.preprocess_frame(frame, G))


@needs_native
def test_native_row_buffers_follow_the_frame_width_across_calls_and_threads() -> None:
    frames = [_frame(720, 1280, 10), _frame(37, 53, 11), _frame(480, 640, 12), _frame(720, 1280, 13)]
    refs = [P.preprocess_frame_reference(f, G) for f in frames]
    errors: list[float] = []

    def work(order: list[int]) -> None:
        out = np.empty((3, G.height, G.width), np.float32)
        for _ in range(3):
            for i in order:
                P.preprocess_frame(frames[i], G, out=out)
                errors.append(float(np.abs(out - refs[i]).max()))

    threads = [threading.Thread(target=work, args=(o,)) for o in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 36 and max(errors) <= TOL


def test_fallback_without_native_is_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "_native", None)
    frame = _nv12(60, 80, seed=14)
    out = np.empty((3, G.height, G.width), np.float32)
    assert P.preprocess_frame(frame, G, color="nv12", out=out) is out
    np.testing.assert_array_equal(out, P.preprocess_frame_reference(frame, G, color="nv12"))


def test_preprocess_video_is_preprocess_frame_per_clip_frame() -> None:
    frames = np.stack([_frame(120, 200, seed=20 + i) for i in range(30)])
    video = P.preprocess_video(frames, 30.0, G)
    for t, i in enumerate(P.clip_frame_indices(30, 30.0, G)):
        np.testing.assert_array_equal(video[t], P.preprocess_frame(frames[i], G))
        assert np.abs(video[t] - P.preprocess_frame_reference(frames[i], G)).max() <= TOL


@pytest.mark.parametrize(
    "frame, color, match",
    [
        (np.zeros((10, 10, 3), np.uint8), "yuv", "color must be one of"),
        (np.zeros((10, 10, 3), np.float32), "rgb", r"\(H, W, 3\)"),
        (np.zeros((15, 9), np.uint8), "nv12", "NV12"),  # odd width
        (np.zeros((16, 10), np.uint8), "nv12", "NV12"),  # 16 rows is not H * 3 / 2
        (np.zeros((10, 10, 3), np.uint8), "nv12", "NV12"),
        (np.zeros((0, 10, 3), np.uint8), "rgb", "empty"),
    ],
)
def test_bad_frames_raise_input_error(frame: np.ndarray, color: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        P.preprocess_frame(frame, G, color=color)
    with pytest.raises(InputError, match=match):
        P.preprocess_frame_reference(frame, G, color=color)


@pytest.mark.parametrize(
    "out", [np.empty((3, 96, 161), np.float32), np.empty((3, 96, 160), np.float64),
            np.empty((3, 160, 96), np.float32).transpose(0, 2, 1)],
)
def test_bad_out_raises_input_error(out: np.ndarray) -> None:
    with pytest.raises(InputError, match="out must be"):
        P.preprocess_frame(_frame(10, 10, 0), G, out=out)


# ------------------------------------------------------------------------------ CUDA build


needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler (nvcc)")


@needs_nvcc
def test_cuda_source_compiles_for_jetson_orin(tmp_path: Path) -> None:
    obj = tmp_path / "preprocess_sm87.o"
    subprocess.run(["nvcc", "-O3", "-std=c++17", "-gencode", "arch=compute_87,code=sm_87", "-c",
                    str(REPO / "native" / "preprocess.cu"), "-o", str(obj)], check=True, timeout=300)
    assert obj.stat().st_size > 0


@needs_nvcc
@needs_native
def test_cuda_library_was_built_beside_the_extension() -> None:
    # CMake builds libfusionedge_cuda when it finds nvcc; it loads without a GPU, and its host side
    # checks arguments before touching the device (1 = cudaErrorInvalidValue).
    from fusionedge.sdk import _native

    lib_path = Path(_native.__file__).with_name("libfusionedge_cuda.so")
    assert lib_path.is_file(), f"{lib_path} was not built although nvcc exists"
    fn = ctypes.CDLL(str(lib_path)).fusionedge_preprocess_frame_cuda
    fn.restype = ctypes.c_int
    null = ctypes.c_void_p(None)
    args = [null, 480, 640, 0, null, null, 5, null, null, 4, null, null, null, 96, 160, null]
    assert fn(*args) == 1
