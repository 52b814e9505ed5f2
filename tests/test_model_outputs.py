"""A model whose outputs cannot be trusted (NaN/Inf) is refused, and the golden self-test catches it.

The bundles here pass every file hash: the model itself was exported (or altered and re-hashed) so
that it computes NaN. The runtime must refuse its outputs with a typed error, never turn them into
an answer such as ``event: none``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _tamper import edit_manifest, poison_initializer, write_clip, write_dataset
from _toy_model import copy_bundle, shared_toy_bundle
from fusionedge.cli.main import main
from fusionedge.sdk import Perception
from fusionedge.sdk.backends import get_backend
from fusionedge.sdk.bundle import load_bundle
from fusionedge.sdk.errors import BackendError, BundleError, NonFiniteOutputError
from fusionedge.sdk.evaluate import evaluate
from fusionedge.sdk.selftest import run_golden


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture
def nan_bundle(bundle_dir, tmp_path) -> Path:
    """The toy bundle with the event head's bias set to NaN, every hash valid."""
    copy = copy_bundle(bundle_dir, tmp_path / "nan")
    poison_initializer(copy, "event.bias")
    load_bundle(copy)  # the hashes verify: only the outputs are wrong
    return copy


def test_backend_refuses_nan_outputs_naming_the_output(nan_bundle):
    bundle = load_bundle(nan_bundle)
    inputs, _ = bundle.golden()
    message = r"^onnxruntime: output 'event_logits' holds NaN \(first at index \(0, 0\), "
    with get_backend("onnxruntime").load(bundle.model_path, bundle.manifest) as backend, \
            pytest.raises(NonFiniteOutputError, match=message):
        backend.infer(inputs)


def test_inf_outputs_are_refused_too(bundle_dir, tmp_path):
    copy = copy_bundle(bundle_dir, tmp_path / "inf")
    poison_initializer(copy, "tags.bias", float("inf"))
    with Perception.load(copy) as p:
        inputs, _ = p.bundle.golden()
        with pytest.raises(NonFiniteOutputError, match=r"output 'audio_tag_logits' holds Inf"):
            p.infer_batch(inputs["video"], inputs["audio"], inputs["presence"])


def test_perception_infer_refuses_instead_of_answering(nan_bundle):
    frames = np.random.default_rng(0).integers(0, 256, (4, 64, 96, 3), dtype=np.uint8)
    with Perception.load(nan_bundle) as p, pytest.raises(BackendError, match="event_logits"):
        p.infer(video=frames)


def test_evaluate_refuses(nan_bundle, tmp_path):
    data = write_dataset(tmp_path / "data")
    with Perception.load(nan_bundle) as p, pytest.raises(NonFiniteOutputError):
        evaluate(p, data, progress=False)


def test_predict_and_eval_exit_2_with_one_line(nan_bundle, tmp_path, capsys):
    video, audio = write_clip(tmp_path / "clip")
    data = write_dataset(tmp_path / "data")
    assert main(["predict", "--bundle", str(nan_bundle), "--video", str(video), "--audio", str(audio),
                 "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "output 'event_logits' holds NaN" in err
    assert main(["eval", "--bundle", str(nan_bundle), "--data", str(data), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "output 'event_logits' holds NaN" in err


def test_run_golden_passes_a_good_bundle_and_reports(bundle_dir):
    report = run_golden(bundle_dir)
    assert report.backend == "onnxruntime" and report.model == "toy@0.1.0"
    assert 0 <= report.max_abs_err <= load_bundle(bundle_dir).manifest["golden"]["atol"]
    assert set(report.outputs) == {"event_logits", "audio_tag_logits", "det_heatmap", "det_size", "det_offset"}


def test_run_golden_refuses_a_nan_model(nan_bundle):
    with pytest.raises(NonFiniteOutputError, match="event_logits"):
        run_golden(nan_bundle)


def test_run_golden_refuses_a_golden_file_holding_nan(bundle_dir, tmp_path):
    copy = copy_bundle(bundle_dir, tmp_path / "g")
    with np.load(copy / "golden.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["output.det_size"] = np.full_like(arrays["output.det_size"], np.nan)
    np.savez(copy / "golden.npz", **arrays)
    from _tamper import rehash

    rehash(copy, "golden.npz")
    with pytest.raises(BundleError, match=r"golden\.npz: output 'det_size' holds NaN"):
        run_golden(copy)


def test_run_golden_refuses_outputs_outside_the_tolerance(bundle_dir, tmp_path):
    copy = copy_bundle(bundle_dir, tmp_path / "t")
    poison_initializer(copy, "event.bias", 0.25)  # finite, but not what the golden outputs recorded
    with pytest.raises(BundleError, match=r"output 'event_logits' differs from the golden outputs"):
        run_golden(copy)
    with Perception.load(copy) as p, pytest.raises(BundleError, match=r"output 'event_logits' differs"):
        p.self_test()  # the same check through the loaded runtime



def test_run_golden_checks_the_pinned_digest(bundle_dir, tmp_path):
    copy = copy_bundle(bundle_dir, tmp_path / "d")
    edit_manifest(copy, lambda m: m["golden"].update(atol=1.0, rtol=1.0))  # loosened tolerance
    with pytest.raises(BundleError, match="digest mismatch"):
        run_golden(copy, expected_digest=load_bundle(bundle_dir).digest)
