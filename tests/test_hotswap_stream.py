"""Hot swap under a running stream: a committed update replaces the model between two steps of the
streaming pipeline — no frame dropped or failed, every result names the model that produced it."""

from __future__ import annotations

import dataclasses

import pytest
from _toy_model import TOY_GEOMETRY, make_toy, shared_toy_bundle
from fusionedge.sdk.errors import UpdateError
from fusionedge.sdk.fleet.hotswap import HotSwapPerception
from fusionedge.sdk.streaming import CallbackSink, Pipeline, PipelineConfig
from test_streaming_pipeline import write_clip

FAST = {"onnxruntime": {"intra_op_threads": 1}}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    from fusionedge.export import export_model

    v1 = shared_toy_bundle(tmp_path_factory)
    root = tmp_path_factory.mktemp("hotswap")
    model, info = make_toy(seed=1)
    v2 = export_model(model, info, root / "v2", version="2.0.0", progress=False)
    other = dataclasses.replace(TOY_GEOMETRY, height=48)
    model, info = make_toy(seed=2, geometry=other)
    wrong = export_model(model, info, root / "wrong", version="3.0.0", progress=False)
    return v1, v2, wrong, write_clip(root, 3.0)


def test_swap_mid_stream_drops_nothing_and_every_result_names_its_model(bundles):
    v1, v2, _, (video, audio) = bundles
    results, swapped = [], []
    with HotSwapPerception.load(v1, backend_options=FAST) as live:
        first = live.model

        def on_result(r):
            results.append(r)
            if len(results) == 20:  # swap while the stream runs; it completes in the background
                swapped.append(live.swap_to(v2))

        pipe = Pipeline(live, video=str(video), audio=str(audio), sinks=[CallbackSink(on_result)],
                        config=PipelineConfig(policy="offline", realtime=False, queue_size=2))
        stats = pipe.run()
        new = swapped[0].result(timeout=30)
    assert stats["dropped"] == 0 and stats["results"] == stats["frames_captured"] == 60
    assert [r.index for r in results] == list(range(60))
    models = [r.result.model for r in results]
    assert new != first and new.endswith("@2.0.0")
    switch = models.index(new)  # the first result of the new model ...
    assert 20 <= switch < 60
    assert set(models[:switch]) == {first} and set(models[switch:]) == {new}  # ... and never back


def test_swap_to_a_bundle_with_another_geometry_is_refused_and_the_old_model_serves(bundles):
    v1, _, wrong, _ = bundles
    with HotSwapPerception.load(v1, backend_options=FAST) as live:
        before = live.model
        with pytest.raises(UpdateError, match="geometry"):
            live.swap_to(wrong).result(timeout=30)
        assert live.model == before
