"""Preprocessing and media decoding: what the device does before the model sees a clip."""

from __future__ import annotations

import numpy as np
import pytest

from fusionedge.benchmarks.stages import synthesize_clips
from fusionedge.sdk.media import read_audio, read_video
from fusionedge.sdk.preprocess import preprocess_audio, preprocess_video


@pytest.mark.parametrize("size", [(192, 320), (720, 1280)], ids=["320x192", "1280x720"])
def test_preprocess_video(benchmark, bench_geometry, size):
    """One clip window of uint8 RGB frames at 12 fps -> (T, 3, H, W) float32."""
    h, w = size
    frames = np.random.default_rng(0).integers(0, 256, (12, h, w, 3), dtype=np.uint8)
    out = benchmark(preprocess_video, frames, 12.0, bench_geometry)
    g = bench_geometry
    assert out.shape == (g.clip_frames, 3, g.height, g.width) and out.dtype == np.float32


@pytest.mark.parametrize("rate, channels", [(16000, 1), (44100, 2), (48000, 2)])
def test_preprocess_audio(benchmark, bench_geometry, rate, channels):
    """One second of audio at a sensor's rate -> the model's mono waveform (resampled when needed)."""
    samples = np.random.default_rng(1).uniform(-0.5, 0.5, (rate, channels)).astype(np.float32)
    out = benchmark(preprocess_audio, samples, rate, bench_geometry)
    assert out.shape == (bench_geometry.audio_samples,)


@pytest.fixture(scope="module")
def clip(bench_geometry, tmp_path_factory):
    return synthesize_clips(tmp_path_factory.mktemp("clips"), bench_geometry, count=1)[0]


def test_decode_video_mp4(benchmark, bench_geometry, clip):
    """Decode one clip window of a 320x192 mp4 (mp4v) with OpenCV."""
    out = benchmark(read_video, clip.video, max_seconds=bench_geometry.clip_seconds)
    assert out.frames.shape[1:] == (192, 320, 3)


def test_decode_audio_wav(benchmark, clip):
    """Read one second of 16-bit 16 kHz WAV."""
    samples, rate = benchmark(read_audio, clip.audio)
    assert rate == 16000 and samples.shape[1] == 1
