"""Calibration: the fits on synthetic logits, and ``fusionedge calibrate`` on the tiny toy bundle end to end
(a verifiable bundle whose outputs change exactly by the calibration; an uncalibrated bundle unchanged;
``uncertain`` in ``predict --json`` and ``events.jsonl``; bad input refused with the bundle untouched)."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
from _toy_model import TOY_GEOMETRY, copy_bundle, shared_toy_bundle
from fusionedge.cli.main import main
from fusionedge.export.calibrate import (
    detection_f1,
    fit_calibration,
    fit_detection_thresholds,
    fit_missing_modality,
    fit_ood,
    fit_tag_thresholds,
    fit_temperature,
    negative_log_likelihood,
)
from fusionedge.sdk.calibration import Calibration
from fusionedge.sdk.errors import BundleError, DataError, InputError
from fusionedge.sdk.postprocess import Detection, sigmoid, softmax
from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS


def _labels_from(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    p = softmax(logits / temperature)
    return np.array([rng.choice(len(row), p=row) for row in p])


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, size=(6000, 4))
    for true_t in (0.5, 2.5):
        y = _labels_from(z, true_t, rng)
        t = fit_temperature(z, y)
        assert abs(t - true_t) / true_t < 0.08, (t, true_t)
        assert negative_log_likelihood(z, y, t) <= negative_log_likelihood(z, y, 1.0)


def test_tag_thresholds_maximise_f1_and_a_one_class_tag_keeps_one_half():
    scores = np.array([[0.9, 0.7], [0.8, 0.6], [0.4, 0.2], [0.35, 0.1], [0.1, 0.3], [0.05, 0.9]])
    truth = np.array([[1, 0], [1, 0], [0, 0], [1, 0], [0, 0], [0, 0]])
    thresholds, fitted = fit_tag_thresholds(scores, truth, ["siren", "horn"], resamples=0)
    # Best cut keeps 0.9, 0.8, 0.4, 0.35 (F1 6/7); it lies halfway to the next score down.
    assert thresholds["siren"] == pytest.approx(0.225)
    assert thresholds["horn"] == 0.5 and fitted == ("siren",)
    bagged, _ = fit_tag_thresholds(scores, truth, ["siren", "horn"])
    assert bagged["horn"] == 0.5 and 0.05 < bagged["siren"] < 0.9
    assert bagged == fit_tag_thresholds(scores, truth, ["siren", "horn"])[0]  # seeded: repeatable


def _det(label: str, score: float, x: float) -> Detection:
    return Detection(label, score, x, 10.0, x + 10.0, 20.0)


def test_detection_thresholds_maximise_f1_at_iou_half_and_a_class_without_boxes_keeps_the_default():
    # "car": true boxes at x=0 (image 0) and x=50 (image 1); found at 0.9 and 0.5, and three boxes
    # that are not there at 0.6, 0.4 (image 2, which has no car) and 0.2. By score: TP FP TP FP FP.
    preds = [[_det("car", 0.9, 0.0), _det("car", 0.6, 100.0)],
             [_det("car", 0.5, 51.0), _det("car", 0.2, 120.0), _det("pedestrian", 0.7, 5.0)],
             [_det("car", 0.4, 30.0)]]
    truth = [[("car", 0.0, 10.0, 10.0, 20.0)], [("car", 50.0, 10.0, 60.0, 20.0)], [("traffic_light", 0, 0, 4, 9)]]
    thresholds, fitted = fit_detection_thresholds(preds, truth, OBJECTS, resamples=0)
    # F1 per cut: 2/3, 2/4, 4/5 (keep 0.9, 0.6, 0.5), 4/6, 4/7: the cut lies halfway from 0.5 to 0.4
    assert thresholds["car"] == pytest.approx(0.45) and fitted == ("car",)
    # pedestrians have no true box, traffic lights no detection, emergency vehicles neither
    assert all(thresholds[c] == 0.3 for c in ("pedestrian", "traffic_light", "emergency_vehicle"))
    f1 = detection_f1(preds, truth, OBJECTS, thresholds)
    assert f1 == pytest.approx({"car": 0.8, "traffic_light": 0.0})
    assert detection_f1(preds, truth, OBJECTS, {c: 0.3 for c in OBJECTS})["car"] == pytest.approx(4 / 6)
    bagged, _ = fit_detection_thresholds(preds, truth, OBJECTS)
    assert 0.2 <= bagged["car"] <= 0.9 and bagged == fit_detection_thresholds(preds, truth, OBJECTS)[0]
    with pytest.raises(InputError, match="prediction lists"):
        fit_detection_thresholds(preds[:2], truth, OBJECTS)


def test_bagged_tag_thresholds_vary_less_between_validation_sets():
    """Where F1 is flat near its maximum (overlapping score distributions), the arg-max threshold of
    one validation set of 300 clips jumps around; the bagged one, from the same 30 sets, varies less
    and lies nearer the threshold that is best for the population (0.5 here, by symmetry)."""
    from fusionedge.export.calibrate import _bagged_max_f1_threshold, _max_f1_threshold

    rng = np.random.default_rng(5)
    plain, bagged = [], []
    for _ in range(30):
        truth = rng.random(300) < 0.5
        scores = 1 / (1 + np.exp(-np.where(truth, rng.normal(2.0, 1.5, 300), rng.normal(-2.0, 1.5, 300))))
        plain.append(fit_tag_thresholds(scores[:, None], truth[:, None], ["siren"], resamples=0)[0]["siren"])
        bagged.append(fit_tag_thresholds(scores[:, None], truth[:, None], ["siren"])[0]["siren"])
    plain, bagged = np.array(plain), np.array(bagged)
    assert np.std(bagged) < 0.95 * np.std(plain), (np.std(bagged), np.std(plain))
    assert np.mean(np.abs(bagged - 0.5)) < np.mean(np.abs(plain - 0.5))
    # the bagged threshold is the median of the resamples' own max-F1 thresholds
    r = np.random.default_rng(0)
    by_hand = []
    for _ in range(50):
        i = r.integers(0, 300, 300)
        by_hand.append(_max_f1_threshold(scores[i], truth[i].astype(float)))
    assert _bagged_max_f1_threshold(scores, truth.astype(float), 50, 0) == pytest.approx(np.median(by_hand))


def test_bad_validation_logits_are_typed_errors():
    z = np.zeros((8, 4))
    y = np.array([0, 1, 2, 3] * 2)
    with pytest.raises(InputError, match="NaN"):
        fit_temperature(np.where(np.eye(8, 4) > 0, np.nan, z), y)
    with pytest.raises(DataError, match="single event class"):
        fit_temperature(z, np.zeros(8, int))
    with pytest.raises(DataError, match="every class"):
        fit_ood(z, np.zeros((8, 2)), np.array([0, 1, 2] * 2 + [0, 1]), 0.05)
    with pytest.raises(InputError, match="rate"):
        fit_ood(z, np.zeros((8, 2)), y, 1.5)


def test_ood_threshold_leaves_the_target_share_of_unseen_clips_above_it_and_flags_far_ones():
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 5, size=(4, 8))

    def draw(n):
        y = rng.integers(0, 4, n)
        return centres[y] + rng.normal(0, 1, size=(n, 8)), y

    x, y = draw(600)
    cal = fit_calibration(x[:, :4], x[:, 4:], y, (x[:, 4:] > 0).astype(float), list(AUDIO_TAGS),
                          target_ood_rate=0.05, validation={"samples": 600, "sha256": "0" * 64})
    fresh, _ = draw(4000)
    rate = float(np.mean(cal.is_uncertain(cal.ood_scores(fresh[:, :4], fresh[:, 4:]))))
    assert 0.03 <= rate <= 0.08, rate
    far = fresh + 12.0
    assert np.mean(cal.is_uncertain(cal.ood_scores(far[:, :4], far[:, 4:]))) > 0.95
    # The manifest block reads back to the same corrections.
    manifest = {"labels": {"events": list(EVENTS), "audio_tags": list(AUDIO_TAGS)}, "calibration": cal.to_manifest()}
    back = Calibration.from_manifest(manifest)
    assert back.temperature == cal.temperature and back.tag_thresholds == cal.tag_thresholds
    np.testing.assert_array_equal(back.ood_scores(fresh[:5, :4], None), cal.ood_scores(fresh[:5, :4], None))
    # A bundle calibrated before the thresholds were bagged still loads and writes its rule back; an
    # unknown rule is refused, naming the field.
    old = {**manifest, "calibration": {**manifest["calibration"], "tag_threshold_rule": "max-f1"}}
    assert Calibration.from_manifest(old).to_manifest()["tag_threshold_rule"] == "max-f1"
    assert back.to_manifest()["tag_threshold_rule"] == "max-f1-bagged"
    with pytest.raises(BundleError, match="tag_threshold_rule"):
        Calibration.from_manifest({**manifest, "calibration": {**manifest["calibration"], "tag_threshold_rule": "f2"}})


# ------------------------------------------------------------------------------ the toy bundle, end to end


def _write_clip(folder: Path, name: str, level: int, tone_hz: float) -> None:
    import cv2

    g = TOY_GEOMETRY
    writer = cv2.VideoWriter(str(folder / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (g.width, g.height))
    for i in range(4):
        frame = np.full((g.height, g.width, 3), (level + 20 * i) % 256, np.uint8)
        frame[:, : g.width // 2, 1] = 255 - level
        writer.write(frame)
    writer.release()
    t = np.arange(int(g.sample_rate * 0.5)) / g.sample_rate
    samples = (0.5 * np.sin(2 * np.pi * tone_hz * t) * 32767).astype(np.int16)
    with wave.open(str(folder / f"{name}.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(g.sample_rate)
        w.writeframes(samples.tobytes())


def _write_set(root: Path, events: list[str]) -> Path:
    media = root / "media"
    media.mkdir(parents=True)
    lines = []
    for i, event in enumerate(events):
        k = EVENTS.index(event)
        _write_clip(media, f"c{i:02d}", 40 * k + 7 * i, 300.0 + 400 * k + 37 * i)
        tags = ["siren"] if event.startswith("emergency") else (["engine"] if i % 2 else [])
        lines.append(json.dumps({"id": f"c{i:02d}", "video": f"media/c{i:02d}.mp4", "audio": f"media/c{i:02d}.wav",
                                 "event": event, "audio_tags": tags, "boxes": []}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    src = shared_toy_bundle(tmp_path_factory)
    root = tmp_path_factory.mktemp("calibrate")
    val = _write_set(root / "val", [EVENTS[i % 4] for i in range(16)])
    calibrated = copy_bundle(src, root / "calibrated")
    assert main(["calibrate", "--bundle", str(calibrated), "--data", str(val), "--json"]) == 0
    return {"root": root, "plain": src, "calibrated": calibrated, "val": val}


def _files(bundle: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(bundle.iterdir()) if p.is_file()}


def test_calibrate_writes_a_verifiable_bundle_whose_outputs_change_exactly_by_the_calibration(toy):
    from fusionedge.sdk import Perception, load_bundle

    plain, calibrated = load_bundle(toy["plain"]), load_bundle(toy["calibrated"])  # both verify
    assert calibrated.digest != plain.digest and "calibration" not in plain.manifest
    block = calibrated.manifest["calibration"]
    assert block["validation"]["samples"] == 16 and len(block["validation"]["sha256"]) == 64
    assert {k: v for k, v in calibrated.manifest.items() if k != "calibration"} == plain.manifest
    assert _files(toy["plain"])["model.onnx"] == _files(toy["calibrated"])["model.onnx"]

    clip = {"video_path": toy["val"] / "media" / "c05.mp4", "audio_path": toy["val"] / "media" / "c05.wav"}
    with Perception.load(toy["plain"]) as p, Perception.load(toy["calibrated"]) as c:
        assert p.calibration is None and c.calibration is not None
        old, new = p.infer(**clip), c.infer(**clip)
        out = p.backend.infer(_inputs(p, clip))
    logits = out["event_logits"][0].astype(np.float64)
    tags = sigmoid(out["audio_tag_logits"][0].astype(np.float64))
    cal = c.calibration
    # The uncalibrated bundle: plain softmax, tags on at 0.5, no OOD score — what it always gave.
    assert old.scores == {e: float(s) for e, s in zip(EVENTS, softmax(logits))}
    assert old.tags_on == tuple(t for t, s in zip(AUDIO_TAGS, tags) if s >= 0.5)
    assert old.ood_score is None and old.uncertain is False
    # The calibrated one: tempered scores, its own thresholds, the OOD score; everything else equal.
    assert new.scores == pytest.approx({e: float(s) for e, s in zip(EVENTS, softmax(logits / cal.temperature))},
                                       abs=1e-12)
    assert new.tags_on == tuple(t for t, s in zip(AUDIO_TAGS, tags) if s >= cal.tag_thresholds[t])
    score = float(cal.ood_scores(logits[None], out["audio_tag_logits"][:1])[0])
    assert new.ood_score == pytest.approx(score) and new.uncertain == (score > cal.threshold)
    assert (new.event, new.audio_tags, new.boxes) == (old.event, old.audio_tags, old.boxes)
    assert cal.temperature != 1.0


def _inputs(p, clip) -> dict[str, np.ndarray]:
    """The preprocessed batch-1 inputs of a clip, as Perception.infer builds them."""
    from fusionedge.sdk.datamanifest import Sample
    from fusionedge.sdk.evaluate import load_sample_inputs

    video, audio, presence, _ = load_sample_inputs(Sample("x", clip["video_path"], clip["audio_path"], None),
                                                   p.geometry)
    return {"video": video[None], "audio": audio[None], "presence": presence[None]}


def test_uncertain_is_in_predict_json_and_events_jsonl_and_an_uncertain_result_raises_no_alarm(toy, capsys,
                                                                                                tmp_path):
    from fusionedge.sdk.fileio import write_json_atomic
    from fusionedge.sdk.perception import Result

    assert Result("emergency_ahead", {}, {}, [], "b", "m").alarm
    assert not Result("emergency_ahead", {}, {}, [], "b", "m", uncertain=True).alarm
    bundle = copy_bundle(toy["calibrated"], tmp_path / "strict")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["calibration"]["ood"].update(threshold=-1.0, threshold_events_only=-1.0)  # every clip lies beyond
    write_json_atomic(bundle / "manifest.json", manifest)
    clip = toy["val"] / "media" / "c01"
    assert main(["predict", "--bundle", str(bundle), "--video", f"{clip}.mp4", "--audio", f"{clip}.wav",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["uncertain"] is True and r["alarm"] is False and r["ood_score"] > 0
    events = tmp_path / "events.jsonl"
    assert main(["run", "--bundle", str(bundle), "--video", f"{clip}.mp4", "--audio", f"{clip}.wav", "--fast",
                 "--events", str(events), "--json", "--no-progress"]) == 0
    results = [json.loads(line) for line in events.read_text().splitlines() if '"result"' in line]
    assert results and all(x["uncertain"] is True and x["alarm"] is False for x in results)
    assert main(["predict", "--bundle", str(toy["calibrated"]), "--video", f"{clip}.mp4", "--audio",
                 f"{clip}.wav"]) == 0
    assert "out-of-distribution score" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["empty", "one-class", "signed"])
def test_bad_calibration_input_is_one_line_exit_2_and_the_bundle_is_untouched(toy, capsys, tmp_path, case):
    bundle = copy_bundle(toy["plain"], tmp_path / "b")
    if case == "empty":
        data = tmp_path / "empty"
        data.mkdir()
        (data / "manifest.jsonl").write_text("")
        expect = "empty"
    elif case == "one-class":
        data = _write_set(tmp_path / "one", ["none"] * 6)
        expect = "single event class"
    else:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from fusionedge.sdk.bundle_signature import sign_bundle

        key = Ed25519PrivateKey.generate()
        sign_bundle(bundle, key)
        data, expect = toy["val"], "signed"
    before = _files(bundle)
    assert main(["calibrate", "--bundle", str(bundle), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert _files(bundle) == before
    if case == "signed":  # re-signed with the key, it verifies with it
        from cryptography.hazmat.primitives import serialization
        from fusionedge.sdk import load_bundle

        pem = tmp_path / "key.pem"
        pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        assert main(["calibrate", "--bundle", str(bundle), "--data", str(data), "--sign-key", str(pem)]) == 0
        assert "calibration" in load_bundle(bundle, public_key=key.public_key()).manifest
        assert main(["calibrate", "--bundle", str(bundle), "--data", str(data), "--drop-signature",
                     "--target-ood-rate", "0.2"]) == 0
        assert not (bundle / "manifest.sig").exists()
        assert load_bundle(bundle).manifest["calibration"]["ood"]["target_rate"] == 0.2


def test_open_world_rates_count_an_uncertain_result_as_no_alarm_and_score_the_ood_auroc():
    from fusionedge.sdk.datamanifest import Sample
    from fusionedge.sdk.outside_metrics import ood_auroc, outside_markdown, outside_metrics
    from sklearn.metrics import roc_auc_score

    def sample(i: int, outside: bool) -> Sample:
        meta = {"outside": {"kind": "tone", "expect": {"siren": False, "alarm": False, "silent": False,
                                                       "event_defined": True}}} if outside else {}
        return Sample(f"s{i}", Path(f"{i}.mp4"), None, "none", meta=meta)

    samples = [sample(i, i >= 2) for i in range(6)]
    probs = np.tile(np.eye(4)[EVENTS.index("emergency_behind")], (6, 1))  # every clip: an alarm
    tags = np.full((6, 4), 0.7)
    plain = outside_metrics(samples, probs, tags, EVENTS, AUDIO_TAGS)["outside"]
    assert plain["false_alarm_rate"] == 1.0 and "uncertain_rate" not in plain and "ood_auroc" not in plain
    assert plain == outside_metrics(samples, probs, tags, EVENTS, AUDIO_TAGS, tags_on=tags >= 0.5,
                                    uncertain=None)["outside"]
    ood = np.array([1.0, 2.0, 5.0, 0.5, 7.0, 2.0])
    unsure = ood > 3.0
    m = outside_metrics(samples, probs, tags, EVENTS, AUDIO_TAGS, tags_on=np.zeros((6, 4), bool),
                        uncertain=unsure, ood_scores=ood)["outside"]
    assert m["false_alarm_rate"] == 0.5 and m["uncertain_rate"] == 0.5  # two of the four outside clips
    assert m["false_siren_tag_rate"] == 0.0  # the tag decisions given, not 0.5
    labels = [0, 0, 1, 1, 1, 1]
    assert m["ood_auroc"] == pytest.approx(roc_auc_score(labels, ood))
    assert ood_auroc(np.array([1.0, 2.0]), np.array([])) is None
    assert "| ood_auroc |" in outside_markdown(m) and "uncertain |" in outside_markdown(m)
    assert "uncertain" not in outside_markdown(plain)


def _write_mixed(root: Path, inside: int = 4) -> Path:
    """Eight clips; those after the first ``inside`` carry an ``outside`` block (a tone, event none)."""
    data = _write_set(root, [EVENTS[i % 4] for i in range(8)])
    lines = [json.loads(x) for x in (data / "manifest.jsonl").read_text().splitlines()]
    for rec in lines[inside:]:
        rec.update(event="none", audio_tags=[], outside={"kind": "tone", "expect": {
            "siren": False, "alarm": False, "silent": False, "event_defined": True}})
    (data / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return data


def test_eval_of_a_calibrated_bundle_reports_the_ood_auroc_and_no_alarm_from_uncertain_clips(toy, capsys,
                                                                                            tmp_path):
    data = _write_mixed(tmp_path / "mixed")
    assert main(["eval", "--bundle", str(toy["calibrated"]), "--data", str(data), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["calibrated"] is True and 0.0 <= m["uncertain_rate"] <= 1.0
    assert 0.0 <= m["outside"]["ood_auroc"] <= 1.0 and "uncertain_rate" in m["outside"]
    assert main(["eval", "--bundle", str(toy["plain"]), "--data", str(data), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["calibrated"] is False and "ood_auroc" not in plain["outside"]
    assert plain["event_accuracy"] == m["event_accuracy"]  # a temperature never changes the decision


def test_eval_counts_the_emergency_boxes_the_runtime_shows_on_outside_video(toy, capsys, tmp_path):
    """``nonroad_emergency_box_rate`` is the share of outside clips whose ``Perception.infer`` result
    holds an ``emergency_vehicle`` box, at the bundle's own thresholds (set here so that the toy
    model's boxes show on some clips and not on others)."""
    from fusionedge.sdk import Perception
    from fusionedge.sdk.fileio import write_json_atomic

    data = _write_mixed(tmp_path / "mixed", inside=2)
    bundle = copy_bundle(toy["calibrated"], tmp_path / "b")
    with Perception.load(bundle, score_threshold=0.0, top_k=10_000) as p:
        peaks = [max((d.score for d in p.infer(video_path=data / "media" / f"c{i:02d}.mp4",
                                               audio_path=data / "media" / f"c{i:02d}.wav").boxes
                      if d.label == "emergency_vehicle"), default=0.0) for i in range(2, 8)]
    cut = float(np.median(peaks))  # between the clips' best emergency peaks: some above, some below
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["calibration"]["detection_thresholds"] = {
        "rule": "max-f1-iou50-bagged", "fitted": [], "thresholds": {c: cut for c in OBJECTS}}
    write_json_atomic(bundle / "manifest.json", manifest)
    assert main(["eval", "--bundle", str(bundle), "--data", str(data), "--json"]) == 0
    rate = json.loads(capsys.readouterr().out)["outside"]["nonroad_emergency_box_rate"]
    with Perception.load(bundle) as p:
        shown = [any(d.label == "emergency_vehicle" for d in p.infer(
            video_path=data / "media" / f"c{i:02d}.mp4", audio_path=data / "media" / f"c{i:02d}.wav").boxes)
            for i in range(2, 8)]
    assert 0 < sum(shown) < 6 and rate == pytest.approx(np.mean(shown))


