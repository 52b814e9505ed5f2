"""TensorRT plan cache keys: which device, library and model a plan was built for.

"Engines are a cache, not the artifact" (DESIGN.md): a serialized TensorRT plan only runs on the GPU
architecture and TensorRT version that built it. Each plan in ``bundle/engines/`` is named by the key
of an :class:`EngineFingerprint` — (compute capability, TensorRT version, L4T/JetPack release where
present, precision, shape profile, ONNX sha256) — and has a sidecar ``<key>.json`` holding the full
fingerprint. The runtime loads a plan only when the sidecar's fingerprint equals the one it computes
for this device; otherwise :func:`check_fingerprint` refuses with the first differing field as the
reason (e.g. "built for compute capability 8.7, this device is 9.0").

Standard library only; the device queries import ``cuda.bindings`` / ``tensorrt`` lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from fusionedge.sdk.errors import BackendError
from fusionedge.sdk.fileio import read_json

__all__ = [
    "EngineFingerprint",
    "EngineMismatchError",
    "NoEngineError",
    "shape_profile",
    "read_l4t_release",
    "cuda_compute_capability",
    "tensorrt_version",
    "device_fingerprint",
    "plan_paths",
    "check_fingerprint",
    "read_sidecar",
]

_SIDECAR_MAX_BYTES = 1 << 20
_L4T = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")


class EngineMismatchError(BackendError):
    """A cached plan was built for another device, TensorRT version, precision, profile or model."""


class NoEngineError(EngineMismatchError):
    """No plan for this device and bundle exists yet: build one (the backend can, on first load)."""


@dataclass(frozen=True)
class EngineFingerprint:
    """What a TensorRT plan is valid for. ``key`` names the plan file.

    Attributes:
        compute_capability: the GPU's ``"major.minor"`` (e.g. ``"8.7"`` for Jetson Orin).
        tensorrt_version: ``tensorrt.__version__`` of the builder.
        l4t: the L4T release (``"36.4.0"``, JetPack 6.x) on a Jetson, None elsewhere.
        precision: the bundle's precision (``fp32``, ``fp16``, ``int8``, ``mixed``).
        profile: ``{input name: [min shape, opt shape, max shape]}``.
        onnx_sha256: the model.onnx the plan was built from.
    """

    compute_capability: str
    tensorrt_version: str
    l4t: str | None
    precision: str
    profile: Mapping[str, Any]
    onnx_sha256: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = {k: [list(s) for s in v] for k, v in self.profile.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EngineFingerprint":
        """Build from :meth:`to_dict` output.

        Raises:
            EngineMismatchError: a field is missing or has the wrong type.
        """
        try:
            fp = cls(
                compute_capability=str(d["compute_capability"]), tensorrt_version=str(d["tensorrt_version"]),
                l4t=None if d["l4t"] is None else str(d["l4t"]), precision=str(d["precision"]),
                profile={str(k): [list(map(int, s)) for s in v] for k, v in dict(d["profile"]).items()},
                onnx_sha256=str(d["onnx_sha256"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EngineMismatchError(f"engine sidecar: invalid fingerprint ({type(e).__name__}: {e})") from e
        return fp

    @property
    def key(self) -> str:
        """24 hex digits of the SHA-256 of the canonical JSON of every field."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def mismatch(self, other: "EngineFingerprint") -> str | None:
        """Why a plan built for ``self`` cannot run where ``other`` was computed, or None when it can."""
        labels = (
            ("compute_capability", "compute capability"), ("tensorrt_version", "TensorRT"),
            ("l4t", "L4T release"), ("precision", "precision"), ("onnx_sha256", "model.onnx sha256"),
        )
        for attr, label in labels:
            a, b = getattr(self, attr), getattr(other, attr)
            if a != b:
                return f"built for {label} {a}, this device/bundle has {b}"
        if self.to_dict()["profile"] != other.to_dict()["profile"]:
            return f"built for shape profile {self.to_dict()['profile']}, the bundle asks for {other.to_dict()['profile']}"
        return None


def shape_profile(manifest: Mapping[str, Any]) -> dict[str, list[list[int]]]:
    """The optimization profile a bundle asks for: each input at batch min / opt / max.

    Args:
        manifest: a schema-checked bundle manifest (``inputs``, ``batch``).

    Returns:
        ``{input name: [min shape, opt shape, max shape]}``.

    Raises:
        BackendError: an input has a named dimension other than ``batch``.
    """
    batch = manifest["batch"]
    profile = {}
    for spec in manifest["inputs"]:
        rest = spec["shape"][1:]
        if any(not isinstance(d, int) for d in rest):
            raise BackendError(f"input {spec['name']!r}: only the batch dimension may be dynamic, got {spec['shape']}")
        profile[spec["name"]] = [[int(batch[k]), *rest] for k in ("min", "opt", "max")]
    return profile


