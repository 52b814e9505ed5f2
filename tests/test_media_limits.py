"""Media decoding under hostile or huge input: only regular files are read, header values must be
sane, and memory stays bounded (a huge frame is downscaled as it is decoded, a long WAV is read by
window). Peak memory is measured in a fresh subprocess: the kernel's peak RSS (VmHWM) is reset
right before the call and read right after it (Linux)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
from _toy_model import shared_toy_bundle
from fusionedge.sdk.errors import MediaError
from fusionedge.sdk.media import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    WavFile,
    read_audio,
    read_audio_window,
    read_video,
)
from fusionedge.sdk.preprocess import preprocess_audio
from fusionedge.sdk.spec import InputGeometry

G = InputGeometry()


def _wav(path: Path, seconds: float, rate: int = 48000, channels: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels), w.setsampwidth(2), w.setframerate(rate)
        for s in range(0, n, rate):  # written a second at a time: the test itself stays small
            k = min(rate, n - s)
            w.writeframes(rng.integers(-20000, 20000, (k, channels), dtype=np.int16).astype("<i2").tobytes())
    return path


# ------------------------------------------------------------------------ only regular files


def _fifo_with_timeout(tmp_path: Path, fn, name: str):
    """Call ``fn(fifo)`` in a thread; a FIFO nobody writes blocks an ``open()`` forever."""
    fifo = tmp_path / name
    os.mkfifo(fifo)
    box: dict = {}

    def call() -> None:
        try:
            box["value"] = fn(fifo)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            box["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(5.0)
    if t.is_alive():  # unblock the reader so the thread ends, then fail
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(5.0)
        pytest.fail(f"{fn.__name__} on a FIFO blocked for 5 s")
    return box


def test_a_fifo_as_video_is_refused_at_once(tmp_path: Path) -> None:
    box = _fifo_with_timeout(tmp_path, read_video, "cam.mp4")
    assert isinstance(box.get("error"), MediaError) and "not a regular file" in str(box["error"])


def test_a_fifo_as_audio_is_refused_as_not_a_regular_file(tmp_path: Path) -> None:
    box = _fifo_with_timeout(tmp_path, read_audio, "mic.wav")
    assert isinstance(box.get("error"), MediaError), box
    assert "not a regular file" in str(box["error"]) and "no such file" not in str(box["error"])


@pytest.mark.parametrize("reader, name", [(read_video, "zero.mp4"), (read_audio, "zero.wav")])
def test_a_link_to_dev_zero_is_refused(tmp_path: Path, reader, name: str) -> None:
    link = tmp_path / name
    link.symlink_to("/dev/zero")
    with pytest.raises(MediaError, match="not a regular file"):
        reader(link)


def test_a_link_to_a_real_file_is_read(tmp_path: Path) -> None:
    real = _wav(tmp_path / "real.wav", 0.1, rate=8000, channels=1)
    link = tmp_path / "link.wav"
    link.symlink_to(real)
    assert read_audio(link)[0].shape == (800, 1)


# ------------------------------------------------------------------------ sane header values


def _riff(rate: int, channels: int = 1, bits: int = 16, data: bytes = b"\0" * 4000) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * bits // 8 & 0xFFFFFFFF,
                      channels * bits // 8, bits)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("rate", [4_294_967_295, 384_001, 999, 1])
def test_a_wav_claiming_an_absurd_sample_rate_is_refused(tmp_path: Path, rate: int) -> None:
    p = tmp_path / "odd.wav"
    p.write_bytes(_riff(rate))
    with pytest.raises(MediaError, match=r"sample rate"):
        read_audio(p)


def test_sample_rate_limits_are_inclusive(tmp_path: Path) -> None:
    for rate in (MIN_SAMPLE_RATE, MAX_SAMPLE_RATE):
        p = tmp_path / f"r{rate}.wav"
        p.write_bytes(_riff(rate))
        assert read_audio(p)[1] == rate


# ------------------------------------------------------------------------ windowed WAV reads


def test_wav_file_reads_only_the_requested_frames(tmp_path: Path) -> None:
    p = _wav(tmp_path / "a.wav", 3.0, rate=8000)
    whole, _ = read_audio(p)
    with WavFile(p) as w:
        assert (w.rate, w.channels, w.frames) == (8000, 2, 24000)
        np.testing.assert_array_equal(w.read(12345, 100), whole[12345:12445])
        assert w.read(23990, 100).shape == (10, 2)  # cut at the end
        assert w.read(30000, 10).shape == (0, 2)


@pytest.mark.parametrize("start", [0.0, 0.37, 2.5, 9.9])
def test_audio_window_preprocesses_exactly_like_the_whole_file(tmp_path: Path, start: float) -> None:
    p = _wav(tmp_path / "b.wav", 10.0, rate=44100, seed=3)
    whole, rate = read_audio(p)
    expected = preprocess_audio(whole, rate, G, start_seconds=start)
    clip = read_audio_window(p, start, G.clip_seconds, target_rate=G.sample_rate)
    assert clip.samples.shape[0] < 2 * G.clip_seconds * rate  # a window, not the file
    got = preprocess_audio(clip.samples, clip.rate, G, start_seconds=clip.start_seconds)
    np.testing.assert_array_equal(got, expected)


_PEAK = r"""
import json, re, sys
from fusionedge.sdk import Perception
import numpy as np

