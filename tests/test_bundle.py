"""Bundle loading and verification (fusionedge.sdk.bundle): round trip, tampering, schema errors."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from _toy_model import TOY_GEOMETRY, copy_bundle, shared_toy_bundle
from fusionedge.sdk.bundle import (
    load_bundle,
    manifest_digest,
    sha256_file,
    update_bundle_metrics,
    validate_manifest,
)
from fusionedge.sdk.errors import BundleError, InputError
from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, INPUT_NAMES, OBJECTS, OUTPUT_NAMES


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture
def copy(bundle_dir, tmp_path) -> Path:
    return copy_bundle(bundle_dir, tmp_path / "bundle")


def _edit_manifest(root: Path, edit) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_round_trip(bundle_dir):
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    assert bundle.verified and bundle.model_path == bundle_dir / "model.onnx"
    assert bundle.geometry == TOY_GEOMETRY
    assert bundle.labels == {"events": EVENTS, "objects": OBJECTS, "audio_tags": AUDIO_TAGS}
    assert bundle.model_id == "toy@0.1.0" and bundle.precision == "fp32"
    assert m["schema_version"] == 2 and m["task"] == "fusion" and bundle.task == "fusion"
    assert m["created"].endswith("Z")
    datetime.fromisoformat(m["created"].replace("Z", "+00:00"))
    assert m["source"]["model_name"] == "toy" and m["source"]["checkpoint_sha256"] is None
    assert m["source"]["git_rev"] is None or len(m["source"]["git_rev"]) == 40
    assert [i["name"] for i in m["inputs"]] == list(INPUT_NAMES)
    assert [i["modality"] for i in m["inputs"]] == ["video", "audio", "vector"]
    assert m["inputs"][0]["shape"] == ["batch", 2, 3, 32, 48] and m["inputs"][0]["layout"] == "NTCHW"
    assert m["inputs"][0]["preprocessing"]["resize"] == "area-stretch"
    assert m["inputs"][1]["preprocessing"] == {"sample_rate": 8000, "clip_seconds": 0.25, "channels": 1}
    assert [o["name"] for o in m["outputs"]] == list(OUTPUT_NAMES)
    assert m["outputs"][2]["shape"] == ["batch", len(OBJECTS), 8, 12]
    assert set(m["files"]) == {"model.onnx", "golden.npz"}
    for rel, entry in m["files"].items():
        assert entry == {"sha256": sha256_file(bundle_dir / rel), "size": (bundle_dir / rel).stat().st_size}
    assert m["batch"] == {"min": 1, "opt": 1, "max": 32}
    inputs, outputs = bundle.golden()
    assert set(inputs) == set(INPUT_NAMES) and set(outputs) == set(OUTPUT_NAMES)
    assert inputs["video"].shape == (3, 2, 3, 32, 48) and outputs["det_heatmap"].shape == (3, 4, 8, 12)
    assert m["golden"]["batch"] == 3


def test_altered_model_is_refused_naming_the_file(copy):
    model = copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"^model\.onnx: sha256 mismatch \(expected [0-9a-f]{12}…, got "):
        load_bundle(copy)
    assert load_bundle(copy, verify=False).model_path == model  # verification can be skipped on purpose


def test_truncated_file_is_refused(copy):
    golden = copy / "golden.npz"
    golden.write_bytes(golden.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"^golden\.npz: size mismatch \(expected \d+ bytes, got 100\)"):
        load_bundle(copy)


def test_missing_file_is_refused(copy):
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"^model\.onnx: missing"):
        load_bundle(copy)
    with pytest.raises(BundleError, match=r"^model\.onnx: missing"):
        load_bundle(copy, verify=False)


def test_not_a_bundle_and_bad_json(copy, tmp_path):
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path / "nowhere")
    (copy / "manifest.json").write_text('{"schema_version": 1,')
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON \(line 1"):
        load_bundle(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        load_bundle(copy)


def _set(path: str, value):
    """An edit that sets (or with value=KeyError deletes) a field given as 'a.b[1].c'."""
    keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]

    def edit(manifest):
        obj = manifest
        for k in keys[:-1]:
            obj = obj[k]
        if value is KeyError:
            del obj[keys[-1]]
        else:
            obj[keys[-1]] = value

    return edit


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("inputs[1].shape", KeyError, r"field 'inputs\[1\]\.shape': missing"),
        ("inputs[1].shape", "batch", r"field 'inputs\[1\]\.shape': expected a list, got str"),
        ("inputs[0].shape", [1, 2, 3, 32, 48], r"field 'inputs\[0\]\.shape\[0\]': expected 'batch'"),
        ("inputs[0].shape", ["batch", 2, -3, 32, 48],
         r"field 'inputs\[0\]\.shape\[2\]': expected a positive"),
        ("inputs[0].modality", "smell", r"field 'inputs\[0\]\.modality': expected one of"),
        ("inputs[0].preprocessing.mean", [0.5, 0.5],
         r"field 'inputs\[0\]\.preprocessing\.mean': expected a list of 3"),
        ("inputs[1].preprocessing.sample_rate", 0,
         r"field 'inputs\[1\]\.preprocessing\.sample_rate': expected a value > 0"),
        ("outputs[3].decode", "magic", r"field 'outputs\[3\]\.decode': expected one of"),
        ("outputs", [], r"field 'outputs': expected a non-empty list"),
        ("name", 7, r"field 'name': expected a string, got int"),
        ("created", "yesterday", r"field 'created': expected an ISO-8601 time"),
        ("source", KeyError, r"field 'source': missing"),
        ("source.checkpoint_sha256", "abc", r"field 'source\.checkpoint_sha256': expected 64 hex digits"),
        ("labels.events", ["none", 3], r"field 'labels\.events\[1\]': expected a non-empty string"),
        ("geometry.height", 32.5, r"field 'geometry\.height': expected an integer, got float"),
        ("precision", "fp64", r"field 'precision': expected one of"),
        ("metrics", None, r"field 'metrics': expected an object, got null"),
        ("golden.rtol", "1e-3", r"field 'golden\.rtol': expected a finite number, got str"),
        ("golden.file", "other.npz", r"field 'golden\.file': 'other\.npz' is not listed in 'files'"),
        ("batch.max", 0, r"field 'batch': expected 1 <= min <= opt <= max"),
        ("schema_version", True, r"field 'schema_version': expected an integer, got bool"),
    ],
)
def test_manifest_field_errors_name_the_field(copy, field, value, message):
    _edit_manifest(copy, _set(field, value))
    with pytest.raises(BundleError, match=r"^manifest\.json: " + message):
        load_bundle(copy)


def test_unsafe_file_paths_bad_hashes_and_unknown_schema_version(copy, bundle_dir):
    original = (bundle_dir / "manifest.json").read_text()
    cases = [
        (lambda m: m["files"]["golden.npz"].update(sha256="XYZ"),
         r"field 'files\['golden\.npz'\]\.sha256': expected 64 lowercase hex"),
        (lambda m: m["files"].pop("model.onnx"), r"field 'files': expected an entry for model\.onnx"),
        (lambda m: m["files"].update({"../escape": {"sha256": "0" * 64, "size": 1}}),
         r"field 'files\['\.\./escape'\]': expected a relative path inside"),
        (_set("schema_version", 3), r"schema_version 3 is not supported by this runtime"),
    ]
    for edit, message in cases:
        (copy / "manifest.json").write_text(original)
        _edit_manifest(copy, edit)
        with pytest.raises(BundleError, match=message):
            load_bundle(copy)
    with pytest.raises(BundleError, match="expected a JSON object"):
        validate_manifest([1, 2])


def test_golden_without_an_output_is_refused(copy):
    bundle = load_bundle(copy)
    inputs, outputs = bundle.golden()
    arrays = {f"input.{k}": v for k, v in inputs.items()}
    arrays.update({f"output.{k}": v for k, v in outputs.items() if k != "det_size"})
    np.savez(copy / "golden.npz", **arrays)
    _edit_manifest(copy, lambda m: m["files"]["golden.npz"].update(
        sha256=sha256_file(copy / "golden.npz"), size=(copy / "golden.npz").stat().st_size))
    with pytest.raises(BundleError, match=r"golden\.npz: no array 'output\.det_size'"):
        load_bundle(copy).golden()


def test_update_bundle_metrics_is_atomic_and_keeps_the_bundle_valid(copy):
    before = json.loads((copy / "manifest.json").read_text())
    metrics = {"event_accuracy": np.float64(0.875), "per_class": {"none": np.float32(0.5)}, "samples": 8,
               "backend": "onnxruntime"}
    updated = update_bundle_metrics(copy, metrics)
    assert updated["metrics"] == {"event_accuracy": 0.875, "per_class": {"none": 0.5}, "samples": 8,
                                  "backend": "onnxruntime"}
    bundle = load_bundle(copy, expected_digest=manifest_digest(before))  # metrics are outside the digest
    assert bundle.manifest["metrics"]["event_accuracy"] == 0.875
    assert {k: v for k, v in bundle.manifest.items() if k != "metrics"} == {
        k: v for k, v in before.items() if k != "metrics"}
    assert sorted(p.name for p in copy.iterdir()) == ["golden.npz", "manifest.json", "model.onnx"]

    with pytest.raises(InputError, match="cannot write as JSON"):
        update_bundle_metrics(copy, {"bad": object()})
    with pytest.raises(InputError, match="must be a mapping"):
        update_bundle_metrics(copy, [1, 2])  # type: ignore[arg-type]
    assert load_bundle(copy).manifest["metrics"]["event_accuracy"] == 0.875  # unchanged by the failures
    assert sorted(p.name for p in copy.iterdir()) == ["golden.npz", "manifest.json", "model.onnx"]
