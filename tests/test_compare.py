"""``fusionedge compare``: every backend and precision variant against the FP32 reference."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest

from _precision_fixtures import fp16_variant, int8_variant, student_bundle, synth_data
from fusionedge.cli.compare import add_compare_parser
from fusionedge.export.compare import compare, output_errors
from fusionedge.sdk.errors import InputError


def _cli(argv):
    ap = argparse.ArgumentParser()
    add_compare_parser(ap.add_subparsers(dest="verb"))
    args = ap.parse_args(["compare", *argv])
    return args.func(args)


def test_output_errors_metrics():
    ref = {"a": np.array([1.0, 2.0, -3.0])}
    errs = output_errors({"a": np.array([1.0, 2.5, -3.0])}, ref, rtol=0.0, atol=0.1)
    assert errs[0].max_abs == pytest.approx(0.5) and errs[0].max_rel == pytest.approx(0.25)
    assert 0.98 < errs[0].cosine < 1.0 and not errs[0].allclose
    with pytest.raises(InputError, match="shape"):
        output_errors({"a": np.zeros(2)}, ref, rtol=0, atol=0)


def test_compare_all_variants_and_skip_unavailable(tmp_path_factory):
    fp32 = student_bundle(tmp_path_factory)
    report = compare(fp32, ["onnxruntime", "tensorrt", "onnxruntime-cuda"],
                     variants=[fp16_variant(tmp_path_factory), int8_variant(tmp_path_factory)],
                     data=synth_data(tmp_path_factory), data_limit=8)
    ort = {r.precision: r for r in report.results if r.backend == "onnxruntime"}
    assert set(ort) == {"fp32", "fp16", "int8"} and all(r.status == "ok" for r in ort.values())
    assert ort["fp32"].outputs[0].max_abs < 1e-3 and ort["fp16"].outputs[0].cosine > 0.999
    skipped = [r for r in report.results if r.status == "skipped"]
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        assert any(r.backend == "tensorrt" and "tensorrt" in r.reason for r in skipped)
    assert report.ok


def test_cli_exits_nonzero_beyond_tolerance(tmp_path, tmp_path_factory, capsys):
    fp32 = student_bundle(tmp_path_factory)
    # a "variant" whose model differs: the INT8 model relabelled fp32 must fail the strict fp32 check
    fake = shutil.copytree(int8_variant(tmp_path_factory), tmp_path / "relabelled")
    manifest = json.loads((fake / "manifest.json").read_text())
    manifest["precision"] = "fp32"
    (fake / "manifest.json").write_text(json.dumps(manifest))
    assert _cli(["--bundle", str(fp32), "--variant", str(fake), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    bad = [r for r in out["results"] if r["status"] == "fail"]
    assert not out["ok"] and len(bad) == 1 and "outside rtol" in bad[0]["reason"]
    assert _cli(["--bundle", str(fp32), "--variant", str(fp16_variant(tmp_path_factory))]) == 0


def test_unknown_backend_is_refused(tmp_path_factory):
    with pytest.raises(InputError, match="unknown backend"):
        compare(student_bundle(tmp_path_factory), ["onnxruntime", "tpu"])