def rss(field):
    return int(re.search(field + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1))

kind, bundle, path = sys.argv[1:4]
with Perception.load(bundle, backend_options={"onnxruntime": {"intra_op_threads": 1}}) as p:
    p.infer(video=np.zeros((4, 32, 32, 3), np.uint8), audio=np.zeros(8000, np.float32), sample_rate=8000)
    open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from here
    before = rss("VmRSS")
    r = p.infer(**({"audio_path": path, "start_seconds": 30.0} if kind == "audio" else {"video_path": path}))
    peak = rss("VmHWM")
print(json.dumps({"mb": (peak - before) / 1024, "boxes": [[b.x2, b.y2] for b in r.boxes]}))
"""


def _peak_mb(kind: str, bundle: Path, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _PEAK, kind, str(bundle), str(path)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.mark.slow
def test_predicting_on_a_long_wav_reads_a_window_not_the_file(bundle: Path, tmp_path: Path) -> None:
    p = _wav(tmp_path / "long.wav", 300.0)  # 5 min, 48 kHz stereo 16-bit: 57.6 MB on disk
    grew = _peak_mb("audio", bundle, p)["mb"]
    assert grew < 40, f"peak memory grew by {grew:.0f} MB for a 1 s window of a 57.6 MB WAV"


@pytest.mark.slow
def test_predicting_on_huge_frames_downscales_them_as_they_are_decoded(bundle: Path, tmp_path: Path) -> None:
    p = tmp_path / "huge.avi"
    w, h = 4000, 3000  # 12 MP, 36 MB per frame; the toy model's 0.25 s window holds all 8 at 32 fps
    writer = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 32.0, (w, h))
    frame = np.zeros((h, w, 3), np.uint8)
    for i in range(8):
        frame[:, :] = (20 * i, 80, 160)
        writer.write(frame)
    writer.release()
    del frame
    res = _peak_mb("video", bundle, p)
    assert res["mb"] < 250, f"peak memory grew by {res['mb']:.0f} MB for eight 36 MB frames"
    for x2, y2 in res["boxes"]:  # boxes stay in the file's pixels
        assert x2 <= w + 1 and y2 <= h + 1


def test_read_video_downscales_large_frames_and_keeps_the_source_size(tmp_path: Path) -> None:
    p = tmp_path / "big.avi"
    writer = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 4.0, (2400, 1200))
    for i in range(4):
        writer.write(np.full((1200, 2400, 3), 40 * i, np.uint8))
    writer.release()
    clip = read_video(p, downscale_to=(160, 96))
    assert clip.frames.shape == (4, 96, 160, 3) and clip.source_size == (2400, 1200)
    assert abs(int(clip.frames[3].mean()) - 120) <= 2
    full = read_video(p)
    assert full.frames.shape == (4, 1200, 2400, 3) and full.source_size == (2400, 1200)
    small = tmp_path / "small.avi"
    writer = cv2.VideoWriter(str(small), cv2.VideoWriter_fourcc(*"MJPG"), 4.0, (64, 48))
    writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    assert read_video(small, downscale_to=(160, 96)).frames.shape == (1, 48, 64, 3)  # small: as decoded


# ------------------------------------------------------------------ annotated clip


def test_annotated_clip_replaces_the_output_whole_and_leaves_no_temp_file(tmp_path: Path) -> None:
    from fusionedge.sdk.annotate import write_annotated_clip
    from fusionedge.sdk.perception import Result

    src = tmp_path / "in.avi"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 64))
    for i in range(20):
        writer.write(np.full((64, 96, 3), 10 * i, np.uint8))
    writer.release()
    out = tmp_path / "out" / "a.mp4"
    out.parent.mkdir()
    out.write_bytes(b"an older file")
    result = Result(event="siren", scores={"siren": 0.9}, audio_tags={}, boxes=[], backend="b", model="m")
    assert write_annotated_clip(src, result, out, G) == out
    assert read_video(out).frames.shape[0] == 10  # the 1 s window at 10 fps, playable
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.mp4"]  # no temp file left beside it
    with pytest.raises(MediaError):
        write_annotated_clip(tmp_path / "missing.avi", result, out, G)
    assert read_video(out).frames.shape[0] == 10  # a failed run leaves the previous output whole


def test_a_window_too_large_to_hold_is_refused_without_downscale(tmp_path: Path, monkeypatch) -> None:
    from fusionedge.sdk import media

    p = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for _ in range(10):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    monkeypatch.setattr(media, "MAX_DECODED_BYTES", 5 * 64 * 48 * 3)  # room for five frames
    assert read_video(p, max_seconds=0.5).frames.shape[0] == 5
    with pytest.raises(MediaError, match="shorter window or pass downscale_to"):
        read_video(p)


def test_absurd_frame_rates_and_audio_rates_are_refused() -> None:
    from fusionedge.sdk import media
    from fusionedge.sdk.errors import InputError

    with pytest.raises(MediaError, match="frames per second"):
        media._fps_or_default(90000.0, Path("x.mp4"))
    with pytest.raises(InputError, match="sample_rate must be 1000 .. 384000 Hz"):
        preprocess_audio(np.zeros(100, np.float32), 4_294_967_295, G)
