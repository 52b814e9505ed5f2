"""Building a device engine without going dark: ``Perception.load(..., engine_build=...)``.

TensorRT cannot run here, so one seam is simulated and named as such: :class:`FakeEngineBackend`
is an ONNX Runtime backend that pretends to need a compiled engine (``engines/fake.plan``) — it
"builds" it (a short sleep, then writes the file) under ``build="first"`` and raises
:class:`NoEngineError` under ``build="never"``, the protocol the real TensorRT backend follows.
Everything else — the fallback, the background thread, the switch, the state on results — is real.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fusionedge.sdk.backends as backends_module
from _toy_model import copy_bundle, shared_toy_bundle
from fusionedge.sdk import Perception
from fusionedge.sdk.backends.onnxruntime import OnnxRuntimeBackend
from fusionedge.sdk.engine_build import EngineBuildError
from fusionedge.sdk.engine_fingerprint import NoEngineError


class FakeEngineBackend(OnnxRuntimeBackend):
    """FAKE engine-compiling backend (stands in for TensorRT, which is not installable here)."""

    name = "fake-engine"
    builds_engines = True
    release = threading.Event()  # a test holds the "build" until it has looked at the serving state
    fail = False

    def __init__(self, *, build: str = "first", build_progress: bool = True) -> None:
        super().__init__(intra_op_threads=1)
        self.build = build

    def _load_impl(self, model_path: Path, io) -> None:
        plan = model_path.parent / "engines" / "fake.plan"
        if not plan.is_file():
            if self.build == "never":
                raise NoEngineError(f"{self.name}: no plan for this device in {plan.parent}")
            assert FakeEngineBackend.release.wait(30), "the test never released the fake build"
            if FakeEngineBackend.fail:
                raise EngineBuildError("fake build failed: the parser rejected the model")
            plan.parent.mkdir(exist_ok=True)
            plan.write_text("fake plan")
        super()._load_impl(model_path, io)


@pytest.fixture
def bundle(tmp_path_factory, tmp_path, monkeypatch) -> Path:
    monkeypatch.setitem(backends_module._REGISTRY, "fake-engine", FakeEngineBackend)
    FakeEngineBackend.release = threading.Event()
    FakeEngineBackend.fail = False
    return copy_bundle(shared_toy_bundle(tmp_path_factory), tmp_path / "bundle")


FRAMES = np.random.default_rng(0).integers(0, 256, (4, 64, 96, 3), dtype=np.uint8)
BACKENDS = ["fake-engine", "onnxruntime"]
OPTIONS = {"onnxruntime": {"intra_op_threads": 1}}


def test_background_build_serves_on_the_fallback_then_switches(bundle):
    t0 = time.perf_counter()
    with Perception.load(bundle, BACKENDS, backend_options=OPTIONS, engine_build="background") as p:
        # served at once on ONNX Runtime, and every result says an engine is building
        assert p.backend_name == "onnxruntime" and p.engine_state == "building"
        assert p.fallbacks[0].backend == "fake-engine" and "background" in p.fallbacks[0].reason
        r = p.infer(video=FRAMES, fps=8.0)
        assert (r.backend, r.engine) == ("onnxruntime", "building")
        assert r.to_dict()["engine"] == "building"
        FakeEngineBackend.release.set()
        assert p.wait_for_engine(timeout=30) == "ready"
        r2 = p.infer(video=FRAMES, fps=8.0)
        assert (r2.backend, r2.engine) == ("fake-engine", "ready")
        np.testing.assert_allclose(list(r2.scores.values()), list(r.scores.values()), atol=1e-5)
    assert (bundle / "engines" / "fake.plan").is_file()
    assert time.perf_counter() - t0 < 60


def test_default_builds_first_and_then_serves_on_the_engine(bundle):
    FakeEngineBackend.release.set()
    with Perception.load(bundle, BACKENDS, backend_options=OPTIONS) as p:
        assert p.backend_name == "fake-engine" and p.engine_state is None and p.fallbacks == ()
        assert p.infer(video=FRAMES, fps=8.0).engine is None


def test_failed_background_build_keeps_serving_and_says_why(bundle):
    FakeEngineBackend.fail = True
    with Perception.load(bundle, BACKENDS, backend_options=OPTIONS, engine_build="background") as p:
        FakeEngineBackend.release.set()
        state = p.wait_for_engine(timeout=30)
        assert state.startswith("failed:") and "parser rejected" in state
        r = p.infer(video=FRAMES, fps=8.0)
        assert r.backend == "onnxruntime" and r.engine == state
    assert not (bundle / "engines" / "fake.plan").exists()


def test_an_existing_engine_loads_directly_in_background_mode(bundle):
    (bundle / "engines").mkdir()
    (bundle / "engines" / "fake.plan").write_text("fake plan")
    with Perception.load(bundle, BACKENDS, backend_options=OPTIONS, engine_build="background") as p:
        assert p.backend_name == "fake-engine" and p.engine_state is None


def test_bad_engine_build_mode_is_refused(bundle):
    from fusionedge.sdk.errors import BackendError

    with pytest.raises(BackendError, match="engine_build"):
        Perception.load(bundle, BACKENDS, engine_build="sometimes")
