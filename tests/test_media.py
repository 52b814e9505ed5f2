"""Media decoding: real files written here (mp4v, MJPG avi, PNG folders, WAV of every encoding)."""

from __future__ import annotations

import logging
import struct
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from fusionedge.sdk import media
from fusionedge.sdk.errors import InputError, MediaError
from fusionedge.sdk.media import VideoClip, read_audio, read_video
from fusionedge.sdk.preprocess import preprocess_audio, preprocess_video
from fusionedge.sdk.spec import InputGeometry

G = InputGeometry()


_BITS = 6  # frame index written as black/white bars, robust to lossy codecs


def _bar_slices(w: int) -> list[slice]:
    x0, bar = w // 2, (w - w // 2) // _BITS
    return [slice(x0 + b * bar + 1, x0 + (b + 1) * bar - 1) for b in range(_BITS)]


def _frame(i: int, h: int, w: int) -> np.ndarray:
    """RGB frame: left half pure red, right half the index i in binary as white/black bars."""
    f = np.zeros((h, w, 3), np.uint8)
    f[:, : w // 2] = (255, 0, 0)
    for b, sl in enumerate(_bar_slices(w)):
        if (i >> b) & 1:
            f[:, sl] = 255
    return f


def _write_video(path: Path, fourcc: str, fps: float, n: int, h: int = 48, w: int = 64) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"this OpenCV cannot write {fourcc}"
    for i in range(n):
        writer.write(cv2.cvtColor(_frame(i, h, w), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _frame_index(frame: np.ndarray) -> int:
    """Recover the index written by _frame from the (lossy) bars."""
    return sum(1 << b for b, sl in enumerate(_bar_slices(frame.shape[1])) if frame[:, sl].mean() > 128)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_video(tmp_path_factory.mktemp("v") / "clip.mp4", "mp4v", 10.0, 40)


@pytest.fixture(scope="module")
def avi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_video(tmp_path_factory.mktemp("v") / "clip.avi", "MJPG", 12.5, 40, h=36, w=50)


# ------------------------------------------------------------------------------------ video


def test_read_mp4_whole_file_is_rgb(mp4: Path) -> None:
    clip = read_video(mp4)
    assert isinstance(clip, VideoClip)
    assert clip.frames.shape == (40, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(10.0)
    assert clip.seconds == pytest.approx(4.0)
    red = clip.frames[:, :, :20].reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[1] < 40 and red[2] < 40  # R first: converted from OpenCV's BGR
    assert [_frame_index(f) for f in clip.frames] == list(range(40))


def test_read_mp4_window_reads_only_its_frames(mp4: Path) -> None:
    clip = read_video(mp4, max_seconds=1.0, start_seconds=2.0)  # frames 20..29
    assert clip.frames.shape[0] == 10
    assert [_frame_index(f) for f in clip.frames] == list(range(20, 30))
    # window past the end of a 4 s file is cut, not padded
    assert read_video(mp4, max_seconds=2.0, start_seconds=3.5).frames.shape[0] == 5


def test_window_then_preprocess_equals_whole_at_start(mp4: Path) -> None:
    whole = read_video(mp4)
    part = read_video(mp4, max_seconds=G.clip_seconds, start_seconds=1.25)
    np.testing.assert_array_equal(
        preprocess_video(part.frames, part.fps, G),
        preprocess_video(whole.frames, whole.fps, G, start_seconds=1.25),
    )


def test_read_avi_odd_rate(avi: Path) -> None:
    clip = read_video(avi)
    assert clip.fps == pytest.approx(12.5)
    assert clip.frames.shape[0] == 40 and clip.frames.shape[-1] == 3
    assert [_frame_index(f) for f in clip.frames] == list(range(40))
    # 1 s at 12.5 fps: frames 0..12 (t = 0 .. 0.96 s)
    assert read_video(avi, max_seconds=1.0).frames.shape[0] == 13


def test_read_image_folder(tmp_path: Path) -> None:
    for i in range(12):
        cv2.imwrite(str(tmp_path / f"f_{i:03d}.png"), cv2.cvtColor(_frame(i, 20, 30), cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("not an image")
    clip = read_video(tmp_path)
    assert clip.fps == media.DEFAULT_FPS
    # PNG is lossless: exact frames
    np.testing.assert_array_equal(clip.frames, np.stack([_frame(i, 20, 30) for i in range(12)]))
    part = read_video(tmp_path, max_seconds=0.1, start_seconds=0.2)  # 30 fps: frames 6, 7, 8
    np.testing.assert_array_equal(part.frames, np.stack([_frame(i, 20, 30) for i in (6, 7, 8)]))


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no images"):
        read_video(tmp_path)
    (tmp_path / "a.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(MediaError, match="a.png"):
        read_video(tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"nope\.mp4.*no such file"):
        read_video(tmp_path / "nope.mp4")


def test_not_a_video(tmp_path: Path) -> None:
    p = tmp_path / "text.mp4"
    p.write_text("hello, I am not a video\n" * 50)
    with pytest.raises(MediaError, match=r"text\.mp4.*cannot open"):
        read_video(p)


def test_truncated_mp4_raises(mp4: Path, tmp_path: Path) -> None:
    # OpenCV's mp4v writer puts the index (moov) at the end: half a file has no decodable frame
    data = mp4.read_bytes()
    p = tmp_path / "half.mp4"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match=r"half\.mp4"):
        read_video(p)


def test_truncated_avi_returns_the_frames_before_the_break(avi: Path, tmp_path: Path, caplog) -> None:
    data = avi.read_bytes()
    p = tmp_path / "half.avi"
    p.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="fusionedge.sdk.media"):
        clip = read_video(p)
    n = clip.frames.shape[0]
    assert 1 <= n < 40
    assert [_frame_index(f) for f in clip.frames] == list(range(n))
    assert "truncated" in caplog.text


def test_start_past_end_raises(mp4: Path) -> None:
    with pytest.raises(MediaError, match="no frame could be decoded"):
        read_video(mp4, start_seconds=10.0)


@pytest.mark.parametrize("kw", [{"max_seconds": 0.0}, {"max_seconds": -1.0}, {"start_seconds": -0.5}])
def test_bad_window_arguments(mp4: Path, kw: dict) -> None:
    with pytest.raises(InputError):
        read_video(mp4, **kw)


@pytest.mark.parametrize("value", [0.0, float("nan"), -5.0, None, float("inf")])
def test_missing_frame_rate_falls_back_to_default(value, caplog) -> None:
    # OpenCV's writers here always store a rate, so the fallback is exercised at its seam
    with caplog.at_level(logging.WARNING, logger="fusionedge.sdk.media"):
        assert media._fps_or_default(value, Path("x.mp4")) == media.DEFAULT_FPS
    assert "assuming 30 fps" in caplog.text
    assert media._fps_or_default(29.97, Path("x.mp4")) == 29.97


# ------------------------------------------------------------------------------------ audio


def _write_pcm(path: Path, ints: np.ndarray, width: int, rate: int) -> Path:
    """Write (S, C) integer samples with the stdlib wave module."""
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    elif width == 3:
        v = ints.astype("<i4").reshape(-1)
        raw = np.stack([v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF], axis=1).astype(np.uint8).tobytes()
    else:
        raw = ints.astype({2: "<i2", 4: "<i4"}[width]).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(ints.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return path


def _riff(fmt_chunk: bytes, data: bytes, extra_chunks: bytes = b"") -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + extra_chunks
    body += b"data" + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _fmt(tag: int, channels: int, rate: int, bits: int) -> bytes:
    align = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("channels, rate", [(1, 8000), (2, 44100), (6, 48000)])
def test_read_pcm_wav(tmp_path: Path, width: int, channels: int, rate: int) -> None:
    full = 2 ** (8 * width - 1)
    rng = np.random.default_rng(width * 10 + channels)
    ints = rng.integers(-full, full, size=(1000, channels))
    ints[0, 0], ints[1, 0] = -full, full - 1  # the extremes
    samples, sr = read_audio(_write_pcm(tmp_path / "a.wav", ints, width, rate))
    assert sr == rate and samples.shape == (1000, channels) and samples.dtype == np.float32
    np.testing.assert_allclose(samples, ints / full, atol=1e-7)  # int / 2**(bits-1)
    assert samples[0, 0] == -1.0 and samples.max() <= 1.0  # (2**31-1)/2**31 rounds to 1 in float32


def test_read_float32_wav_with_extra_chunk(tmp_path: Path) -> None:
    x = np.stack([np.linspace(-1, 1, 501), np.linspace(0.5, -0.5, 501)], axis=1).astype("<f4")
    x[3, 1] = 1.5  # out of range in a float file: clipped to 1
    p = tmp_path / "f.wav"
    list_chunk = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\0"  # odd size: padded to even
    p.write_bytes(_riff(_fmt(3, 2, 22050, 32), x.tobytes(), list_chunk))
    samples, sr = read_audio(p)
    assert sr == 22050 and samples.shape == (501, 2)
    expect = np.clip(x, -1, 1)
    np.testing.assert_array_equal(samples, expect)
    with pytest.raises(wave.Error):  # why the reader parses RIFF itself
        wave.open(str(p))


def test_read_float64_and_extensible_wav(tmp_path: Path) -> None:
    x = np.linspace(-0.9, 0.9, 300).reshape(-1, 3)
    p = tmp_path / "d.wav"
    p.write_bytes(_riff(_fmt(3, 3, 16000, 64), x.astype("<f8").tobytes()))
    np.testing.assert_allclose(read_audio(p)[0], x, atol=1e-7)
    # WAVE_FORMAT_EXTENSIBLE with a PCM sub-format GUID, 24-bit stereo
    ints = np.array([[-8388608, 8388607], [4194304, -1]])
    v = ints.astype("<i4").reshape(-1)
    raw = np.stack([v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF], axis=1).astype(np.uint8).tobytes()
    guid_pcm = struct.pack("<H", 1) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    ext = _fmt(0xFFFE, 2, 96000, 24) + struct.pack("<HHI", 22, 24, 3) + guid_pcm
    p2 = tmp_path / "ext.wav"
    p2.write_bytes(_riff(ext, raw))
    samples, sr = read_audio(p2)
    assert sr == 96000
    np.testing.assert_allclose(samples, ints / 8388608.0)


def test_wav_to_model_input(tmp_path: Path) -> None:
    # 48 kHz stereo 16-bit tone through read_audio + preprocess_audio: 1 kHz, amplitude 0.5 kept
    t = np.arange(48000 * 2) / 48000
    tone = np.round(0.5 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int64)
    samples, sr = read_audio(_write_pcm(tmp_path / "t.wav", np.stack([tone, tone], 1), 2, 48000))
    x = preprocess_audio(samples, sr, G)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    assert int(np.argmax(spec)) == 1000  # 1 Hz bins for 16000 samples at 16 kHz
    assert 4 * spec.max() / len(x) == pytest.approx(0.5, rel=0.01)


def test_truncated_wav_keeps_whole_frames(tmp_path: Path, caplog) -> None:
    ints = np.arange(-500, 500).reshape(-1, 2)
    data = _write_pcm(tmp_path / "a.wav", ints, 2, 8000).read_bytes()
    p = tmp_path / "cut.wav"
    p.write_bytes(data[: 44 + 403])  # 100 frames of 4 bytes and 3 stray bytes
    with caplog.at_level(logging.WARNING, logger="fusionedge.sdk.media"):
        samples, _ = read_audio(p)
    np.testing.assert_allclose(samples, ints[:100] / 32768)
    assert "truncated" in caplog.text


@pytest.mark.parametrize(
    "content, match",
    [
        (b"just some text, not audio\n" * 10, "not a WAV"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\0" * 100, "not a WAV"),
        (b"RIFF\x04\x00\x00\x00WAVE", "no fmt chunk"),
        (b"", "not a WAV"),
    ],
)
def test_not_audio(tmp_path: Path, content: bytes, match: str) -> None:
    p = tmp_path / "x.wav"
    p.write_bytes(content)
    with pytest.raises(MediaError, match=match):
        read_audio(p)


def test_mp4_renamed_wav(mp4: Path, tmp_path: Path) -> None:
    p = tmp_path / "video.wav"
    p.write_bytes(mp4.read_bytes())
    with pytest.raises(MediaError, match=r"video\.wav.*not a WAV"):
        read_audio(p)


def test_bad_wav_contents(tmp_path: Path) -> None:
    p = tmp_path / "a.wav"
    p.write_bytes(_riff(_fmt(1, 1, 8000, 16), b""))
    with pytest.raises(MediaError, match="no audio samples"):
        read_audio(p)
    p.write_bytes(_riff(_fmt(2, 1, 8000, 4), b"\0" * 100))  # MS ADPCM
    with pytest.raises(MediaError, match="unsupported WAV encoding"):
        read_audio(p)
    p.write_bytes(_riff(_fmt(3, 1, 8000, 32), np.array([0.0, np.nan], "<f4").tobytes()))
    with pytest.raises(MediaError, match="NaN"):
        read_audio(p)
    header_only = _riff(_fmt(1, 1, 8000, 16), b"")[:36]  # fmt chunk, then the file ends
    p.write_bytes(header_only)
    with pytest.raises(MediaError, match="no data chunk"):
        read_audio(p)
    with pytest.raises(MediaError, match="no such file"):
        read_audio(tmp_path / "missing.wav")
