"""The backend call on preprocessed tensors, and one full Perception.infer on raw arrays."""

from __future__ import annotations

import numpy as np
import pytest

from fusionedge.sdk import Perception
from fusionedge.sdk.backends import available_backends


@pytest.fixture(scope="module", params=available_backends())
def perception(request, bench_bundle):
    with Perception.load(bench_bundle, backends=[request.param]) as p:
        yield p


@pytest.mark.parametrize("batch", [1, 8])
def test_backend_infer(benchmark, perception, batch):
    """backend.infer on a batch of preprocessed tensors (inputs checked, as on every call)."""
    g = perception.geometry
    rng = np.random.default_rng(0)
    feeds = {
        "video": rng.normal(size=(batch, g.clip_frames, 3, g.height, g.width)).astype(np.float32),
        "audio": rng.uniform(-0.3, 0.3, (batch, g.audio_samples)).astype(np.float32),
        "presence": np.ones((batch, 2), np.float32),
    }
    out = benchmark(perception.backend.infer, feeds)
    assert out["event_logits"].shape == (batch, len(perception.labels["events"]))


def test_perception_infer_arrays(benchmark, perception):
    """Perception.infer on raw 1280x720 frames and 48 kHz stereo: preprocess + infer + postprocess."""
    g = perception.geometry
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (12, 720, 1280, 3), dtype=np.uint8)
    audio = rng.uniform(-0.3, 0.3, (int(48000 * g.clip_seconds), 2)).astype(np.float32)
    r = benchmark(perception.infer, video=frames, audio=audio, sample_rate=48000)
    assert r.backend == perception.backend_name
