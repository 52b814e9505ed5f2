"""Post-processing: turning the model's heads into events, tags and boxes."""

from __future__ import annotations

import numpy as np
import pytest

from fusionedge.sdk.postprocess import decode_centernet, sigmoid, softmax
from fusionedge.sdk.spec import OBJECTS


@pytest.fixture(scope="module")
def heads(bench_geometry):
    h, w = bench_geometry.heatmap_size
    rng = np.random.default_rng(0)
    heatmap = rng.normal(-4.0, 1.5, (len(OBJECTS), h, w)).astype(np.float32)  # mostly background
    size = rng.uniform(4, 40, (2, h, w)).astype(np.float32)
    offset = rng.uniform(0, 1, (2, h, w)).astype(np.float32)
    return heatmap, size, offset


@pytest.mark.parametrize("threshold, top_k", [(0.3, 50), (0.05, 100)], ids=["runtime", "evaluation"])
def test_decode_centernet(benchmark, bench_geometry, heads, threshold, top_k):
    """CenterNet peaks -> boxes in 1280x720 frame pixels (runtime and evaluation thresholds)."""
    g = bench_geometry
    boxes = benchmark(
        decode_centernet,
        *heads,
        stride=g.output_stride,
        labels=OBJECTS,
        score_threshold=threshold,
        top_k=top_k,
        out_wh=(1280, 720),
        in_wh=(g.width, g.height),
    )
    assert len(boxes) <= top_k


def test_event_and_tag_scores(benchmark):
    """Softmax over events and sigmoid over audio tags, for a batch of 8."""
    logits = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)

    def scores():
        return softmax(logits.astype(np.float64)), sigmoid(logits.astype(np.float64))

    events, tags = benchmark(scores)
    assert np.allclose(events.sum(axis=1), 1.0) and ((tags > 0) & (tags < 1)).all()
