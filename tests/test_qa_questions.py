"""Scene questions from the generator's truth (training/synth/questions.py): answers correct by
construction on hand-checked scenes, answers balanced per subject, and the generator writing them."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
from fusionedge.sdk.datamanifest import Box, Sample, read_manifest
from fusionedge.training.synth.questions import (
    ANSWER_RATES,
    MAX_YES_NO_PER_CLIP,
    QUESTION_TYPES,
    YES_NO_TYPES,
    SceneTruth,
    make_questions,
    questions_for_sample,
    truth_from_sample,
)

# a hand-checked scene: two cars, no pedestrian, one green traffic light 14 px tall, an ambulance
# with its lights on at the left of the frame driving closer, a siren and an engine heard
SCENE = SceneTruth(counts={"car": 2, "traffic_light": 1, "emergency_vehicle": 1}, audio_tags=("siren", "engine"),
                   event="emergency_ahead", flashing_box=(10.0, 40.0, 60.0, 90.0), flashing_motion="approach",
                   traffic_lights=((14.0, "green"),), width=320)


def _expected(kind: str, text: str) -> str:
    if kind == "exist":
        if "flashing" in text or "lights" in text:
            return "yes"
        return "no" if "pedestrian" in text else "yes"
    if kind == "count":
        return {"cars": "2", "pedestrians": "0", "traffic lights": "1"}[next(
            w for w in ("traffic lights", "pedestrians", "cars") if w in text)]
    if kind == "hear":
        return "yes" if any(w in text for w in ("siren", "engine")) else "no"
    return {"light": "green", "side": "left", "motion": "approaching", "source": "ahead"}[kind]


def test_answers_are_correct_by_construction():
    seen = Counter()
    for seed in range(300):
        qs = make_questions(SCENE, np.random.default_rng(seed))
        assert 1 <= len(qs) <= 8
        assert sum(q.type in YES_NO_TYPES for q in qs) <= MAX_YES_NO_PER_CLIP == 1
        assert len({q.question for q in qs}) == len(qs)
        for q in qs:
            assert q.answer == _expected(q.type, q.question), q
            seen[q.type] += 1
    assert set(seen) == set(QUESTION_TYPES)  # every type is asked about a scene that has it all


def test_a_scene_without_road_gets_no_side_motion_or_light_question():
    empty = SceneTruth(counts={}, audio_tags=(), event="none", flashing_box=None, flashing_motion=None,
                       traffic_lights=(), width=320)
    kinds = {q.type for seed in range(100) for q in make_questions(empty, np.random.default_rng(seed))}
    assert not kinds & {"side", "motion", "light"}
    assert {"exist", "count", "hear", "source"} <= kinds


def test_answers_balanced_within_each_subject():
    """Scenes drawn with the generator's answer rates give near-uniform answers per question subject."""
    rng = np.random.default_rng(0)
    per_subject: dict[str, Counter] = defaultdict(Counter)
    for _ in range(2000):
        def draw(kind, subject):
            rates = ANSWER_RATES[(kind, subject)]
            return rng.choice(list(rates), p=np.array(list(rates.values())) / sum(rates.values()))
        counts = {o: int(draw("count", o)) for o in ("car", "pedestrian", "traffic_light")}
        counts["emergency_vehicle"] = int(draw("exist", "emergency_vehicle") == "yes")
        tags = tuple(t for t in ("siren", "horn", "speech", "engine") if draw("hear", t) == "yes")
        truth = SceneTruth(counts=counts, audio_tags=tags, event="emergency_ahead" if "siren" in tags else "none",
                           flashing_box=None, flashing_motion=None, traffic_lights=(), width=320)
        for q in make_questions(truth, rng, types=("count", "hear")):
            subject = next(w for w in ("traffic light", "pedestrian", "car", "siren", "horn", "engine", "speech",
                                       "talking", "speaking", "voice", "honk")
                           if w in q.question)
            per_subject[q.type + ":" + subject][q.answer] += 1
    for key in ("count:car", "count:pedestrian", "hear:siren", "hear:horn", "hear:engine"):
        c = per_subject[key]
        assert min(c.values()) / max(c.values()) > 0.7, (key, c)


def test_truth_from_a_generated_sample(tmp_path):
    synth = {"lights_on_ev_box": [200, 50, 260, 100], "ev_motion": "recede",
             "traffic_lights": [{"box": [5, 5, 9, 25], "state": "red"}]}
    s = Sample("a", tmp_path / "a.mp4", None, "lights_no_siren", ("horn",),
               (Box("car", 1, 1, 20, 20), Box("traffic_light", 5, 5, 9, 25)), 320, 192, {"synth": synth})
    t = truth_from_sample(s)
    assert t is not None and t.counts == {"car": 1, "traffic_light": 1}
    assert t.traffic_lights == ((20.0, "red"),) and t.flashing_motion == "recede"
    assert truth_from_sample(Sample("b", tmp_path / "b.mp4", None, "none")) is None  # a user's own clip
    assert questions_for_sample(Sample("b", tmp_path / "b.mp4", None, "none"), np.random.default_rng(0)) == ()


