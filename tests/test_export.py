"""ONNX export, checks, parity and the atomic bundle writer (fusionedge.export)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from _toy_model import TOY_GEOMETRY, DivergentToyFusionNet, make_toy, shared_toy_bundle, shared_toy_model
from fusionedge.export import (
    ExportError,
    ParityError,
    check_onnx,
    check_parity,
    example_inputs,
    export_model,
    export_onnx,
    make_golden,
    write_bundle,
)
from fusionedge.export.parity import DEFAULT_ATOL, DEFAULT_RTOL
from fusionedge.sdk.bundle import load_bundle
from fusionedge.sdk.spec import INPUT_NAMES, OUTPUT_NAMES


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="session")
def batch1_onnx(tmp_path_factory) -> Path:
    """The trap: the toy model exported from a batch-1 example."""
    model, _ = make_toy()
    return export_onnx(model, TOY_GEOMETRY, tmp_path_factory.mktemp("b1") / "b1.onnx", example_batch=1)


def _no_leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_exported_graph_has_contract_names_and_dynamic_batch(bundle_dir):
    model = onnx.load(str(bundle_dir / "model.onnx"))
    assert [i.name for i in model.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param, f"{value.name} has a fixed batch"
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    assert not list(bundle_dir.glob("*.data")), "weights must be inside model.onnx"
    check_onnx(bundle_dir / "model.onnx")  # does not raise


def test_parity_at_batch_1_and_3_is_recorded_within_tolerance(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    parity = manifest["export"]["parity"]
    assert parity["batches"] == [1, 3]
    assert (parity["rtol"], parity["atol"]) == (DEFAULT_RTOL, DEFAULT_ATOL)
    assert (manifest["golden"]["rtol"], manifest["golden"]["atol"]) == (DEFAULT_RTOL, DEFAULT_ATOL)
    results = parity["results"]
    assert {(r["batch"], r["output"]) for r in results} == {(b, o) for b in (1, 3) for o in OUTPUT_NAMES}
    assert all(r["ok"] and r["max_abs"] <= DEFAULT_ATOL for r in results)

    model, _ = shared_toy_model()
    report = check_parity(model, bundle_dir / "model.onnx", TOY_GEOMETRY, batches=(1, 3, 5))
    assert report.ok and report.batches == (1, 3, 5)
    assert report.max_abs < DEFAULT_ATOL


def test_batch1_example_passes_at_batch_1_but_parity_catches_it_at_batch_3(batch1_onnx):
    model, _ = make_toy()
    dims = [d.dim_value for d in onnx.load(str(batch1_onnx)).graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == 1, "the exporter was expected to fix the batch to 1 (the trap this check exists for)"
    onnx.checker.check_model(str(batch1_onnx), full_check=True)  # the checker alone does not notice
    assert check_parity(model, batch1_onnx, TOY_GEOMETRY, batches=(1,)).ok  # nor does batch 1
    with pytest.raises(ExportError, match="batch 3"):
        check_parity(model, batch1_onnx, TOY_GEOMETRY, batches=(1, 3))
    with pytest.raises(ExportError, match="fixed batch dimension"):
        check_onnx(batch1_onnx)


def test_example_inputs_are_deterministic_and_zero_missing_modalities():
    a = example_inputs(TOY_GEOMETRY, 3, seed=7)
    b = example_inputs(TOY_GEOMETRY, 3, seed=7)
    for name in INPUT_NAMES:
        np.testing.assert_array_equal(a[name], b[name])
        assert a[name].dtype == np.float32
    np.testing.assert_array_equal(a["presence"], [[1, 1], [1, 0], [0, 1]])
    assert not a["audio"][1].any() and not a["video"][2].any()
    assert a["video"][0].any() and a["audio"][0].any()
    assert a["video"].shape == (3, 2, 3, 32, 48) and a["audio"].shape == (3, 2000)


def test_divergent_model_fails_parity_and_leaves_nothing(tmp_path):
    model, info = make_toy(DivergentToyFusionNet)
    out = tmp_path / "bundle"
    with pytest.raises(ParityError, match="event_logits") as caught:
        export_model(model, info, out, progress=False)
    report = caught.value.report
    assert not report.ok
    assert {f.output for f in report.failures()} == {"event_logits"}
    assert min(f.max_abs for f in report.failures()) == pytest.approx(0.5, abs=1e-4)
    assert not out.exists()
    assert _no_leftovers(tmp_path) == []


def _write_args(bundle_dir: Path):
    model, info = shared_toy_model()
    parity = check_parity(model, bundle_dir / "model.onnx", TOY_GEOMETRY)
    golden_in, golden_out = make_golden(model, TOY_GEOMETRY)
    return info, parity, golden_in, golden_out


def test_write_bundle_refuses_a_non_empty_target_and_overwrites_atomically(bundle_dir, tmp_path):
    info, parity, gi, go = _write_args(bundle_dir)
    out = tmp_path / "b"
    write_bundle(out, bundle_dir / "model.onnx", info, parity, gi, go, version="1.0.0")
    with pytest.raises(ExportError, match="not empty"):
        write_bundle(out, bundle_dir / "model.onnx", info, parity, gi, go, version="2.0.0")
    assert load_bundle(out).version == "1.0.0"
    write_bundle(out, bundle_dir / "model.onnx", info, parity, gi, go, version="2.0.0", overwrite=True,
                 metrics={"event_accuracy": np.float32(0.75)})
    bundle = load_bundle(out)
    assert bundle.version == "2.0.0" and bundle.manifest["metrics"] == {"event_accuracy": 0.75}
    assert _no_leftovers(tmp_path) == []


def test_write_bundle_failing_mid_write_leaves_nothing(bundle_dir, tmp_path):
    info, parity, gi, go = _write_args(bundle_dir)
    bad = dict(gi, video=gi["video"][:, :1])  # a golden input that disagrees with the geometry
    out = tmp_path / "b"
    with pytest.raises(ExportError, match="video"):
        write_bundle(out, bundle_dir / "model.onnx", info, parity, bad, go)
    assert not out.exists() and _no_leftovers(tmp_path) == []
    with pytest.raises(ExportError, match="labels"):
        write_bundle(out, bundle_dir / "model.onnx", {k: v for k, v in info.items() if k != "labels"},
                     parity, gi, go)
    assert not out.exists() and _no_leftovers(tmp_path) == []


def test_export_checkpoint_of_a_registered_training_model(tmp_path, capsys):
    """End to end with the real training package: save_checkpoint -> export_checkpoint -> load_bundle."""
    pytest.importorskip("fusionedge.training.checkpoint")
    from fusionedge.export import export_checkpoint
    from fusionedge.sdk.bundle import sha256_file
    from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS, InputGeometry
    from fusionedge.training.checkpoint import save_checkpoint
    from fusionedge.training.models.registry import create_model

    import torch

    torch.manual_seed(0)
    geometry = InputGeometry(clip_frames=2, height=32, width=48, clip_seconds=0.25, sample_rate=16000)
    model = create_model("fusion_student", clip_frames=2, height=32, width=48,
                         audio_samples=geometry.audio_samples).eval()
    ckpt = save_checkpoint(
        tmp_path / "model.pt", model, model_name="fusion_student", model_config=model.config.to_dict(),
        geometry=geometry, labels={"events": EVENTS, "audio_tags": AUDIO_TAGS, "objects": OBJECTS},
        metrics={"val_loss": 1.0}, epoch=1,
    )
    out = export_checkpoint(ckpt, tmp_path / "bundle", name="student", version="0.2.0", progress=False)
    bundle = load_bundle(out)
    assert bundle.model_id == "student@0.2.0"
    assert bundle.manifest["source"]["checkpoint_sha256"] == sha256_file(ckpt)
    assert bundle.manifest["source"]["model_name"] == "fusion_student"
    assert bundle.geometry == geometry
    with pytest.raises(ExportError, match="not found"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path / "other", progress=False)

    from fusionedge.cli.main import main

    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "b2"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"bundle": str(tmp_path / "b2"), "digest": load_bundle(tmp_path / "b2").digest}
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "b2"), "--overwrite"]) == 0
    assert f"digest sha256:{load_bundle(tmp_path / 'b2').digest}" in capsys.readouterr().out


def test_write_bundle_lists_and_hashes_external_data_files(bundle_dir, tmp_path):
    """A model too large for one protobuf keeps its weights in side files: each is copied, listed, hashed."""
    from _tamper import externalize
    from fusionedge.sdk.bundle import sha256_file
    from fusionedge.sdk.selftest import run_golden

    src = tmp_path / "src"
    src.mkdir()
    externalize(bundle_dir / "model.onnx", src / "big.onnx", "big.onnx.data")
    info, parity, gi, go = _write_args(bundle_dir)
    out = write_bundle(tmp_path / "b", src / "big.onnx", info, parity, gi, go)
    files = load_bundle(out).manifest["files"]
    assert sorted(files) == ["big.onnx.data", "golden.npz", "model.onnx"]
    assert files["big.onnx.data"]["sha256"] == sha256_file(src / "big.onnx.data")
    assert run_golden(out).max_abs_err < 1e-4  # the model in the bundle reads the copied weights


def test_write_bundle_refuses_external_data_outside_the_bundle(bundle_dir, tmp_path):
    from _tamper import externalize

    src = tmp_path / "src"
    src.mkdir()
    externalize(bundle_dir / "model.onnx", src / "m.onnx", "weights.bin")
    model = onnx.load(str(src / "m.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    onnx.save(model, str(src / "m.onnx"))
    info, parity, gi, go = _write_args(bundle_dir)
    with pytest.raises(ExportError, match=r"external data '\.\./weights\.bin': expected a relative path inside"):
        write_bundle(tmp_path / "b", src / "m.onnx", info, parity, gi, go)
    assert not (tmp_path / "b").exists()


def test_write_bundle_refuses_non_finite_golden_outputs(bundle_dir, tmp_path):
    info, parity, gi, go = _write_args(bundle_dir)
    bad = dict(go, det_size=np.full_like(go["det_size"], np.inf))
    with pytest.raises(ExportError, match=r"golden output 'det_size' holds Inf"):
        write_bundle(tmp_path / "b", bundle_dir / "model.onnx", info, parity, gi, bad)
    assert not (tmp_path / "b").exists() and _no_leftovers(tmp_path) == []


def test_variant_of_a_model_computing_nan_is_not_written(bundle_dir, tmp_path):
    """The variant writer records golden outputs by running the variant: NaN there is refused."""
    from _tamper import poison_initializer
    from _toy_model import copy_bundle
    from fusionedge.export.quantize import write_variant_bundle

    broken = copy_bundle(bundle_dir, tmp_path / "broken")
    poison_initializer(broken, "event.bias")
    with pytest.raises(ExportError, match=r"golden output 'event_logits' holds NaN"):
        write_variant_bundle(load_bundle(bundle_dir), broken / "model.onnx", tmp_path / "v", precision="fp16",
                             variant={"kind": "fp16"}, golden_tol={"rtol": 1e-2, "atol": 1e-2})
    assert not (tmp_path / "v").exists()
