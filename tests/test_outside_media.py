"""The outside-media evaluation set and its open-world metrics.

The set is made by sox, ffmpeg and espeak-ng (tests skip, naming what is missing, without them); its
labels are checked against the media themselves (a tone's frequency by FFT, a siren's sweep, silence
being silent). The metric functions are checked on hand-made arrays, and ``fusionedge eval`` of a
toy bundle on a few outside clips through the real command line reports them.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from _toy_model import shared_toy_bundle
from fusionedge.cli.main import main
from fusionedge.sdk.datamanifest import Sample, read_manifest, write_manifest
from fusionedge.sdk.errors import DataError, InputError
from fusionedge.sdk.media import read_audio, read_video
from fusionedge.sdk.outside_metrics import (
    expected_calibration_error,
    outside_label,
    outside_markdown,
    outside_metrics,
)
from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS
from fusionedge.training.outside_media import AUDIO_KINDS, generate_outside_dataset, missing_tools
from fusionedge.training.synth.generate import DatasetExistsError

ROOT = Path(__file__).resolve().parents[1]
needs_tools = pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())} on PATH "
                                 "(Debian: apt-get install sox ffmpeg espeak-ng)")


# --- nothing that trains may read the outside set -----------------------------------------------


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the file's package
                pkg = ["fusionedge", *path.relative_to(ROOT).parent.parts]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
    return names


def test_no_training_or_export_code_imports_the_outside_set():
    """Training, export and benchmark code never import it, so it can never become a training source."""
    offenders = []
    for part in ("training", "export", "benchmarks", "sdk"):
        for path in sorted((ROOT / part).rglob("*.py")):
            if path.name == "outside_media.py":
                continue
            if any("outside_media" in m for m in _imported_modules(path)):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
    # the scan does see an import where there is one
    assert any("outside_media" in m for m in _imported_modules(ROOT / "cli" / "data.py"))


# --- the generator ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    if missing_tools():
        pytest.skip(f"needs {', '.join(missing_tools())} on PATH (Debian: apt-get install sox ffmpeg espeak-ng)")
    out = tmp_path_factory.mktemp("outside")
    return generate_outside_dataset(out, seed=3, samples_per_kind=2)


def _by_kind(manifest: Path) -> dict[str, list[Sample]]:
    kinds: dict[str, list[Sample]] = {}
    for s in read_manifest(manifest):
        kinds.setdefault(s.meta["outside"]["kind"], []).append(s)
    return kinds


def _mono(path: Path) -> tuple[np.ndarray, int]:
    wave, rate = read_audio(path)
    return wave[:, 0].astype(np.float64), rate


def _dominant(wave: np.ndarray, rate: int, lo: float = 300.0, hi: float = 2500.0, win: float = 0.05) -> np.ndarray:
    """The strongest frequency in [lo, hi] Hz of each ``win``-second window."""
    n = int(rate * win)
    freqs = np.fft.rfftfreq(4 * n, 1 / rate)
    band = (freqs >= lo) & (freqs <= hi)
    out = []
    for k in range(0, len(wave) - n + 1, n):
        spec = np.abs(np.fft.rfft(wave[k:k + n] * np.hanning(n), 4 * n))
        out.append(freqs[band][np.argmax(spec[band])])
    return np.asarray(out)


def test_manifest_validates_and_labels_hold_by_construction(outside):
    samples = read_manifest(outside)
    kinds = _by_kind(outside)
    assert list(kinds) == list(AUDIO_KINDS) and all(len(v) == 2 for v in kinds.values())
    for s in samples:
        kind = s.meta["outside"]["kind"]
        siren = kind.startswith("siren_")
        assert s.event == ("emergency_behind" if siren else "none"), s.id
        assert s.audio_tags == (("siren",) if siren else ("speech",) if kind == "speech" else ()), s.id
        assert s.boxes == ()
        assert outside_label(s).alarm == siren and outside_label(s).siren == siren
        assert (s.audio is None) == (kind == "video_only")
        clip = read_video(s.video)
        assert clip.frames.shape[1:3] == (s.height, s.width), s.id
        spec = s.meta["outside"]["video"]
        assert abs(len(clip.frames) - round(spec["fps"] * spec["seconds"])) <= 1, s.id
        if s.audio is not None:
            wave, rate = _mono(s.audio)
            assert rate == s.meta["outside"]["audio_rate"]
            assert len(wave) == round(rate * spec["seconds"]), s.id
    # some clips differ from the models' geometry, so resizing and resampling are exercised
    assert {(s.width, s.height) for s in samples} - {(320, 192)}
    assert {s.meta["outside"]["audio_rate"] for s in samples if s.audio} - {16000}


def test_tones_are_at_their_frequency(outside):
    for s in _by_kind(outside)["tone"]:
        freq = float(re.search(r"(\d+) Hz", s.meta["outside"]["audio_recipe"]).group(1))
        wave, rate = _mono(s.audio)
        spec = np.abs(np.fft.rfft(wave))
        peak = np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spec)]
        assert abs(peak - freq) <= 2.0, (s.id, peak, freq)
        assert np.sqrt(np.mean(wave ** 2)) > 0.1


def test_silence_is_silent_and_near_silence_nearly(outside):
    kinds = _by_kind(outside)
    for s in kinds["silence"]:
        wave, _ = _mono(s.audio)
        assert np.all(wave == 0.0), s.id
    for s in kinds["near_silence"]:
        wave, _ = _mono(s.audio)
        assert 0.0 < np.abs(wave).max() < 0.003, s.id
    for s in kinds["speech"] + kinds["beep"] + kinds["music"]:
        wave, _ = _mono(s.audio)
        assert np.abs(wave).max() > 0.2, s.id


def test_sirens_sweep_or_alternate(outside):
    kinds = _by_kind(outside)
    for name, min_spread in (("siren_wail", 150.0), ("siren_yelp", 400.0)):
        for s in kinds[name]:
            lo, hi = (float(v) for v in re.search(r"(\d+)<->(\d+) Hz", s.meta["outside"]["audio_recipe"]).groups())
            wave, rate = _mono(s.audio)
            dom = _dominant(wave, rate, win=0.03 if name == "siren_yelp" else 0.05)
            inside = (dom >= lo * 0.9) & (dom <= hi * 1.1)
            assert inside.mean() > 0.8, (s.id, dom)  # the siren, not the road noise, dominates its band
            assert np.ptp(dom[inside]) > min_spread, (s.id, dom)  # and its pitch moves
    for s in kinds["siren_hilo"]:
        hi, lo = (float(v) for v in re.search(r"(\d+)/(\d+) Hz", s.meta["outside"]["audio_recipe"]).groups())
        wave, rate = _mono(s.audio)
        dom = _dominant(wave, rate)
        near = np.minimum(np.abs(dom - hi) / hi, np.abs(dom - lo) / lo)
        assert np.mean(near < 0.03) > 0.8, (s.id, dom)  # two steady tones, nothing between
    for s in kinds["tone"]:  # a steady tone does not sweep
        wave, rate = _mono(s.audio)
        dom = _dominant(wave, rate, lo=200.0, hi=4000.0)
        assert np.ptp(dom) < 30.0, (s.id, dom)


@needs_tools
def test_a_seed_gives_the_same_set_and_an_existing_set_is_kept(tmp_path):
    kinds = ("noise", "siren_yelp", "speech")
    a = generate_outside_dataset(tmp_path / "a", seed=5, samples_per_kind=1, kinds=kinds)
    b = generate_outside_dataset(tmp_path / "b", seed=5, samples_per_kind=1, kinds=kinds)
    assert a.read_text() == b.read_text()
    for s in read_manifest(a):
        assert s.audio.read_bytes() == (b.parent / "media" / s.audio.name).read_bytes()
    c = generate_outside_dataset(tmp_path / "c", seed=6, samples_per_kind=1, kinds=kinds)
    assert c.read_text() != a.read_text()
    with pytest.raises(DatasetExistsError):
        generate_outside_dataset(tmp_path / "a", seed=5, samples_per_kind=1, kinds=kinds)
    with pytest.raises(InputError):
        generate_outside_dataset(tmp_path / "d", kinds=("gunshot",))


# --- the metrics ------------------------------------------------------------------------------


def test_ece_on_hand_made_probabilities():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    # bin of 0.9: accuracy 0.5 -> gap 0.4; bin of 0.6: accuracy 1.0 -> gap 0.4; each half the samples
    assert expected_calibration_error(probs, np.array([0, 1, 0, 0])) == pytest.approx(0.4)
    assert expected_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])) == 0.0
    # always wrong at confidence 0.7: ECE is the confidence
    assert expected_calibration_error(np.array([[0.7, 0.3]] * 3), np.array([1, 1, 1])) == pytest.approx(0.7)
    # one bin pools over- and under-confidence; many bins do not
    p = np.array([[0.55, 0.45], [0.95, 0.05]])
    y = np.array([1, 0])
    assert expected_calibration_error(p, y, n_bins=1) == pytest.approx(abs(0.5 - 0.75))
    assert expected_calibration_error(p, y, n_bins=15) == pytest.approx(0.5 * 0.55 + 0.5 * 0.05)
    for bad in ((np.zeros((0, 2)), np.zeros(0, int)), (np.array([[1.2, -0.2]]), np.array([0])),
                (np.array([[0.5, 0.5]]), np.array([2])), (np.array([[np.nan, 0.5]]), np.array([0]))):
        with pytest.raises(InputError):
            expected_calibration_error(*bad)


def _sample(i: int, kind: str, *, siren: bool = False, silent: bool = False, outside: bool = True) -> Sample:
    meta = {"outside": {"kind": kind, "expect": {"siren": siren, "alarm": siren, "silent": silent,
                                                 "event_defined": True}}} if outside else {}
    return Sample(f"s{i}", Path(f"/m/{i}.mp4"), None, "emergency_behind" if siren else "none",
                  ("siren",) if siren else (), meta=meta)


def _onehot(event: str, p: float = 0.9) -> list[float]:
    row = [(1 - p) / (len(EVENTS) - 1)] * len(EVENTS)
    row[EVENTS.index(event)] = p
    return row


def test_outside_rates_on_hand_made_predictions():
    samples = [_sample(0, "tone"), _sample(1, "tone"), _sample(2, "silence", silent=True),
               _sample(3, "silence", silent=True), _sample(4, "siren_wail", siren=True),
               _sample(5, "siren_wail", siren=True), _sample(6, "road", outside=False)]
    probs = np.array([_onehot("emergency_behind"), _onehot("none"), _onehot("lights_no_siren"),
                      _onehot("none"), _onehot("emergency_behind"), _onehot("none"), _onehot("emergency_ahead")])
    siren, horn = AUDIO_TAGS.index("siren"), AUDIO_TAGS.index("horn")
    tags = np.zeros((7, len(AUDIO_TAGS)))
    tags[0, siren] = 0.97  # a tone heard as a siren
    tags[2, horn] = 0.6    # silence heard as a horn
    tags[3, horn] = 0.49   # below the threshold
    tags[4, siren] = 0.8
    tags[6, siren] = 0.99  # no outside block: not counted
    m = outside_metrics(samples, probs, tags, EVENTS, AUDIO_TAGS)["outside"]
    assert m["samples"] == 6
    assert m["false_siren_tag_rate"] == pytest.approx(1 / 4)
    assert m["false_alarm_rate"] == pytest.approx(1 / 4)
    assert m["false_event_rate"] == pytest.approx(2 / 4)  # the alarm and the lights on silence
    assert m["siren_recall"] == pytest.approx(1 / 2)
    assert m["siren_alarm_recall"] == pytest.approx(1 / 2)
    assert m["silence_any_tag_rate"] == pytest.approx(1 / 2)
    assert m["event_accuracy"] == pytest.approx(3 / 6)
    # all six at confidence 0.9, half of them right
    assert m["event_ece"] == pytest.approx(0.4)
    assert list(m["per_kind"]) == ["tone", "silence", "siren_wail"]
    assert m["per_kind"]["tone"]["alarm_rate"] == 0.5 and m["per_kind"]["tone"]["siren_tag_rate"] == 0.5
    assert m["per_kind"]["silence"]["predicted"] == {"lights_no_siren": 1, "none": 1}
    assert m["per_kind"]["silence"]["any_tag_rate"] == 0.5
    # every outside clip here has a (non-road) video; the one lights event is sample 2's (the lights
    # on silence); sample 6's emergency_ahead is not an outside clip
    assert m["nonroad_lights_event_rate"] == pytest.approx(1 / 6)
    assert "nonroad_emergency_box_rate" not in m  # no boxes given
    md = outside_markdown(m)
    assert "| false_alarm_rate | 0.25 |" in md and "| siren_wail | 2 |" in md
    # the boxes shown: an emergency box on one outside clip counts; on the road clip it does not
    boxes = [["car"], ["emergency_vehicle", "car"], [], [], [], [], ["emergency_vehicle"]]
    unsure = np.array([False, True, True, False, False, False, False])
    b = outside_metrics(samples, probs, tags, EVENTS, AUDIO_TAGS, box_labels=boxes, uncertain=unsure)["outside"]
    assert b["nonroad_emergency_box_rate"] == pytest.approx(1 / 6)  # shown, even on an uncertain result
    assert b["nonroad_lights_event_rate"] == 0.0  # the lights event on silence is marked uncertain
    assert "| nonroad_emergency_box_rate | 0.17 |" in outside_markdown(b)
    audio_only = [Sample(x.id, None, Path("/m/a.wav"), x.event, x.audio_tags, meta=x.meta) for x in samples]
    assert outside_metrics(audio_only, probs, tags, EVENTS, AUDIO_TAGS, box_labels=boxes)["outside"][
        "nonroad_emergency_box_rate"] is None  # no video, no rate
    with pytest.raises(InputError, match="box_labels"):
        outside_metrics(samples, probs, tags, EVENTS, AUDIO_TAGS, box_labels=boxes[:3])
    # nothing from outside: nothing reported; a rate over no clips is None, not 0
    assert outside_metrics(samples[6:], probs[6:], tags[6:], EVENTS, AUDIO_TAGS) == {}
    only_tones = outside_metrics(samples[:2], probs[:2], tags[:2], EVENTS, AUDIO_TAGS)["outside"]
    assert only_tones["siren_recall"] is None and only_tones["silence_any_tag_rate"] is None
    with pytest.raises(InputError):
        outside_metrics(samples, probs[:3], tags, EVENTS, AUDIO_TAGS)


def test_a_malformed_outside_block_is_a_data_error():
    for block in ("tone", {"kind": "tone"}, {"kind": "", "expect": {}},
                  {"kind": "tone", "expect": {"siren": "no", "alarm": False, "silent": False, "event_defined": True}}):
        s = Sample("x", Path("/m/x.mp4"), None, "none", meta={"outside": block})
        with pytest.raises(DataError, match="outside"):
            outside_label(s)


# --- through the command line -----------------------------------------------------------------


@needs_tools
def test_data_outside_writes_the_set_and_keeps_an_existing_one(tmp_path, capsys):
    out = tmp_path / "outside"
    assert main(["data", "outside", "--out", str(out), "--samples-per-kind", "1", "--seed", "2", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["samples"] == len(AUDIO_KINDS) and Path(made["manifest"]).is_file()
    assert len(read_manifest(out)) == len(AUDIO_KINDS)
    assert main(["data", "outside", "--out", str(out)]) == 2  # an existing set is kept: one-line error
    assert "already holds a data set" in capsys.readouterr().err


@needs_tools
def test_eval_reports_the_open_world_rates_of_an_outside_set(tmp_path, tmp_path_factory, capsys):
    bundle = shared_toy_bundle(tmp_path_factory)
    out = generate_outside_dataset(tmp_path / "outside", seed=2, samples_per_kind=1).parent
    assert main(["eval", "--bundle", str(bundle), "--data", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["samples"] == len(AUDIO_KINDS)
    m = metrics["outside"]
    assert m["samples"] == len(AUDIO_KINDS) and set(m["per_kind"]) == set(AUDIO_KINDS)
    for k in ("false_siren_tag_rate", "false_alarm_rate", "false_event_rate", "siren_recall",
              "silence_any_tag_rate", "event_accuracy", "event_ece"):
        assert 0.0 <= m[k] <= 1.0, k
    # the block agrees with the headline metrics computed from the same predictions
    assert m["event_accuracy"] == pytest.approx(metrics["event_accuracy"])
    assert main(["eval", "--bundle", str(bundle), "--data", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| false_alarm_rate |" in text and "| siren_hilo | 1 |" in text
    # a data set without outside blocks reports none
    plain = tmp_path / "plain"
    plain.mkdir()
    write_manifest(plain / "manifest.jsonl", [dataclasses.replace(s, meta={}) for s in read_manifest(out)])
    assert main(["eval", "--bundle", str(bundle), "--data", str(plain), "--json"]) == 0
    assert "outside" not in json.loads(capsys.readouterr().out)
