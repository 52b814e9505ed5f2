"""TensorRT plan cache: fingerprints, refusal reasons, L4T parsing, network flags; a real build where TensorRT is.

The FakeTensorRT below is a stand-in *only* for the version/enum lookups of our own
``network_flags`` logic (TensorRT 10 vs 11); the real build test needs TensorRT and a GPU.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import types

import pytest

from _precision_fixtures import int8_variant, student_bundle
from fusionedge.sdk.engine_build import EngineBuildError, build_engine, network_flags
from fusionedge.sdk.bundle import load_bundle
from fusionedge.sdk.errors import BackendError
from fusionedge.sdk.engine_fingerprint import (
    EngineFingerprint,
    EngineMismatchError,
    check_fingerprint,
    device_fingerprint,
    plan_paths,
    read_l4t_release,
    shape_profile,
)

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _fp(manifest, cc="8.7", trt="10.3.0", l4t="36.4.0"):
    return device_fingerprint(manifest, compute_capability=cc, trt_version=trt, l4t=l4t)


def _write_plan(engines, fp, data=b"plan-bytes"):
    engines.mkdir(exist_ok=True)
    plan, side = plan_paths(engines, fp)
    plan.write_bytes(data)
    side.write_text(json.dumps({"fingerprint": fp.to_dict(), "plan_sha256": hashlib.sha256(data).hexdigest()}))
    return plan


def test_fingerprint_fields_and_key(tmp_path_factory):
    m = load_bundle(student_bundle(tmp_path_factory)).manifest
    fp = _fp(m)
    assert fp.profile == shape_profile(m)
    assert fp.profile["video"] == [[1, 4, 3, 96, 160], [1, 4, 3, 96, 160], [m["batch"]["max"], 4, 3, 96, 160]]
    assert fp.onnx_sha256 == m["files"]["model.onnx"]["sha256"] and fp.precision == "fp32"
    assert fp.key == _fp(m).key and len(fp.key) == 24
    assert EngineFingerprint.from_dict(json.loads(json.dumps(fp.to_dict()))) == fp
    assert len({fp.key, _fp(m, cc="9.0").key, _fp(m, trt="11.0.0").key, _fp(m, l4t=None).key}) == 4
    int8 = load_bundle(int8_variant(tmp_path_factory)).manifest
    assert _fp(int8).precision == "int8" and _fp(int8).key != fp.key


@pytest.mark.parametrize("field,value,reason", [
    ("cc", "9.0", "compute capability 8.7, this device/bundle has 9.0"),
    ("trt", "11.0.0", "TensorRT 10.3.0"),
    ("l4t", None, "L4T release 36.4.0"),
])
def test_plan_from_another_device_is_refused_with_reason(tmp_path, tmp_path_factory, field, value, reason):
    m = load_bundle(student_bundle(tmp_path_factory)).manifest
    plan = _write_plan(tmp_path / "engines", _fp(m))
    assert check_fingerprint(plan, _fp(m)) == _fp(m)
    with pytest.raises(EngineMismatchError, match=reason.replace(".", r"\.")):
        check_fingerprint(plan, _fp(m, **{field: value}))


def test_plan_for_another_model_or_corrupted_is_refused(tmp_path, tmp_path_factory):
    m = load_bundle(student_bundle(tmp_path_factory)).manifest
    m8 = load_bundle(int8_variant(tmp_path_factory)).manifest
    plan = _write_plan(tmp_path / "engines", _fp(m))
    with pytest.raises(EngineMismatchError, match="precision fp32"):
        check_fingerprint(plan, _fp(m8))
    plan.write_bytes(b"plan-bytez")
    with pytest.raises(EngineMismatchError, match="sha256 mismatch"):
        check_fingerprint(plan, _fp(m))
    plan.with_suffix(".json").unlink()
    with pytest.raises(EngineMismatchError, match="no sidecar"):
        check_fingerprint(plan, _fp(m))
    with pytest.raises(EngineMismatchError, match="no such plan"):
        check_fingerprint(tmp_path / "engines" / "missing.plan", _fp(m))


def test_read_l4t_release(tmp_path):
    f = tmp_path / "nv_tegra_release"
    f.write_text("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n")
    assert read_l4t_release(f) == "36.4.0"
    assert read_l4t_release(tmp_path / "absent") is None
    f.write_text("garbage")
    with pytest.raises(BackendError, match="L4T release"):
        read_l4t_release(f)


def _fake_trt(version):
    """FakeTensorRT: only the version string and the creation-flag enum network_flags reads."""
    flags = types.SimpleNamespace(STRONGLY_TYPED=0)
    return types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flags)


def test_network_flags_strongly_typed_on_10_none_on_11():
    assert network_flags(_fake_trt("10.3.0")) == 1
    assert network_flags(_fake_trt("11.0.0.4")) == 0
    with pytest.raises(EngineBuildError, match="too old"):
        network_flags(_fake_trt("8.6.1"))


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown where TensorRT is absent")
def test_build_without_tensorrt_is_a_typed_error(tmp_path_factory):
    with pytest.raises(EngineBuildError, match="TensorRT is not installed"):
        build_engine(student_bundle(tmp_path_factory), progress=False)


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT and a CUDA GPU (not on this machine)")
def test_real_build_writes_plan_and_sidecar(tmp_path, tmp_path_factory):
    import shutil

    bundle = shutil.copytree(student_bundle(tmp_path_factory), tmp_path / "b")
    plan = build_engine(bundle, progress=False)
    side = json.loads(plan.with_suffix(".json").read_text())
    assert side["key"] == plan.stem and (bundle / "engines" / "timing.cache").is_file()
    assert build_engine(bundle, progress=False) == plan  # cached


@pytest.mark.parametrize("text, words", [
    ("[" * 100_000 + "]" * 100_000, "nested more than"),
    ('{"fingerprint": ' + "1" * 5000 + "}", "an integer of 5000 digits"),
    ("{", "not valid JSON"),
], ids=["deep", "long-int", "truncated"])
def test_hostile_sidecar_is_refused_with_a_typed_error(tmp_path, tmp_path_factory, text, words):
    m = load_bundle(student_bundle(tmp_path_factory)).manifest
    plan = _write_plan(tmp_path / "engines", _fp(m))
    plan.with_suffix(".json").write_text(text)
    with pytest.raises(EngineMismatchError, match=rf"{plan.stem}\.json: .*{words}.*; rebuild the plan"):
        check_fingerprint(plan, _fp(m))