def test_open_world_report_compares_bundles_in_a_table_with_a_reliability_diagram_each(toy, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    outside = _write_mixed(tmp_path / "outside", inside=0)
    out = tmp_path / "report"
    assert main(["report", "open-world", "--bundle", str(toy["plain"]), "--bundle", str(toy["calibrated"]),
                 "--test", str(toy["val"]), "--outside", str(outside), "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    plain, calibrated = r["bundles"].values()
    assert plain["calibrated"] is False and plain["outside"]["ood_auroc"] is None
    assert calibrated["calibrated"] is True and 0.0 <= calibrated["outside"]["ood_auroc"] <= 1.0
    assert plain["test"]["event_accuracy"] == calibrated["test"]["event_accuracy"]
    md = (out / "open_world.md").read_text()
    for label, row in r["bundles"].items():
        assert f"| {label} |" in md
        png = out / row["diagram"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "| false alarm |" in md.split("## Outside set")[1] and "| OOD AUROC |" in md
    assert main(["report", "open-world", "--bundle", str(toy["plain"]), "--test", str(toy["val"]),
                 "--outside", str(toy["val"]), "--out", str(out)]) == 2  # no outside block: one line, exit 2
    assert "outside" in capsys.readouterr().err


@pytest.mark.parametrize("field,value,message", [
    ("temperature", -1.0, "calibration.temperature"),
    ("tag_thresholds", {"siren": 0.5}, "calibration.tag_thresholds"),
    ("ood", {"score": "energy"}, "calibration.ood.score"),
    ("missing_modality", {"rule": "a-guess", "audio": {"alarm_decided": False}}, "calibration.missing_modality"),
    ("missing_modality", {"rule": "alarm-accuracy-3se-above-majority", "smell": {"alarm_decided": False}},
     "calibration.missing_modality.smell"),
    ("detection_thresholds", {"rule": "max-f1"}, "calibration.detection_thresholds"),
    ("detection_thresholds", {"rule": "max-f1-iou50-bagged", "thresholds": {"car": 0.4}},
     "calibration.detection_thresholds.thresholds"),
    ("detection_thresholds", {"rule": "max-f1-iou50-bagged", "thresholds": {c: 1.5 for c in OBJECTS}},
     "calibration.detection_thresholds.thresholds"),
])
def test_a_malformed_calibration_block_refuses_the_bundle_naming_the_field(toy, capsys, tmp_path, field, value,
                                                                           message):
    from fusionedge.sdk import Perception
    from fusionedge.sdk.fileio import write_json_atomic

    bundle = copy_bundle(toy["calibrated"], tmp_path / "bad")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["calibration"][field] = value
    write_json_atomic(bundle / "manifest.json", manifest)
    with pytest.raises(BundleError, match=message.replace(".", r"\.")):
        Perception.load(bundle)
    clip = toy["val"] / "media" / "c01"
    assert main(["predict", "--bundle", str(bundle), "--video", f"{clip}.mp4", "--audio", f"{clip}.wav"]) == 2
    assert message in capsys.readouterr().err


def test_a_modality_without_which_the_alarm_is_a_guess_is_found_on_validation():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)  # EVENTS: none, emergency_ahead, emergency_behind, lights_no_siren
    right = np.eye(4)[y] * 5.0  # the true event on top
    guess = rng.normal(size=(400, 4))  # an event at random
    out = fit_missing_modality({"video": right, "audio": guess}, y, EVENTS)
    assert out["video"]["alarm_decided"] is True and out["video"]["alarm_accuracy"] == 1.0
    assert out["audio"]["alarm_decided"] is False and abs(out["audio"]["alarm_accuracy"] - 0.5) < 0.1
    assert out["audio"]["samples"] == 400 and 0.5 <= out["audio"]["majority"] <= 0.6
    # a task none of whose events raise an alarm has no rule; bad logits are a typed error
    assert fit_missing_modality({"audio": guess}, y, ["a", "b", "c", "d"]) == {}
    with pytest.raises(InputError, match="without audio"):
        fit_missing_modality({"audio": guess[:10]}, y, EVENTS)
    with pytest.raises(InputError, match="NaN"):
        fit_missing_modality({"audio": np.full((400, 4), np.nan)}, y, EVENTS)


def test_the_calibrated_bundle_records_what_each_dead_sensor_leaves_and_a_guess_is_uncertain(toy, tmp_path):
    from fusionedge.sdk import Perception
    from fusionedge.sdk.fileio import write_json_atomic

    block = json.loads((toy["calibrated"] / "manifest.json").read_text())["calibration"]["missing_modality"]
    assert block["rule"] == "alarm-accuracy-3se-above-majority" and set(block) == {"rule", "video", "audio"}
    assert all(block[m]["samples"] == 16 and isinstance(block[m]["alarm_decided"], bool) for m in ("video", "audio"))
    clip = {"video_path": toy["val"] / "media" / "c05.mp4", "audio_path": toy["val"] / "media" / "c05.wav"}
    for needed, decided in (("audio", "video"), ("video", "audio")):
        bundle = copy_bundle(toy["calibrated"], tmp_path / f"needs-{needed}")
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["calibration"]["ood"].update(threshold=1e12, threshold_events_only=1e12)  # no clip is far
        manifest["calibration"]["missing_modality"][needed]["alarm_decided"] = False
        manifest["calibration"]["missing_modality"][decided]["alarm_decided"] = True
        write_json_atomic(bundle / "manifest.json", manifest)
        with Perception.load(bundle) as p:
            assert p.calibration.alarm_needs == (needed,)
            assert p.infer(**clip).uncertain is False  # both sensors: the OOD score alone decides
            without_needed = p.infer(**{k: v for k, v in clip.items() if not k.startswith(needed)})
            without_other = p.infer(**{k: v for k, v in clip.items() if not k.startswith(decided)})
        assert without_needed.missing == (needed,) and without_needed.uncertain is True
        assert without_needed.alarm is False
        assert without_other.missing == (decided,) and without_other.uncertain is False
    # a bundle calibrated before the rule existed reads as having none
    manifest = json.loads((toy["calibrated"] / "manifest.json").read_text())
    del manifest["calibration"]["missing_modality"]
    from fusionedge.sdk.calibration import Calibration

    old = Calibration.from_manifest(manifest)
    assert old.missing_modality == {} and old.is_uncertain(0.0, has_audio=False, has_video=True) is False


def test_calibrating_on_boxes_fits_each_class_threshold_and_the_runtime_shows_boxes_by_it(toy, tmp_path):
    """A validation set with boxes gets per-class detection thresholds in the manifest; Perception
    keeps a class's box only from its own threshold, and a caller's ``score_threshold`` still rules
    every class."""
    from fusionedge.export.calibrate import calibrate_bundle
    from fusionedge.sdk import Perception

    val = _write_set(tmp_path / "val", [EVENTS[i % 4] for i in range(8)])
    rows = [json.loads(line) for line in (val / "manifest.jsonl").read_text().splitlines()]
    g = TOY_GEOMETRY
    for i, row in enumerate(rows):  # a car in every clip, a pedestrian in every other one
        row["boxes"] = [{"label": "car", "box": [4 + i, 4, 4 + i + g.width // 3, 4 + g.height // 3]}]
        if i % 2:
            row["boxes"].append({"label": "pedestrian", "box": [g.width // 2, 8, g.width // 2 + 6, 26]})
    (val / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bundle = copy_bundle(toy["plain"], tmp_path / "b")
    summary = calibrate_bundle(bundle, val)
    block = json.loads((bundle / "manifest.json").read_text())["calibration"]["detection_thresholds"]
    assert block["rule"] == "max-f1-iou50-bagged" and set(block["thresholds"]) == set(OBJECTS)
    assert block["fitted"] == ["car", "pedestrian"]  # the classes with true boxes
    assert all(block["thresholds"][c] == 0.3 for c in ("traffic_light", "emergency_vehicle"))
    assert set(summary["validation"]["detection_f1_after"]) == {"car", "pedestrian"}

    # the runtime applies whatever the block says: one class shown from 0, the others never
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["calibration"]["detection_thresholds"] = {
        "rule": "max-f1-iou50-bagged", "fitted": ["car"], "thresholds": {c: 0.0 if c == "car" else 1.0 for c in OBJECTS}}
    from fusionedge.sdk.fileio import write_json_atomic

    write_json_atomic(bundle / "manifest.json", manifest)
    clip = {"video_path": val / "media" / "c03.mp4", "audio_path": val / "media" / "c03.wav"}
    with Perception.load(bundle, top_k=10_000) as p, \
            Perception.load(bundle, score_threshold=0.0, top_k=10_000) as everything:
        assert p.detection_thresholds == {c: 0.0 if c == "car" else 1.0 for c in OBJECTS}
        shown, all_peaks = p.infer(**clip).boxes, everything.infer(**clip).boxes
    assert shown and {d.label for d in shown} == {"car"}
    assert {d.label for d in all_peaks} == set(OBJECTS)  # every class has a local maximum at score 0
    assert shown == [d for d in all_peaks if d.label == "car"]
