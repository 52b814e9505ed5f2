"""Windowed reads of long recordings: one second out of ten minutes, against reading the whole file.

A device that answers "what happened at 5:00?" should pay for one second of sound, not ten minutes.
Each window benchmark opens the file, seeks and reads a 1 s window (with the resampler's context) at
5:00 of a 10-minute recording, the way ``Perception.infer(audio_path=..., start_seconds=300)`` does:
a 48 kHz mono WAV through the built-in reader and through soundfile, and the AAC track of an mp4
through PyAV. The whole-file reads of the same files are the old way, for comparison. Needs
``fusionedge[media]`` and ffmpeg on PATH (the mp4 is made with it; about 20 s, once per run).
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
from fusionedge.sdk.audio_file import SoundFileAudio, read_audio, read_audio_window
from fusionedge.sdk.media import read_video

pytest.importorskip("av", reason="needs fusionedge[media]")
pytest.importorskip("soundfile", reason="needs fusionedge[media]")

MINUTES = 10
RATE = 48000
START = 300.0  # seconds into the recording
TARGET_RATE = 16000


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> dict[str, Path]:
    """A 10-minute 48 kHz mono WAV (57.6 MB) and a 10-minute mp4 (64x48 H.264 at 10 fps + AAC) of it."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg on PATH")
    d = tmp_path_factory.mktemp("long")
    wav = d / "long.wav"
    rng = np.random.default_rng(0)
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE)
        for _ in range(MINUTES * 60):  # a second at a time
            w.writeframes(rng.integers(-8000, 8000, RATE, dtype=np.int16).astype("<i2").tobytes())
    mp4 = d / "long.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=64x48:rate=10:duration={MINUTES * 60}", "-i", str(wav), "-c:v", "libx264",
                    "-preset", "ultrafast", "-c:a", "aac", "-b:a", "96k", "-shortest", str(mp4)],
                   check=True, timeout=600)
    return {"wav": wav, "mp4": mp4}


def test_window_wav_builtin(benchmark, recording):
    """1 s at 5:00 of the 10-minute WAV, built-in reader (open, seek, read)."""
    clip = benchmark(read_audio_window, recording["wav"], START, 1.0, target_rate=TARGET_RATE)
    assert clip.rate == RATE and RATE <= clip.samples.shape[0] < 1.1 * RATE


def _soundfile_window(path: Path) -> np.ndarray:
    with SoundFileAudio(path) as f:
        return f.read(int(START * RATE), RATE)


def test_window_wav_soundfile(benchmark, recording):
    """1 s at 5:00 of the 10-minute WAV through soundfile (open, seek, read)."""
    assert benchmark(_soundfile_window, recording["wav"]).shape == (RATE, 1)


def test_window_mp4_audio(benchmark, recording):
    """1 s at 5:00 of the 10-minute mp4's AAC track through PyAV (open, seek, pre-roll, decode)."""
    clip = benchmark(read_audio_window, recording["mp4"], START, 1.0, target_rate=TARGET_RATE)
    assert clip.rate == RATE and RATE <= clip.samples.shape[0] < 1.1 * RATE


def test_window_mp4_video(benchmark, recording):
    """1 s of frames at 5:00 of the 10-minute mp4 through PyAV (open, seek to the key frame, decode on)."""
    clip = benchmark.pedantic(read_video, (recording["mp4"],), {"start_seconds": START, "max_seconds": 1.0},
                              rounds=5)
    assert clip.frames.shape[0] == 10


def test_whole_wav(benchmark, recording):
    """The old way: read all 10 minutes of the WAV."""
    samples, _ = benchmark.pedantic(read_audio, (recording["wav"],), rounds=3)
    assert samples.shape == (MINUTES * 60 * RATE, 1)


def test_whole_mp4_audio(benchmark, recording):
    """The old way for an mp4's sound: decode the whole 10-minute AAC track."""
    samples, _ = benchmark.pedantic(read_audio, (recording["mp4"],), rounds=1)
    assert samples.shape[0] >= MINUTES * 60 * RATE
