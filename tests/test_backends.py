"""Inference backends (fusionedge.sdk.backends): the checking interface, the registry, ONNX Runtime.

The contract test at the bottom runs every registered backend that is available on this machine
against the bundle's golden outputs, so a new backend is tested the day it is registered.
"""

from __future__ import annotations

import numpy as np
import pytest

from _toy_model import shared_toy_bundle
from fusionedge.sdk import backends
from fusionedge.sdk.backends import (
    Backend,
    ModelIO,
    available_backends,
    get_backend,
    register_backend,
    registered_backends,
)
from fusionedge.sdk.backends.onnxruntime import OnnxRuntimeBackend
from fusionedge.sdk.bundle import load_bundle
from fusionedge.sdk.errors import BackendError, InputError


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    return load_bundle(shared_toy_bundle(tmp_path_factory))


@pytest.fixture(scope="module")
def ort_backend(bundle):
    with get_backend("onnxruntime", intra_op_threads=1).load(bundle.model_path, bundle.manifest) as b:
        yield b


@pytest.fixture
def feeds(bundle):
    inputs, _ = bundle.golden()
    return {k: v[:2].copy() for k, v in inputs.items()}


def _with(feeds, name, value):
    out = dict(feeds)
    if value is None:
        del out[name]
    else:
        out[name] = value
    return out


def _nan(a, value=np.nan):
    a = a.copy()
    a.flat[5] = value
    return a


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda f: _with(f, "audio", None),
         r"missing input\(s\) 'audio' \(the model takes video, audio, presence\)"),
        (lambda f: dict(f, microphone=f["audio"]), r"unknown input\(s\) 'microphone'"),
        (lambda f: _with(f, "audio", f["audio"].astype(np.float64)),
         r"input 'audio': expected dtype float32, got float64"),
        (lambda f: _with(f, "video", f["video"][:, 0]),
         r"input 'video': expected 5 dimensions \(batch, 2, 3, 32, 48\)"),
        (lambda f: _with(f, "video", np.zeros((2, 2, 3, 32, 40), np.float32)),
         r"input 'video': dimension 4 must be 48, got 40"),
        (lambda f: _with(f, "presence", f["presence"][:1]),
         r"input 'presence': dimension 0 \(batch\) is 1 but input 'video' has 2"),
        (lambda f: _with(f, "audio", _nan(f["audio"])),
         r"input 'audio' holds NaN values \(first at index \(0, 5\)\)"),
        (lambda f: _with(f, "video", _nan(f["video"], np.inf)), r"input 'video' holds Inf values"),
        (lambda f: _with(f, "presence", [[1.0, 1.0], [1.0, 1.0]]),
         r"input 'presence': expected a numpy array, got list"),
        (lambda f: {k: np.repeat(v[:1], 33, axis=0) for k, v in f.items()},
         r"batch size 33 is outside the bundle's range \[1, 32\]"),
        (lambda f: list(f.values()), r"feeds must be a mapping"),
    ],
    ids=["missing", "unknown", "dtype", "rank", "fixed-dim", "batch-mismatch", "nan", "inf", "not-array",
         "batch-too-big", "not-mapping"],
)
def test_bad_inputs_raise_input_error_naming_the_input(ort_backend, feeds, make, message):
    with pytest.raises(InputError, match=message):
        ort_backend.infer(make(feeds))


def test_state_is_checked(bundle, feeds):
    backend = get_backend("onnxruntime")
    assert not backend.loaded and not backend.closed
    with pytest.raises(BackendError, match=r"call load\(\) before infer\(\)"):
        backend.infer(feeds)
    with backend.load(bundle.model_path, bundle.manifest) as b:
        assert b is backend and b.loaded and b.last_timings["load"] > 0
        with pytest.raises(BackendError, match="already loaded"):
            b.load(bundle.model_path, bundle.manifest)
        out = b.infer(feeds)
        assert list(out) == [o["name"] for o in bundle.outputs] and b.last_timings["infer"] > 0
    assert backend.closed
    with pytest.raises(BackendError, match="closed"):
        backend.infer(feeds)
    backend.close()  # idempotent


