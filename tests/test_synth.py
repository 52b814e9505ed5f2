"""Tests of the synthetic data-set generator (training/synth): rules, media, labels, determinism, writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import wave
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from fusionedge.sdk.datamanifest import read_manifest
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS
from fusionedge.training.synth import (
    DatasetExistsError,
    SynthConfig,
    audio_tags_for,
    cues_for_event,
    event_from_cues,
    event_probabilities,
    generate_dataset,
    make_sample,
    sample_flags,
)

SEED = 3
N = 16
SIREN_EVENTS = {"emergency_ahead", "emergency_behind"}
LIGHTS_EVENTS = {"emergency_ahead", "lights_no_siren"}


def _frames(path: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.array(out)


def _wav(path: Path) -> tuple[int, int, int, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), pcm


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth") / "ds", N, SEED, workers=2, progress=False)


# --- rules -----------------------------------------------------------------------------------------


def test_rule_table_and_inverse():
    assert event_from_cues(False, False) == "none"
    assert event_from_cues(True, True) == "emergency_ahead"
    assert event_from_cues(True, False) == "emergency_behind"
    assert event_from_cues(False, True) == "lights_no_siren"
    for e in EVENTS:
        assert event_from_cues(*cues_for_event(e)) == e
    with pytest.raises(ValueError, match="siren_ahead"):
        cues_for_event("siren_ahead")


def _bayes_accuracy(features: list[tuple], events: list[str], fit: slice, test: slice) -> float:
    """Accuracy on `test` of the majority-event predictor per feature value, fitted on `fit`."""
    table: dict[tuple, Counter] = defaultdict(Counter)
    for f, e in zip(features[fit], events[fit]):
        table[f][e] += 1
    overall = Counter(events[fit]).most_common(1)[0][0]
    guess = [table[f].most_common(1)[0][0] if f in table else overall for f in features[test]]
    hits = [g == e for g, e in zip(guess, events[test])]
    return float(np.mean(hits))


def test_fusion_is_necessary():
    flags = [sample_flags(np.random.default_rng([11, i])) for i in range(2000)]
    events = [f.event for f in flags]
    counts = Counter(events)
    assert set(counts) == set(EVENTS)
    assert all(abs(c / len(flags) - 0.25) < 0.04 for c in counts.values()), counts
    every = slice(None)
    fit, test = slice(0, 1000), slice(1000, 2000)  # held out: many feature values would overfit in-sample
    audio_cue = [(f.siren,) for f in flags]
    vision_cue = [(f.lights_on_ev,) for f in flags]
    # every audible and every visible draw, the open world's negatives included
    audio_all = [(f.siren, f.horn, f.speech, f.engine, f.cabin_voice, f.clutter_sound, f.ambience) for f in flags]
    vision_all = [(f.lights_on_ev, f.lights_off_ev, f.cars, f.pedestrians, f.traffic_lights, f.decoy_lights,
                   f.non_road) for f in flags]
    fused = [(f.siren, f.lights_on_ev) for f in flags]
    assert _bayes_accuracy(audio_cue, events, every, every) <= 0.70
    assert _bayes_accuracy(vision_cue, events, every, every) <= 0.70
    assert _bayes_accuracy(audio_all, events, fit, test) <= 0.70
    assert _bayes_accuracy(vision_all, events, fit, test) <= 0.70
    assert _bayes_accuracy(fused, events, every, every) == 1.0
    assert all(event_from_cues(f.siren, f.lights_on_ev) == f.event for f in flags)
    # distractors really are independent of the event: each appears at about its rate in every class
    for tag in ("horn", "engine", "cabin_voice", "decoy_lights"):
        rates = [np.mean([getattr(f, tag) for f in flags if f.event == e]) for e in EVENTS]
        assert max(rates) - min(rates) < 0.12, (tag, rates)


def test_cue_agreement_sets_how_often_siren_and_lights_go_together():
    # 0.5 is the old uniform draw, scene for scene (a seed's data set does not change with the option)
    for i in range(200):
        old_draw = EVENTS[int(np.random.default_rng([5, i]).integers(len(EVENTS)))]
        assert sample_flags(np.random.default_rng([5, i]), 0.5).event == old_draw
    assert event_probabilities(0.5) == {e: 0.25 for e in EVENTS}
    for a in (0.0, 0.9, 1.0):
        p = event_probabilities(a)
        assert sum(p.values()) == pytest.approx(1.0)
        assert p["emergency_ahead"] + p["none"] == pytest.approx(a)
    flags = [sample_flags(np.random.default_rng([12, i]), 0.9) for i in range(3000)]
    agree = np.mean([f.siren == f.lights_on_ev for f in flags])
    assert abs(agree - 0.9) < 0.02, agree
    assert all(event_from_cues(f.siren, f.lights_on_ev) == f.event for f in flags)
    # the decoy (a lights-OFF vehicle in view) stays independent of the event
    off = [np.mean([f.lights_off_ev for f in flags if f.event == e]) for e in ("none", "emergency_ahead")]
    assert max(off) - min(off) < 0.06, off
    assert {f.event for f in (sample_flags(np.random.default_rng([13, i]), 1.0) for i in range(300))} == {
        "none", "emergency_ahead"}
    for bad in (1.5, -0.1, float("nan"), True, "0.9"):
        with pytest.raises(ValueError, match="cue_agreement"):
            event_probabilities(bad)


def test_cue_agreement_reaches_the_data_set_and_its_record(tmp_path):
    manifest = generate_dataset(tmp_path / "pool", 6, 4, workers=1, progress=False, cue_agreement=1.0)
    samples = read_manifest(manifest)
    assert {s.event for s in samples} <= {"none", "emergency_ahead"}
    assert all(s.meta["synth"]["cue_agreement"] == 1.0 for s in samples)


def test_audio_tags_follow_flags():
    for i in range(200):
        f = sample_flags(np.random.default_rng([5, i]))
        tags = audio_tags_for(f)
        assert list(tags) == [t for t in AUDIO_TAGS if t in tags]  # vocabulary order
        assert ("siren" in tags) == f.siren == (f.event in SIREN_EVENTS)
        # speech: any voice, a near pedestrian's or one in the cabin (radio, phone, passenger)
        assert [t in tags for t in ("horn", "speech", "engine")] == [f.horn, f.speech or f.cabin_voice, f.engine]


# --- the data set on disk ---------------------------------------------------------------------------


def test_manifest_and_media_are_readable(dataset):
    samples = read_manifest(dataset)
    assert [s.id for s in samples] == [f"{i:06d}" for i in range(N)]
    for s in samples:
        assert s.video.parent == dataset.parent / "media" and s.audio is not None
        frames = _frames(s.video)
        assert frames.shape == (12, 192, 320, 3)
        syn = s.meta["synth"]
        if syn["view"] == "road" and syn["weather"] != "dark":
            assert frames.std() > 10  # a scene, not a blank
        sr, ch, width, pcm = _wav(s.audio)
        assert (sr, ch, width, pcm.size) == (16000, 1, 2, 16000)
        if syn["ambience"] == "silent":
            assert np.abs(pcm).max() < 0.01 * 32767  # silence, or a hiss far below a recording's level
        else:
            assert np.abs(pcm).max() < 32767  # never clipped
        if syn["ambience"] == "road":
            assert 0.2 * 32767 < np.abs(pcm).max()  # normalized
        assert (s.width, s.height) == (320, 192)


def test_boxes_inside_image_and_labels_known(dataset):
    n_boxes = 0
    for s in read_manifest(dataset):
        for b in s.boxes:
            n_boxes += 1
            assert b.label in OBJECTS
            assert 0 <= b.x1 < b.x2 <= 320 and 0 <= b.y1 < b.y2 <= 192
            assert b.x2 - b.x1 >= 4 and b.y2 - b.y1 >= 4
    assert n_boxes >= N  # scenes are populated


def test_labels_follow_the_rules(dataset):
    samples = read_manifest(dataset)
    assert {s.event for s in samples} == set(EVENTS)  # this seed covers every class
    for s in samples:
        syn = s.meta["synth"]
        assert ("siren" in s.audio_tags) == (s.event in SIREN_EVENTS)
        assert syn["lights_on_ev"] == (s.event in LIGHTS_EVENTS)
        assert (syn["siren_pattern"] is not None) == (s.event in SIREN_EVENTS)
        ev_boxes = [[b.x1, b.y1, b.x2, b.y2] for b in s.boxes if b.label == "emergency_vehicle"]
        if s.event in LIGHTS_EVENTS:
            assert syn["lights_on_ev_box"] in ev_boxes  # the lights-ON vehicle is in view, with a box
        else:
            assert syn["lights_on_ev_box"] is None
        # the correspondence latents are recorded where they apply (tests/test_synth_correspondence.py)
        assert (syn["ev_distance_m"] is None) == (syn["ev_motion"] is None) == (s.event == "none")
        assert (syn["near_car_m"] is None) == ("engine" not in s.audio_tags)
        if syn["near_pedestrian_m"] is not None:  # a talking pedestrian is heard; a cabin voice also speaks
            assert "speech" in s.audio_tags
        assert ("speech" in s.audio_tags) == (syn["near_pedestrian_m"] is not None or syn["cabin_voice"] is not None)
        if s.event in SIREN_EVENTS:
            assert syn["siren_envelope"] == syn["ev_motion"]


def test_light_bar_flashes_only_when_on(dataset):
    """The light bar of a lights-ON vehicle turns from red to blue and back across the decoded frames."""

    def red_vs_blue(frames, box):
        # the bar is the top ~10% of the box; search a few px around it, as the camera shakes per frame
        x1, y1, x2, y2 = (int(v) for v in box)
        pad = 4
        bar = frames[:, max(0, y1 - pad) : y1 + round(0.12 * (y2 - y1)) + pad, max(0, x1 - pad) : x2 + pad]
        rb = bar[..., 0].astype(np.float64) - bar[..., 2]
        return rb.max(axis=(1, 2)) + rb.min(axis=(1, 2))  # > 0: a red lamp lit, < 0: a blue one (per frame)

    lit, unlit = [], []
    for s in read_manifest(dataset):
        frames = _frames(s.video)
        on_box = s.meta["synth"]["lights_on_ev_box"]
        for b in s.boxes:
            if b.label == "emergency_vehicle":
                box = [b.x1, b.y1, b.x2, b.y2]
                (lit if box == on_box else unlit).append(np.ptp(red_vs_blue(frames, box)))
    assert lit, "the fixture data set should hold lights-ON vehicles"
    assert min(lit) > 80, lit
    if unlit:
        assert np.median(unlit) < 40, unlit


def test_same_seed_same_data_whatever_the_workers(dataset, tmp_path):
    again = generate_dataset(tmp_path / "again", N, SEED, workers=1, progress=False)
    assert again.read_bytes() == dataset.read_bytes()
    for a, b in zip(read_manifest(dataset), read_manifest(again)):
        assert a.audio.read_bytes() == b.audio.read_bytes()
        np.testing.assert_array_equal(_frames(a.video), _frames(b.video))


def test_different_seed_differs(dataset, tmp_path):
    other = generate_dataset(tmp_path / "other", 4, SEED + 1, workers=1, progress=False)
    a, b = read_manifest(dataset)[:4], read_manifest(other)
    assert [s.audio.read_bytes() for s in a] != [s.audio.read_bytes() for s in b]
    assert not np.array_equal(_frames(a[0].video), _frames(b[0].video))


def test_make_sample_matches_disk(dataset):
    s = make_sample(SEED, 2, SynthConfig())
    disk = read_manifest(dataset)[2]
    assert s.event == disk.event and s.audio_tags == disk.audio_tags
    assert s.boxes == [(b.label, [b.x1, b.y1, b.x2, b.y2]) for b in disk.boxes]
    _, _, _, pcm = _wav(disk.audio)
    np.testing.assert_array_equal(s.audio, pcm)


# --- refusal, overwrite, atomicity ------------------------------------------------------------------


def test_refuses_existing_data_set(tmp_path):
    out = tmp_path / "ds"
    manifest = generate_dataset(out, 4, 0, workers=1, progress=False)
    before = manifest.read_bytes()
    with pytest.raises(DatasetExistsError, match="overwrite=True"):
        generate_dataset(out, 4, 1, workers=1, progress=False)
    assert manifest.read_bytes() == before


def test_overwrite_replaces_and_removes_stale_media(tmp_path):
    out = tmp_path / "ds"
    generate_dataset(out, 6, 0, workers=1, progress=False)
    (out / "media" / "notes.txt").write_text("mine")  # not ours: must survive
    manifest = generate_dataset(out, 3, 1, workers=1, progress=False, overwrite=True)
    samples = read_manifest(manifest)
    assert [s.id for s in samples] == ["000000", "000001", "000002"]
    names = sorted(p.name for p in (out / "media").iterdir())
    assert names == [f"00000{i}.{ext}" for i in range(3) for ext in ("mp4", "wav")] + ["notes.txt"]


def test_killed_run_leaves_no_manifest(tmp_path):
    out = tmp_path / "ds"
    code = (
        "from fusionedge.training.synth import generate_dataset\n"
        f"generate_dataset({str(out)!r}, 2000, 0, workers=1, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (out / "media").is_dir() and len(list((out / "media").glob("*.wav"))) >= 3:
                break
            assert proc.poll() is None, "the generator exited early"
            time.sleep(0.05)
        else:
            pytest.fail("the generator wrote no media within 60 s")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "manifest.jsonl").exists()
    assert not list(out.glob("*.tmp"))
    # a new run into the same folder works (no manifest, nothing to refuse) and cleans up partial files
    manifest = generate_dataset(out, 2, 0, workers=1, progress=False)
    assert len(read_manifest(manifest)) == 2
    assert not list((out / "media").glob("*.partial.*"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(samples=0), "samples"),
        (dict(seed=-1), "seed"),
        (dict(workers=0), "workers"),
        (dict(width=321), "width"),
        (dict(fps=0), "fps"),
        (dict(sample_rate=100), "sample_rate"),
        (dict(cue_agreement=1.5), "cue_agreement"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = dict(samples=2, seed=0, workers=1, progress=False) | kwargs
    with pytest.raises(InputError, match=match):
        generate_dataset(tmp_path / "ds", **args)
    assert not (tmp_path / "ds").exists()


def test_generator_does_not_import_torch():
    code = "import sys, fusionedge.training.synth as s; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_relative_output_folder_gives_paths_relative_to_the_manifest(tmp_path, monkeypatch):
    # A cwd-relative --out once produced media paths relative to the cwd, doubled on reading.
    from fusionedge.sdk.datamanifest import read_manifest

    monkeypatch.chdir(tmp_path)
    manifest = generate_dataset(Path("runs") / "data", 2, 3, workers=1, progress=False)
    line = json.loads(manifest.read_text().splitlines()[0])
    assert line["video"].startswith("media/")
    samples = read_manifest(manifest)
    assert all(s.video.is_file() and s.audio.is_file() for s in samples)


def test_unwritable_output_folder_is_a_typed_error_before_any_worker(tmp_path):
    # /proc refuses new entries, even to root: once a FileNotFoundError traceback from mkdir
    with pytest.raises(InputError, match="/proc/x"):
        generate_dataset("/proc/x", 2, 0, workers=2, progress=False)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(InputError, match="cannot write"):
        generate_dataset(blocked / "ds", 2, 0, workers=2, progress=False)


def test_cli_data_synth_unwritable_folder_exits_2_with_one_line(capsys):
    from fusionedge.cli.main import main

    assert main(["data", "synth", "--out", "/proc/x", "--samples", "2", "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "/proc/x" in err and "Traceback" not in err
