"""GPU backends: explicit names that refuse (never fall back silently) where their library is absent;
the real TensorRT path where TensorRT and a GPU exist."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from _precision_fixtures import student_bundle
from fusionedge.sdk.backends import available_backends, backend_class, get_backend, registered_backends
from fusionedge.sdk.backends.base import ModelIO
from fusionedge.sdk.bundle import load_bundle
from fusionedge.sdk.errors import BackendError
from fusionedge.sdk.perception import Perception

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_gpu_backends_are_registered():
    assert {"tensorrt", "onnxruntime-cuda", "onnxruntime-trt"} <= set(registered_backends())


@pytest.mark.parametrize("name,provider", [("onnxruntime-cuda", "CUDAExecutionProvider"),
                                           ("onnxruntime-trt", "TensorrtExecutionProvider")])
def test_ort_gpu_backend_refuses_without_provider(tmp_path_factory, name, provider):
    import onnxruntime as ort

    if provider in ort.get_available_providers():
        pytest.skip(f"{provider} is available here")
    assert name not in available_backends()
    assert provider in backend_class(name).unavailable_reason()
    bundle = load_bundle(student_bundle(tmp_path_factory))
    with pytest.raises(BackendError, match=provider):
        get_backend(name).load(bundle.model_path, ModelIO.from_manifest(bundle.manifest))


@pytest.mark.skipif(HAS_TRT, reason="checks the refusal where TensorRT is absent")
def test_tensorrt_unavailable_falls_back_visibly(tmp_path_factory):
    assert "tensorrt" in backend_class("tensorrt").unavailable_reason()
    with Perception.load(student_bundle(tmp_path_factory), ["tensorrt", "onnxruntime"]) as p:
        assert p.backend_name == "onnxruntime"
        assert [f.backend for f in p.fallbacks] == ["tensorrt"] and "tensorrt" in p.fallbacks[0].reason


def test_tensorrt_backend_rejects_bad_options():
    with pytest.raises(BackendError, match="cuda_api"):
        get_backend("tensorrt", cuda_api="opencl")


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT, cuda-python and a CUDA GPU (not on this machine)")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_matches_golden(tmp_path, tmp_path_factory, cuda_graph):
    import shutil

    from fusionedge.sdk.engine_build import build_engine

    bundle_dir = shutil.copytree(student_bundle(tmp_path_factory), tmp_path / "b")
    build_engine(bundle_dir, progress=False)
    bundle = load_bundle(bundle_dir)
    inputs, outputs = bundle.golden()
    with get_backend("tensorrt", cuda_graph=cuda_graph).load(bundle.model_path, bundle.manifest) as b:
        for _ in range(3):  # plain run, capture, replay
            got = b.infer(inputs)
        for k, v in outputs.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-2, atol=1e-2)
