"""Preprocessing: frame sampling, the resize/normalize utilities, clips, audio resampling.

The model's frame input (``preprocess_frame``: fused resize + normalize, native vs reference, NV12)
is tested in ``test_native_preprocess.py``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from fusionedge.sdk import preprocess as P
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.spec import InputGeometry

G = InputGeometry()  # T=4, 96x160, 1 s, 16 kHz
MEAN, STD = G.mean, G.std


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------ frame indices


def test_clip_indices_one_second_at_30fps() -> None:
    # window [0, 1) holds frames 0..29; 4 evenly spread: 0, 9.67, 19.33, 29 -> 0, 10, 19, 29
    idx = P.clip_frame_indices(300, 30.0, G)
    assert idx.tolist() == [0, 10, 19, 29]
    assert idx.dtype == np.int64


def test_clip_indices_with_start_and_ntsc_rate() -> None:
    # start 2 s at 29.97 fps: first = ceil(59.94) = 60, stop = ceil(89.91) = 90 -> last 89
    idx = P.clip_frame_indices(1000, 29.97, G, start_seconds=2.0)
    assert idx[0] == 60 and idx[-1] == 89
    assert np.all(np.diff(idx) > 0)
    # the last frame is just before the window end, the next one is past it
    assert idx[-1] / 29.97 < 3.0 <= (idx[-1] + 1) / 29.97


def test_clip_indices_short_video_repeats_and_keeps_current_frame() -> None:
    # 2 frames for a 4-frame clip: linspace(0, 1, 4) = 0, .33, .67, 1 -> 0, 0, 1, 1
    assert P.clip_frame_indices(2, 30.0, G).tolist() == [0, 0, 1, 1]
    assert P.clip_frame_indices(1, 30.0, G).tolist() == [0, 0, 0, 0]
    # window cut by the video end: frames 10..14 remain, the last one (14) is the current frame
    idx = P.clip_frame_indices(15, 10.0, G, start_seconds=1.0)
    assert idx[0] == 10 and idx[-1] == 14


def test_clip_indices_single_frame_geometry_is_the_current_frame() -> None:
    g = InputGeometry(clip_frames=1, clip_seconds=0.5)
    assert P.clip_frame_indices(100, 20.0, g).tolist() == [9]


def test_read_window_then_preprocess_equals_preprocess_at_start() -> None:
    # frame_window is shared with media.read_video: slicing the window then starting at 0 must pick
    # the same frames as indexing the whole video at start_seconds, for awkward rates and starts.
    for fps in (7.0, 25.0, 29.97, 59.94):
        for start in (0.0, 0.05, 0.333, 1.7):
            first, stop = P.frame_window(fps, start, G.clip_seconds)
            whole = P.clip_frame_indices(10_000, fps, G, start_seconds=start)
            window = P.clip_frame_indices(stop - first, fps, G) + first
            assert whole.tolist() == window.tolist(), (fps, start)


@pytest.mark.parametrize(
    "args",
    [(0, 30.0, 0.0), (10, 0.0, 0.0), (10, float("nan"), 0.0), (10, 30.0, -1.0), (10, 30.0, 5.0)],
)
def test_clip_indices_bad_input(args: tuple) -> None:
    n, fps, start = args
    with pytest.raises(InputError):
        P.clip_frame_indices(n, fps, G, start_seconds=start)


# ------------------------------------------------------------------------------ resize


def test_resize_frame_utility_is_opencv_area_or_linear() -> None:
    # resize_frame is the uint8 OpenCV utility (e.g. for drawing); the model input is preprocess_frame
    import cv2

    frame = _rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    small = P.resize_frame(frame, G)
    assert small.shape == (96, 160, 3) and small.dtype == np.uint8
    np.testing.assert_array_equal(small, cv2.resize(frame, (160, 96), interpolation=cv2.INTER_AREA))
    tiny = _rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    big = P.resize_frame(tiny, G)
    np.testing.assert_array_equal(big, cv2.resize(tiny, (160, 96), interpolation=cv2.INTER_LINEAR))
    same = _rng(3).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    assert P.resize_frame(same, G) is same


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10, 3), np.float32),
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        [1, 2],
    ],
)
def test_resize_rejects_bad_frames(bad: object) -> None:
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        P.resize_frame(bad, G)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ normalize


def test_reference_is_the_plain_formula() -> None:
    # pixel (R, G, B) = (0, 255, 128): (0/255 - .485)/.229 = -2.117904, (1 - .456)/.224 = 2.428571,
    # (128/255 - .406)/.225 = 0.426492
    img = np.array([[[0, 255, 128]]], np.uint8)
    out = P.normalize_image_reference(img, MEAN, STD)
    assert out.shape == (3, 1, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], [-2.117904, 2.428571, 0.426492], atol=1e-6)
    # bgr=True reads the same pixel as B, G, R
    bgr_img = img[..., ::-1].copy()
    np.testing.assert_array_equal(P.normalize_image_reference(bgr_img, MEAN, STD, bgr=True), out)


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (17, 31), (96, 160), (121, 203), (480, 640)])
@pytest.mark.parametrize("bgr", [False, True])
def test_normalize_matches_reference(hw: tuple[int, int], bgr: bool) -> None:
    img = _rng(hw[0] * 7 + hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    ref = P.normalize_image_reference(img, MEAN, STD, bgr=bgr)
    fast = P.normalize_image(img, MEAN, STD, bgr=bgr)
    assert fast.shape == (3, *hw) and fast.dtype == np.float32
    assert np.max(np.abs(fast - ref)) <= 1e-6
    lut = np.empty_like(ref)
    P._normalize_lut(img, tuple(MEAN), tuple(STD), lut, bgr)  # the fallback when _native is absent
    assert np.max(np.abs(lut - ref)) <= 1e-6


@pytest.mark.skipif(not P.NATIVE_AVAILABLE, reason="native extension not built")
def test_native_covers_every_pixel_value_exactly() -> None:
    # all 256 values in every channel, odd width: the native table must equal the reference bit for bit
    v = np.arange(256, dtype=np.uint8)
    img = np.stack([v, v[::-1], np.roll(v, 77)], axis=-1).reshape(16, 16, 3)[:, :15]
    img = np.ascontiguousarray(img)
    out = np.empty((3, 16, 15), np.float32)
    from fusionedge.sdk import _native

    _native.normalize_hwc_to_chw(img, out, MEAN, STD, False)
    np.testing.assert_array_equal(out, P.normalize_image_reference(img, MEAN, STD))


def test_normalize_writes_into_out_in_place() -> None:
    img = _rng(5).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    batch = np.full((2, 3, 33, 47), np.nan, np.float32)
    slot = batch[1]
    ret = P.normalize_image(img, MEAN, STD, out=slot)
    assert ret is slot
    assert ret.__array_interface__["data"][0] == batch[1].__array_interface__["data"][0]
    np.testing.assert_array_equal(batch[1], P.normalize_image_reference(img, MEAN, STD))
    assert np.isnan(batch[0]).all()  # the other slot is untouched


def test_normalize_accepts_non_contiguous_image() -> None:
    img = _rng(6).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    view = img[::2, ::3]  # strided view
    ref = P.normalize_image_reference(view, MEAN, STD)
    np.testing.assert_array_equal(P.normalize_image(view, MEAN, STD), ref)


@pytest.mark.parametrize(
    "image, out, mean, std, match",
    [
        (np.zeros((4, 4, 3), np.float32), None, MEAN, STD, "uint8"),
        (np.zeros((4, 4), np.uint8), None, MEAN, STD, "uint8"),
        (np.zeros((4, 4, 1), np.uint8), None, MEAN, STD, r"\(H, W, 3\)"),
        (np.zeros((0, 4, 3), np.uint8), None, MEAN, STD, "empty"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((3, 4, 4), np.float64), MEAN, STD, "float32"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((3, 4, 5), np.float32), MEAN, STD, r"\(3, 4, 4\)"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32).T, MEAN, STD, "contig"),
        (np.zeros((4, 4, 3), np.uint8), None, (0.5, 0.5), STD, "three"),
        (np.zeros((4, 4, 3), np.uint8), None, MEAN, (0.2, 0.0, 0.2), "std > 0"),
        (np.zeros((4, 4, 3), np.uint8), None, (0.5, float("nan"), 0.5), STD, "finite"),
    ],
)
def test_normalize_rejects_bad_input(image, out, mean, std, match) -> None:
    with pytest.raises(InputError, match=match):
        P.normalize_image(image, mean, std, out=out)


def test_normalize_timing_report(capsys: pytest.CaptureFixture) -> None:
    """Prints native vs NumPy times on a 640x480 frame (informational; nothing timed is asserted)."""
    img = _rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = np.empty((3, 480, 640), np.float32)

    def best(fn, n=10):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times) * 1e3

    ref_ms = best(lambda: P.normalize_image_reference(img, MEAN, STD))
    lut_ms = best(lambda: P._normalize_lut(img, tuple(MEAN), tuple(STD), out, False))
    fast_ms = best(lambda: P.normalize_image(img, MEAN, STD, out=out))
    with capsys.disabled():
        print(
            f"\n[normalize 640x480] reference NumPy {ref_ms:.2f} ms | NumPy LUT fallback {lut_ms:.2f} ms | "
            f"normalize_image (native={P.NATIVE_AVAILABLE}) {fast_ms:.2f} ms"
        )
    np.testing.assert_array_equal(out, P.normalize_image_reference(img, MEAN, STD))


# ------------------------------------------------------------------------------ video


def test_preprocess_video_shape_and_frames() -> None:
    # frame i is filled with value i: the output must hold the normalized frames 0, 10, 19, 29
    # (a constant frame stays constant through the area / bilinear resize)
    frames = np.stack([np.full((48, 64, 3), i, np.uint8) for i in range(60)])
    x = P.preprocess_video(frames, 30.0, G)
    assert x.shape == (4, 3, 96, 160) and x.dtype == np.float32
    for t, i in enumerate([0, 10, 19, 29]):
        expect = (i / 255 - np.array(MEAN)) / np.array(STD)
        np.testing.assert_allclose(x[t, :, 50, 70], expect, atol=1e-6)


@pytest.mark.parametrize(
    "frames",
    [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), np.zeros((0, 8, 8, 3), np.uint8)],
)
def test_preprocess_video_rejects_bad_frames(frames: np.ndarray) -> None:
    with pytest.raises(InputError):
        P.preprocess_video(frames, 30.0, G)


# ------------------------------------------------------------------------------ audio


def _tone(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz_and_amp(x: np.ndarray, sr: int) -> tuple[float, float]:
    # Hann-windowed spectrum; peak bin and amplitude (a sine of amplitude A -> A * N/4 in a Hann FFT)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spec))
    return k * sr / len(x), 4 * spec[k] / len(x)


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 44100, 48000])
def test_resampled_tone_keeps_frequency_and_amplitude(sr: int) -> None:
    stereo = np.stack([_tone(1000, sr, 2.0), _tone(1000, sr, 2.0)], axis=1)
    out = P.preprocess_audio(stereo, sr, G, start_seconds=0.5)
    assert out.shape == (16000,) and out.dtype == np.float32
    hz, amp = _peak_hz_and_amp(out, 16000)
    assert hz == pytest.approx(1000.0, abs=1.0)  # bin width 1 Hz
    assert amp == pytest.approx(0.5, rel=0.01)
    # and sample by sample: the band-limited value of the tone at j/16000 s after the start
    expect = 0.5 * np.sin(2 * np.pi * 1000 * (np.round(0.5 * sr) / sr + np.arange(16000) / 16000))
    np.testing.assert_allclose(out, expect, atol=2e-3)


def test_stereo_downmix_is_the_channel_mean() -> None:
    left = _tone(1000, 48000, 1.0)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    hz, amp = _peak_hz_and_amp(P.preprocess_audio(stereo, 48000, G), 16000)
    assert hz == pytest.approx(1000.0, abs=1.0) and amp == pytest.approx(0.25, rel=0.01)
    np.testing.assert_allclose(
        P.preprocess_audio(stereo, 48000, G), P.preprocess_audio(left * 0.5, 48000, G), atol=1e-7
    )


def test_downsampling_removes_tones_above_the_new_nyquist() -> None:
    # 11 kHz at 48 kHz would alias to 5 kHz at 16 kHz; the low-pass must remove it (< -60 dB)
    out = P.preprocess_audio(_tone(11000, 48000, 1.0, amp=1.0), 48000, G)
    assert np.sqrt(np.mean(out[500:-500] ** 2)) < 1e-3


def test_window_equals_slice_of_whole_resampled_signal() -> None:
    # start 0.7 s at 44.1 kHz = input sample 30870 = output sample 11200 exactly; the window must
    # see the same filter context as resampling the whole recording and slicing it
    x = np.stack([_tone(440, 44100, 3.0), _rng(10).uniform(-0.3, 0.3, 3 * 44100).astype(np.float32)], axis=1)
    whole = P.resample_audio(x, 44100, 16000)
    assert whole.shape == (48000,)
    window = P.preprocess_audio(x, 44100, G, start_seconds=0.7)
    np.testing.assert_allclose(window, whole[11200:27200], atol=1e-6)


def test_only_the_window_is_checked_for_nan() -> None:
    # a NaN far outside the window (and its filter context) does not touch the output; inside it does
    x = _tone(440, 48000, 5.0)
    x[4 * 48000] = np.nan
    assert np.isfinite(P.preprocess_audio(x, 48000, G, start_seconds=1.0)).all()
    with pytest.raises(InputError, match=f"NaN.*sample {4 * 48000}"):
        P.preprocess_audio(x, 48000, G, start_seconds=3.5)


def test_same_rate_is_an_exact_crop_and_pad() -> None:
    x = _rng(8).uniform(-1, 1, 24000).astype(np.float32)
    out = P.preprocess_audio(x, 16000, G, start_seconds=1.0)  # 8000 samples left, then zeros
    np.testing.assert_array_equal(out[:8000], x[16000:])
    assert not out[8000:].any()


def test_short_audio_is_zero_padded_exactly() -> None:
    x = _tone(440, 44100, 0.25)
    out = P.preprocess_audio(x, 44100, G)
    assert np.abs(out[:3900]).max() > 0.4
    assert not out[4000:].any()  # past the signal's end: exact zeros, no filter tail
    assert not P.preprocess_audio(x, 44100, G, start_seconds=3.0).any()


def test_resample_audio_length_and_int_positions() -> None:
    x = _rng(9).uniform(-0.5, 0.5, 8000).astype(np.float64)
    up = P.resample_audio(x, 8000, 16000)
    assert up.shape == (16000,)
    # upsampling by 2: the low-passed signal at even outputs stays close to the input samples for a
    # band-limited input (white noise is not; use a smooth signal instead)
    smooth = _tone(300, 8000, 1.0)
    np.testing.assert_allclose(P.resample_audio(smooth, 8000, 16000)[200:-200:2], smooth[100:-100], atol=1e-3)


@pytest.mark.parametrize(
    "samples, sr, match",
    [
        (np.zeros(100, np.int16), 16000, "float"),
        (np.zeros((10, 2, 2), np.float32), 16000, r"\(S,\) or \(S, C\)"),
        (np.zeros((10, 0), np.float32), 16000, r"\(S,\) or \(S, C\)"),
        (np.array([0.0, np.nan, 0.1], np.float32), 16000, "NaN.*sample 1"),
        (np.array([[0.0, 0.0], [0.0, np.inf]], np.float32), 16000, "Inf.*sample 1"),
        (np.zeros(100, np.float32), 0, "sample_rate"),
        (np.zeros(100, np.float32), 44100.0, "sample_rate"),
        ([0.0, 0.1], 16000, "float"),
    ],
)
def test_preprocess_audio_rejects_bad_input(samples, sr, match) -> None:
    with pytest.raises(InputError, match=match):
        P.preprocess_audio(samples, sr, G)


# ------------------------------------------------------------------------------ boxes


def test_scale_boxes_round_trip() -> None:
    boxes = np.array([[10, 20, 50, 60], [0, 0, 160, 96]], np.float32)
    big = P.scale_boxes(boxes, (160, 96), (640, 480))
    np.testing.assert_allclose(big, [[40, 100, 200, 300], [0, 0, 640, 480]])
    np.testing.assert_allclose(P.scale_boxes(big, (640, 480), (160, 96)), boxes)
    assert P.scale_boxes(np.zeros((0, 4)), (1, 1), (2, 2)).shape == (0, 4)


@pytest.mark.parametrize(
    "boxes, fwh", [(np.zeros((2, 3)), (1, 1)), (np.zeros((1, 4)), (0, 5)), (["a"], (1, 1))]
)
def test_scale_boxes_rejects_bad_input(boxes, fwh) -> None:
    with pytest.raises(InputError):
        P.scale_boxes(boxes, fwh, (10, 10))


def test_normalize_without_native_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    # the real fallback branch of normalize_image, as on a machine where the extension is not built
    monkeypatch.setattr(P, "_native", None)
    img = _rng(12).integers(0, 256, (25, 41, 3), dtype=np.uint8)
    out = np.empty((3, 25, 41), np.float32)
    assert P.normalize_image(img, MEAN, STD, out=out, bgr=True) is out
    np.testing.assert_array_equal(out, P.normalize_image_reference(img, MEAN, STD, bgr=True))
