"""Build a TensorRT plan for a bundle on the device: ``bundle/engines/<fingerprint key>.plan`` + sidecar.

The network is parsed from the bundle's ``model.onnx`` with ``tensorrt.OnnxParser`` and always built
**strongly typed**: the precision comes from the ONNX graph itself (float32 / float16 tensors of an
FP16 bundle / explicit Q/DQ nodes of an INT8 bundle), never from builder flags. That one path runs on
TensorRT 10 (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``) and TensorRT 11 (where strong typing is
always on, the flag is deprecated and the FP16/INT8 builder flags are gone). So the precision of an
engine is chosen by which bundle variant it is built from (``fusionedge quantize``/FP16 variant).
A bundle whose manifest has a checked 2:4 ``sparsity`` section (``fusionedge compress --sparsity 2:4``)
is built with ``BuilderFlag.SPARSE_WEIGHTS``, so TensorRT may pick sparse tensor-core kernels.

One optimization profile covers the manifest's batch ``min/opt/max``. A timing cache persisted in
``engines/timing.cache`` makes rebuilds fast. Build progress goes to stderr through a
``tensorrt.IProgressMonitor``. The plan is written atomically with a sidecar JSON holding the
:class:`~fusionedge.sdk.engine_fingerprint.EngineFingerprint`, the plan's sha256 and build facts.

TensorRT is imported lazily; without it :func:`build_engine` raises ``EngineBuildError``.

It lives in the runtime (not in ``export/``) because a device builds its own engine: the TensorRT
backend builds on first load when no plan matches (``build="first"``), and :class:`Perception` can
build in the background while ONNX Runtime serves (``engine_build="background"``).
``fusionedge engine build`` calls the same function ahead of time.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from fusionedge.sdk.bundle import load_bundle
from fusionedge.sdk.engine_fingerprint import EngineFingerprint, device_fingerprint, plan_paths, shape_profile
from fusionedge.sdk.errors import BackendError
from fusionedge.sdk.fileio import json_safe, write_bytes_atomic, write_json_atomic

__all__ = [
    "TIMING_CACHE_NAME",
    "EngineBuildError",
    "build_engine",
    "describe",
    "network_flags",
    "sparse_weights",
    "trt_major",
]

TIMING_CACHE_NAME = "timing.cache"


class EngineBuildError(BackendError):
    """TensorRT is missing, the ONNX model does not parse, or the build failed."""


def _trt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise EngineBuildError(f"TensorRT is not installed here ({e}); install fusionedge[tensorrt] on the "
                               f"device (JetPack ships it)") from e
    return trt


def trt_major(version: str) -> int:
    """The major version number of a TensorRT version string (``"10.3.0"`` → 10)."""
    try:
        return int(str(version).split(".")[0])
    except ValueError as e:
        raise EngineBuildError(f"cannot read the TensorRT version {version!r}") from e


def network_flags(trt: Any) -> int:
    """``create_network`` flags: STRONGLY_TYPED on TensorRT 10, none on 11+ (always strongly typed)."""
    major = trt_major(trt.__version__)
    if major < 10:
        raise EngineBuildError(f"TensorRT {trt.__version__} is too old; FusionEdge needs 10 or newer")
    if major == 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def sparse_weights(manifest: dict) -> bool:
    """True when a manifest declares checked 2:4 weights (``export/sparsity.py`` wrote the section).

    Raises:
        EngineBuildError: a ``sparsity`` section with another pattern, or one that was not checked.
    """
    section = manifest.get("sparsity")
    if section is None:
        return False
    if not isinstance(section, dict) or section.get("pattern") != "2:4" or section.get("checked") is not True \
            or not section.get("weights"):
        raise EngineBuildError(f"the manifest's sparsity section is not a checked 2:4 claim: {section!r}")
    return True


def _progress_monitor(trt: Any) -> Any:
    """A tensorrt.IProgressMonitor printing phase progress to stderr."""

    class _Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._steps[phase_name] = num_steps
            print(f"engine build: {phase_name} ({num_steps} steps)", file=sys.stderr, flush=True)

        def step_complete(self, phase_name: str, step: int) -> bool:
            total = self._steps.get(phase_name, 0)
            if total:
                print(f"\rengine build: {phase_name} {step + 1}/{total}", end="", file=sys.stderr, flush=True)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            print(f"\rengine build: {phase_name} done", file=sys.stderr, flush=True)

    return _Monitor()


def build_engine(
    bundle_dir: str | os.PathLike,
    *,
    workspace_mib: int = 1024,
    progress: bool = True,
    rebuild: bool = False,
    verbose: bool = False,
) -> Path:
    """Build (or reuse) the TensorRT plan for a bundle on this device.

    Args:
        bundle_dir: the bundle (any precision variant).
        workspace_mib: the builder's workspace memory pool limit.
        progress: print build phases to stderr.
        rebuild: build even when a plan with this fingerprint exists.
        verbose: TensorRT INFO logging (default: warnings only).

    Returns:
        The plan path ``<bundle>/engines/<key>.plan``.

    Raises:
        EngineBuildError: TensorRT missing, parse errors (all listed), or the build returned nothing.
        BundleError: the bundle is invalid.
        BackendError: the device cannot be queried.
    """
    trt = _trt()
    bundle = load_bundle(bundle_dir)
    fp = device_fingerprint(bundle.manifest, trt_version=str(trt.__version__))
    engines = bundle.engines_dir
    engines.mkdir(exist_ok=True)
    plan_path, sidecar_path = plan_paths(engines, fp)
    if plan_path.is_file() and sidecar_path.is_file() and not rebuild:
        return plan_path

    logger = trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(bundle.model_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{bundle.model_path.name}: TensorRT cannot parse it: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    sparse = sparse_weights(dict(bundle.manifest))
    if sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shape_profile(bundle.manifest).items():
        profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    config.add_optimization_profile(profile)
    cache_path = engines / TIMING_CACHE_NAME
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    if progress:
        config.progress_monitor = _progress_monitor(trt)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build an engine for {bundle.model_id} (see its log above)")
    data = bytes(serialized)
    write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    write_bytes_atomic(plan_path, data)
    write_json_atomic(sidecar_path, json_safe({
        "fingerprint": fp.to_dict(),
        "key": fp.key,
        "plan_sha256": hashlib.sha256(data).hexdigest(),
        "plan_size": len(data),
        "bundle": bundle.model_id,
        "build_seconds": round(seconds, 2),
        "workspace_mib": int(workspace_mib),
        "strongly_typed": True,
        "sparse_weights": sparse,
    }))
    return plan_path


def describe(fp: EngineFingerprint) -> str:
    """One line naming a fingerprint's key fields."""
    return (f"{fp.key}: sm {fp.compute_capability}, TensorRT {fp.tensorrt_version}, L4T {fp.l4t or '-'}, "
            f"{fp.precision}, onnx {fp.onnx_sha256[:12]}")