def test_registry_unknown_name_lists_known_backends():
    with pytest.raises(BackendError, match=r"unknown backend 'tensorrtx'; known backends: .*onnxruntime"):
        get_backend("tensorrtx")
    assert "onnxruntime" in registered_backends()
    assert "onnxruntime" in available_backends()
    assert isinstance(get_backend("onnxruntime"), OnnxRuntimeBackend)
    with pytest.raises(BackendError, match="bad options"):
        get_backend("onnxruntime", threads=2)
    with pytest.raises(BackendError, match="expected a Backend subclass"):
        register_backend("bad", dict)  # type: ignore[arg-type]


class _NeedsMissingLibrary(OnnxRuntimeBackend):
    name = "needs-missing"
    requires = ("fusionedge_no_such_module",)


def test_unavailable_backend_is_listed_but_not_available_and_refuses_to_load(bundle, monkeypatch):
    monkeypatch.setitem(backends._REGISTRY, "needs-missing", _NeedsMissingLibrary)
    monkeypatch.setitem(backends._REGISTRY, "broken-path", "fusionedge.sdk.backends.nowhere:Nothing")
    assert {"needs-missing", "broken-path"} <= set(registered_backends())
    assert "needs-missing" not in available_backends() and "broken-path" not in available_backends()
    with pytest.raises(BackendError, match="cannot import 'fusionedge_no_such_module'"):
        get_backend("needs-missing").load(bundle.model_path, bundle.manifest)
    with pytest.raises(BackendError, match="broken-path.*cannot import"):
        get_backend("broken-path")


def test_onnxruntime_refuses_unavailable_providers_and_bad_files(bundle, tmp_path):
    with pytest.raises(BackendError, match=r"NoSuchExecutionProvider not available .*CPUExecutionProvider"):
        backend = get_backend("onnxruntime", providers=["NoSuchExecutionProvider"])
        backend.load(bundle.model_path, bundle.manifest)
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not an onnx model")
    with pytest.raises(BackendError, match="cannot load model.onnx"):
        get_backend("onnxruntime").load(garbage, bundle.manifest)
    with pytest.raises(BackendError, match="does not exist"):
        get_backend("onnxruntime").load(tmp_path / "missing.onnx", bundle.manifest)
    renamed = dict(bundle.manifest, inputs=[dict(bundle.inputs[0], name="frames"), *bundle.inputs[1:]])
    with pytest.raises(BackendError, match="the bundle is inconsistent"):
        get_backend("onnxruntime").load(bundle.model_path, renamed)


def test_model_io_from_manifest(bundle):
    io = ModelIO.from_manifest(bundle.manifest)
    assert io.input_names == ("video", "audio", "presence")
    assert io.inputs[0].shape == ("batch", 2, 3, 32, 48) and io.inputs[0].dtype == "float32"
    assert (io.batch_min, io.batch_opt, io.batch_max) == (1, 1, 32)
    assert io.inputs[0].describe() == "(batch, 2, 3, 32, 48)"


@pytest.mark.parametrize("name", available_backends())
def test_every_available_backend_matches_the_golden_outputs(bundle, name):
    """Contract test: each registered, available backend reproduces golden.npz within its tolerance."""
    inputs, expected = bundle.golden()
    rtol, atol = bundle.manifest["golden"]["rtol"], bundle.manifest["golden"]["atol"]
    with get_backend(name).load(bundle.model_path, bundle.manifest) as backend:
        assert isinstance(backend, Backend) and backend.name == name
        for batch in (len(inputs["video"]), 1):  # the golden batch, and one sample alone
            got = backend.infer({k: v[:batch] for k, v in inputs.items()})
            assert set(got) == set(expected)
            for out_name, ref in expected.items():
                assert got[out_name].dtype == np.float32
                np.testing.assert_allclose(got[out_name], ref[:batch], rtol=rtol, atol=atol, err_msg=out_name)