def read_l4t_release(path: str | os.PathLike = "/etc/nv_tegra_release") -> str | None:
    """The L4T release of a Jetson (``"36.4.0"``), or None where the file is absent.

    Args:
        path: the release file (``/etc/nv_tegra_release`` on Jetson Linux).

    Raises:
        BackendError: the file exists but does not say a release.
    """
    p = Path(path)
    if not p.is_file():
        return None
    text = p.read_text(encoding="utf-8", errors="replace")
    m = _L4T.search(text)
    if not m:
        raise BackendError(f"{p}: cannot read the L4T release from {text[:80]!r}")
    return f"{m.group(1)}.{m.group(2)}"


def cuda_compute_capability(device: int = 0) -> str:
    """The compute capability ``"major.minor"`` of a CUDA device, through cuda-python.

    Raises:
        BackendError: cuda-python is missing or the device cannot be queried.
    """
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as e:
        raise BackendError(f"cuda-python (cuda.bindings) is not installed: {e}") from e
    err, props = cudart.cudaGetDeviceProperties(device)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"cudaGetDeviceProperties({device}) failed: {err}")
    return f"{props.major}.{props.minor}"


def tensorrt_version() -> str:
    """``tensorrt.__version__``.

    Raises:
        BackendError: TensorRT is not installed.
    """
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendError(f"tensorrt is not installed: {e}") from e
    return str(trt.__version__)


def device_fingerprint(
    manifest: Mapping[str, Any], *, compute_capability: str | None = None, trt_version: str | None = None,
    l4t: str | None | bool = True,
) -> EngineFingerprint:
    """The fingerprint a plan for this bundle on this device must have.

    Args:
        manifest: the bundle manifest (precision, inputs, batch, files).
        compute_capability: override the queried value (for building for another SKU).
        trt_version: override ``tensorrt.__version__``.
        l4t: True to read ``/etc/nv_tegra_release``; otherwise the value to use (None: not a Jetson).

    Raises:
        BackendError: the device or TensorRT cannot be queried.
    """
    return EngineFingerprint(
        compute_capability=compute_capability or cuda_compute_capability(),
        tensorrt_version=trt_version or tensorrt_version(),
        l4t=read_l4t_release() if l4t is True else (l4t or None),
        precision=str(manifest["precision"]),
        profile=shape_profile(manifest),
        onnx_sha256=str(manifest["files"]["model.onnx"]["sha256"]),
    )


def plan_paths(engines_dir: str | os.PathLike, fingerprint: EngineFingerprint) -> tuple[Path, Path]:
    """``(engines/<key>.plan, engines/<key>.json)`` for a fingerprint."""
    d = Path(engines_dir)
    return d / f"{fingerprint.key}.plan", d / f"{fingerprint.key}.json"


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """Read a plan's sidecar JSON.

    Raises:
        EngineMismatchError: missing, unreadable, not acceptable JSON (see
            :func:`fusionedge.sdk.fileio.read_json`) or without a fingerprint.
    """
    p = Path(path)
    try:
        data = read_json(p, max_bytes=_SIDECAR_MAX_BYTES, error=EngineMismatchError)
    except FileNotFoundError as e:
        raise EngineMismatchError(f"{p.name}: the plan has no sidecar; rebuild it") from e
    except OSError as e:
        raise EngineMismatchError(f"{p.name}: unreadable sidecar ({e}); rebuild the plan") from e
    except EngineMismatchError as e:  # not JSON, too deep, an over-long integer, NaN
        raise EngineMismatchError(f"{e}; rebuild the plan") from e
    if not isinstance(data, dict) or "fingerprint" not in data:
        raise EngineMismatchError(f"{p.name}: the sidecar has no 'fingerprint'; rebuild the plan")
    return data


def check_fingerprint(plan: str | os.PathLike, expected: EngineFingerprint) -> EngineFingerprint:
    """Refuse a plan whose sidecar fingerprint differs from ``expected`` (or whose bytes were altered).

    Args:
        plan: the ``.plan`` file (its sidecar is the same name with ``.json``).
        expected: the fingerprint of this device and bundle (:func:`device_fingerprint`).

    Returns:
        The plan's fingerprint (equal to ``expected``).

    Raises:
        EngineMismatchError: no plan, no/invalid sidecar, a differing field (named), or the plan's
            sha256 differs from the one the sidecar recorded.
    """
    plan = Path(plan)
    if not plan.is_file():
        raise EngineMismatchError(f"{plan.name}: no such plan in {plan.parent}")
    side = read_sidecar(plan.with_suffix(".json"))
    got = EngineFingerprint.from_dict(side["fingerprint"])
    why = got.mismatch(expected)
    if why is not None:
        raise EngineMismatchError(f"{plan.name}: refused: {why}; rebuild with 'fusionedge engine build'")
    if got.key != plan.stem:
        raise EngineMismatchError(f"{plan.name}: the file name does not match its fingerprint key {got.key}")
    recorded = side.get("plan_sha256")
    if recorded is not None:
        h = hashlib.sha256(plan.read_bytes()).hexdigest()
        if h != recorded:
            raise EngineMismatchError(f"{plan.name}: sha256 mismatch with its sidecar; the plan is corrupted")
    return got