@pytest.mark.slow
def test_generated_data_set_carries_questions(tmp_path):
    from fusionedge.training.synth import generate_dataset

    manifest = generate_dataset(tmp_path / "d", samples=3, seed=3, workers=1, progress=False)
    samples = read_manifest(manifest)
    assert all(1 <= len(s.questions) <= 8 for s in samples)
    # `data questions` draws them again from each clip's own stream: the same rules, the same questions
    from fusionedge.cli.main import main

    assert main(["data", "questions", str(manifest), "--out", str(tmp_path / "d" / "again.jsonl"), "--json"]) == 0
    assert [s.questions for s in read_manifest(tmp_path / "d" / "again.jsonl")] == [s.questions for s in samples]
    for s in samples:  # every answer agrees with the sample's own labels
        tl = s.meta["synth"]["traffic_lights"]
        assert len(tl) == sum(b.label == "traffic_light" for b in s.boxes)
        for q in s.questions:
            if q.type == "hear":
                tag = next(t for t in ("siren", "horn", "engine") if t in q.question) if any(
                    t in q.question for t in ("siren", "horn", "engine")) else None
                if tag:
                    assert (q.answer == "yes") == (tag in s.audio_tags)
            if q.type == "source":
                assert q.answer == {"emergency_ahead": "ahead", "emergency_behind": "behind"}.get(s.event, "none")


def test_measured_draw_rates_balance_a_subject_that_a_clip_without_road_is_asked_more_often():
    """A clip that supports fewer question types draws more "is there a car?" before it has enough
    questions; balanced with the scenes' own rates, "no" then wins; with the rates the draws meet, not."""
    from fusionedge.training.synth.questions import measure_answer_rates

    road = SceneTruth(counts={"car": 2, "emergency_vehicle": 1, "traffic_light": 1}, audio_tags=("siren",),
                      event="emergency_ahead", flashing_box=(10.0, 40.0, 60.0, 90.0), flashing_motion="approach",
                      traffic_lights=((14.0, "green"),), width=320)
    empty = SceneTruth(counts={}, audio_tags=(), event="none", flashing_box=None, flashing_motion=None,
                       traffic_lights=(), width=320)
    truths = [road, empty] * 200  # the scenes: a car in half of them
    types = ("exist", "count", "side", "motion", "light")  # a clip without road supports two of them

    def kept(rates) -> float:
        c = Counter()
        for seed in (7, 8):
            for i, t in enumerate(truths):
                for q in make_questions(t, np.random.default_rng([seed, i]), rates=rates, types=types):
                    if q.type == "exist" and "car" in q.question:
                        c[q.answer] += 1
        return c["no"] / c["yes"]

    scene_rates = {k: dict(v) for k, v in ANSWER_RATES.items()}
    scene_rates[("exist", "car")] = {"yes": 0.5, "no": 0.5}
    before = kept(scene_rates)
    measured = measure_answer_rates(truths, seed=3, rounds=8, types=types)
    after = kept(measured)
    assert before > 1.3 and measured[("exist", "car")]["no"] > 0.55, (before, measured[("exist", "car")])
    assert abs(after - 1.0) < 0.35 * (before - 1.0), (before, after)


def test_an_object_too_small_to_see_is_not_asked_about():
    """A 320 x 192 frame does not resolve a car a few pixels tall: no "is there a car?" and no "how
    many cars?" while any car is under MIN_SEEN_PX; the pedestrians, all large enough, are asked."""
    from dataclasses import replace

    from fusionedge.training.synth.questions import MIN_SEEN_PX

    small = replace(SCENE, counts={"car": 2, "pedestrian": 1}, smallest={"car": MIN_SEEN_PX - 1.0,
                                                                         "pedestrian": MIN_SEEN_PX})
    asked = [q for seed in range(200) for q in make_questions(small, np.random.default_rng(seed))
             if q.type in ("exist", "count")]
    assert not [q for q in asked if " car" in q.question], asked
    assert any("pedestrian" in q.question for q in asked)
    big = replace(small, smallest={"car": float(MIN_SEEN_PX), "pedestrian": float(MIN_SEEN_PX)})
    assert any(" car" in q.question for seed in range(200) for q in make_questions(big, np.random.default_rng(seed))
               if q.type in ("exist", "count"))


def test_truth_keeps_the_smallest_box_per_label(tmp_path):
    s = Sample("a", tmp_path / "a.mp4", None, "none", (), (Box("car", 1, 1, 20, 31), Box("car", 40, 50, 60, 58)),
               320, 192, {"synth": {"traffic_lights": []}})
    t = truth_from_sample(s)
    assert t is not None and t.smallest == {"car": 8.0}


def test_redrawing_keeps_a_users_questions_and_refuses_a_generated_clip_without_its_stream(tmp_path):
    from fusionedge.sdk.datamanifest import Question
    from fusionedge.sdk.errors import DataError
    from fusionedge.training.synth.questions import redraw_questions

    own = Sample("own", tmp_path / "a.mp4", None, "none", questions=(Question("is it raining?", "no", "weather"),))
    synth = {"seed": 4, "index": 9, "traffic_lights": []}
    gen = Sample("gen", tmp_path / "b.mp4", None, "none", ("siren",), (), 320, 192, {"synth": synth})
    out, n = redraw_questions([own, gen])
    assert n == 1 and out[0] == own and out[1].questions
    assert out[1].questions == redraw_questions([gen])[0][0].questions  # the clip's own stream: the same draw
    more = redraw_questions([gen], draws=4)[0][0].questions  # further draws join the first, each text once
    assert more[:len(out[1].questions)] == out[1].questions and len(more) > len(out[1].questions)
    assert len({q.question for q in more}) == len(more)
    from fusionedge.sdk.errors import InputError

    with pytest.raises(InputError, match="draws"):
        redraw_questions([gen], draws=0)
    broken = Sample("gen", tmp_path / "b.mp4", None, "none", (), (), 320, 192, {"synth": {"traffic_lights": []}})
    with pytest.raises(DataError, match="'seed' and 'index'"):
        redraw_questions([broken])
