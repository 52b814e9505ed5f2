"""Modality attribution on the toy bundle: the batched withheld rows, the contribution rule, the result
field, ``predict --attribution --json`` and the streaming event log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _toy_model import TOY_GEOMETRY, shared_toy_bundle
from fusionedge.cli.main import main
from fusionedge.sdk import Perception
from fusionedge.sdk.attribution import attribute, decision_margin, infer_withheld, log_odds, withheld_inputs
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.postprocess import softmax
from fusionedge.sdk.spec import EVENTS
from fusionedge.sdk.streaming import JsonlEventSink, Pipeline, PipelineConfig
from test_streaming_pipeline import FPS, write_clip

LABELS = {"events": EVENTS, "audio_tags": ("siren", "horn", "speech", "engine")}


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    return write_clip(tmp_path_factory.mktemp("attr"), 1.0, seed=3)


def _inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = TOY_GEOMETRY
    rng = np.random.default_rng(seed)
    video = rng.normal(size=(g.clip_frames, 3, g.height, g.width)).astype(np.float32)
    audio = (0.3 * rng.uniform(-1, 1, g.audio_samples)).astype(np.float32)
    return video, audio, np.ones(2, np.float32)


def test_withheld_rows_zero_one_modality_each_and_only_when_both_are_present():
    video, audio, presence = _inputs()
    v, a, p, rows = withheld_inputs(video, audio, presence)
    assert rows == (None, "video", "audio")
    assert np.array_equal(v[0], video) and np.array_equal(a[0], audio)
    assert not v[1].any() and np.array_equal(a[1], audio) and p[1].tolist() == [0.0, 1.0]
    assert np.array_equal(v[2], video) and not a[2].any() and p[2].tolist() == [1.0, 0.0]
    *_, rows = withheld_inputs(video, audio, np.array([1.0, 0.0]))
    assert rows == (None,)
    with pytest.raises(InputError, match="presence"):
        withheld_inputs(video, audio, np.ones(3))


def test_contribution_is_the_normalised_fall_of_the_margin_over_the_background_event():
    # decided: emergency_behind (index 2). Without video its margin over "none" is unchanged; without
    # audio it falls by 6: the decision is all heard.
    logits = np.array([[0.0, 1.0, 6.0, -1.0],   # full
                       [-4.0, 2.0, 2.0, -3.0],  # video withheld: margin 6 again
                       [2.0, -1.0, 2.0, -2.0]])  # audio withheld: margin 0
    out = {"event_logits": logits, "audio_tag_logits": np.zeros((3, 4))}
    a = attribute(out, (None, "video", "audio"), LABELS, np.ones(2))
    assert a.event == "emergency_behind" and a.dominant == "audio"
    assert a.margin_drop == pytest.approx({"video": 0.0, "audio": 6.0})
    assert a.contribution == pytest.approx({"video": 0.0, "audio": 1.0})
    p = softmax(logits)
    assert a.drop["audio"] == pytest.approx(p[0, 2] - p[2, 2])
    assert a.scores_without["audio"]["none"] == pytest.approx(p[2, 0])
    assert a.audio_tags_without_video == pytest.approx(dict.fromkeys(LABELS["audio_tags"], 0.5))
    # the background itself is scored by its log-odds; nothing lost -> an even split
    same = {"event_logits": np.tile([[3.0, 0.0, 0.0, 0.0]], (3, 1)), "audio_tag_logits": np.zeros((3, 4))}
    b = attribute(same, (None, "video", "audio"), LABELS, np.ones(2))
    assert b.event == "none" and b.contribution == {"video": 0.5, "audio": 0.5}
    # one modality present: it carries the whole decision
    one = attribute({"event_logits": logits[:1], "audio_tag_logits": np.zeros((1, 4))}, (None,), LABELS,
                    np.array([0.0, 1.0]))
    assert one.contribution == {"video": 0.0, "audio": 1.0} and one.scores_without == {}


def test_a_model_without_an_event_head_has_no_attribution_and_one_without_tags_no_tag_scores():
    logits = np.array([[0.0, 3.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    rows = (None, "video", "audio")
    assert attribute({"audio_tag_logits": np.zeros((3, 4))}, rows, LABELS, np.ones(2)) is None
    a = attribute({"event_logits": logits}, rows, LABELS, np.ones(2))
    assert a.audio_tags_without_video == {} and a.contribution == pytest.approx({"video": 2 / 3, "audio": 1 / 3})


def test_margin_and_log_odds_from_logits():
    z = np.array([[2.0, 0.5, -1.0, 0.0]])
    p = softmax(z)[0]
    assert log_odds(z, 0)[0] == pytest.approx(np.log(p[0] / (1 - p[0])))
    assert decision_margin(z, 1, EVENTS)[0] == pytest.approx(0.5 - 2.0)
    assert decision_margin(z, 1, ("a", "b", "c", "d"))[0] == pytest.approx(log_odds(z, 1)[0])
    assert np.isfinite(log_odds(np.array([[800.0, -800.0]]), 0)).all()


def test_perception_attributes_each_result_from_one_batched_call(bundle_dir, clip):
    video, audio = clip
    with Perception.load(bundle_dir) as plain, Perception.load(bundle_dir, attribution=True) as p:
        base = plain.infer(video_path=video, audio_path=audio)
        r = p.infer(video_path=video, audio_path=audio)
        assert base.attribution is None and base.to_dict()["attribution"] is None
        # the full row of the batch is the ordinary result
        assert r.scores == pytest.approx(base.scores, abs=1e-5) and r.event == base.event
        a = r.attribution
        assert a is not None and a.event == r.event
        assert sum(a.contribution.values()) == pytest.approx(1.0)
        # recomputed by hand: the clip with each modality withheld, through the same backend
        v, au, pr, _ = withheld_inputs(*_preprocessed(p, video, audio))
        logits = p.infer_batch(v, au, pr)["event_logits"].astype(np.float64)
        decided = EVENTS.index(r.event)
        m = decision_margin(logits, decided, EVENTS)
        want = {"video": max(0.0, m[0] - m[1]), "audio": max(0.0, m[0] - m[2])}
        assert a.margin_drop == pytest.approx(want, abs=1e-4)
        assert r.to_dict()["attribution"]["contribution"] == pytest.approx(a.contribution, abs=1e-6)
        vision = p.infer(video_path=video)
        assert vision.attribution.contribution == {"video": 1.0, "audio": 0.0}


def _preprocessed(p: Perception, video: Path, audio: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from fusionedge.sdk.media import read_audio, read_video
    from fusionedge.sdk.preprocess import preprocess_audio, preprocess_video

    clip = read_video(video, max_seconds=p.geometry.clip_seconds)
    samples, rate = read_audio(audio)
    return (preprocess_video(clip.frames, clip.fps, p.geometry), preprocess_audio(samples, rate, p.geometry),
            np.ones(2, np.float32))


def test_infer_withheld_splits_rows_by_the_backends_batch_limit(bundle_dir):
    video, audio, presence = _inputs(1)
    import dataclasses

    class OneAtATime:  # the real backend, declared with a batch limit of 1
        def __init__(self, backend):
            self.backend, self.io, self.batches = backend, dataclasses.replace(backend.io, batch_max=1), []

        def infer(self, feeds):
            self.batches.append(len(feeds["video"]))
            return self.backend.infer(feeds)

    with Perception.load(bundle_dir) as p:
        whole = OneAtATime(p.backend)
        whole.io = p.backend.io
        out, rows = infer_withheld(whole, video, audio, presence)
        single = OneAtATime(p.backend)
        split, _ = infer_withheld(single, video, audio, presence)
    assert rows == (None, "video", "audio") and whole.batches == [3] and single.batches == [1, 1, 1]
    assert np.allclose(out["event_logits"], split["event_logits"], atol=1e-5)


def test_predict_json_and_the_stream_event_log_carry_the_attribution(bundle_dir, clip, capsys, tmp_path):
    video, audio = clip
    assert main(["predict", "--bundle", str(bundle_dir), "--video", str(video), "--audio", str(audio),
                 "--attribution", "--json", "--out", str(tmp_path / "a.mp4")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert sum(r["attribution"]["contribution"].values()) == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "a.mp4").stat().st_size > 0
    assert main(["predict", "--bundle", str(bundle_dir), "--video", str(video), "--attribution"]) == 0
    assert "decided by: seen 100%, heard 0%" in capsys.readouterr().out
    logs = {}
    with Perception.load(bundle_dir, attribution=True) as p:
        for interval in (0.0, 0.25):
            logs[interval] = tmp_path / f"events-{interval}.jsonl"
            Pipeline(p, video=str(video), audio=str(audio), sinks=[JsonlEventSink(logs[interval])],
                     config=PipelineConfig(policy="offline", realtime=False, attribution_interval=interval)).run()
    every, spaced = ([x for x in map(json.loads, logs[i].read_text().splitlines()) if x["type"] == "result"]
                     for i in (0.0, 0.25))
    assert len(every) == len(spaced) == int(FPS)
    assert all(sum(x["attribution"]["contribution"].values()) == pytest.approx(1.0, abs=1e-5) for x in every)
    assert all(x["attribution"]["event"] == x["event"] and x["attribution"]["step"] == x["index"] for x in every)
    # 0.25 s apart at 20 fps: about every 5th step is attributed, the results between carry the latest one
    steps = sorted({x["attribution"]["step"] for x in spaced})
    assert 4 <= len(steps) <= len(spaced) // 2
    for x in spaced:
        step = x["attribution"]["step"]
        assert step <= x["index"] and x["attribution"] == every[step]["attribution"]


def test_a_stream_attributes_again_at_once_when_a_sensor_comes_or_goes(bundle_dir, clip, tmp_path):
    import wave

    video, audio = clip
    short = tmp_path / "short.wav"  # sound for the first half of the video only
    with wave.open(str(audio)) as f:
        rate, pcm = f.getframerate(), f.readframes(f.getframerate() // 2)
    with wave.open(str(short), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(rate)
        f.writeframes(pcm)
    events = tmp_path / "events.jsonl"
    with Perception.load(bundle_dir, attribution=True) as p:
        Pipeline(p, video=str(video), audio=str(short), sinks=[JsonlEventSink(events)],
                 config=PipelineConfig(policy="offline", realtime=False, attribution_interval=10.0)).run()
    results = [x for x in map(json.loads, events.read_text().splitlines()) if x["type"] == "result"]
    assert {tuple(x["missing"]) for x in results} >= {(), ("audio",)}  # the sound came and went
    for x in results:  # a carried attribution is always of the same sensors as the result
        assert (x["attribution"]["contribution"] == {"video": 1.0, "audio": 0.0}) == ("audio" in x["missing"])
        assert bool(x["attribution"]["scores_without"]) == (not x["missing"])


def test_annotated_frame_draws_the_seen_heard_bar():
    import dataclasses

    import cv2
    from fusionedge.sdk.annotate import attribution_line, draw_result
    from fusionedge.sdk.attribution import Attribution
    from fusionedge.sdk.perception import Result

    a = Attribution("emergency_behind", {"video": 0.25, "audio": 0.75}, {"video": 1.0, "audio": 3.0},
                    {"video": 0.1, "audio": 0.6}, {}, {})
    r = Result("emergency_behind", dict.fromkeys(EVENTS, 0.25), {}, [], "onnxruntime", "toy@1")
    frame = np.full((360, 640, 3), 90, np.uint8)
    plain, drawn = draw_result(frame, r), draw_result(frame, dataclasses.replace(r, attribution=a))
    assert attribution_line(a.contribution) == "seen 25% | heard 75%"
    diff = np.abs(drawn.astype(int) - plain.astype(int)).sum(axis=2) > 0
    assert diff.any()
    # the bar is three parts heard (blue) to one part seen (orange)
    hsv = cv2.cvtColor(drawn, cv2.COLOR_BGR2HSV)
    orange = (hsv[..., 0] > 10) & (hsv[..., 0] < 25) & (hsv[..., 1] > 200)
    blue = (hsv[..., 0] > 95) & (hsv[..., 0] < 110) & (hsv[..., 1] > 150)
    assert 2.0 < blue.sum() / max(orange.sum(), 1) < 4.0
