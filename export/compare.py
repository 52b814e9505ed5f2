"""The same inputs on every backend and precision variant, against the FP32 reference (``fusionedge compare``).

The reference is the FP32 bundle's stored golden outputs (what PyTorch produced at export; for an
imported model, what ONNX Runtime computed on the user's own file). Every (variant bundle, backend)
pair runs the golden inputs — and, with ``data``, samples of a data-set manifest preprocessed the
runtime's way (an imported model's one declared input), referenced by the FP32 bundle on ONNX Runtime
CPU — and reports per output the max absolute error, max relative error and cosine similarity.

Tolerances depend on the variant's precision: FP32 must match within the bundle's golden
``rtol``/``atol``; FP16 and INT8 are judged by cosine similarity (defaults 0.999 and 0.95, the
lowest over all outputs) since their per-element error is by design larger. A backend that is not
available here (no GPU, no TensorRT) is listed as skipped with its reason; one that is available but
fails to load or run counts as a failure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fusionedge.sdk.backends import backend_class, get_backend, registered_backends
from fusionedge.sdk.backends.base import ModelIO
from fusionedge.sdk.bundle import Bundle, load_bundle
from fusionedge.sdk.errors import FusionEdgeError, InputError

__all__ = ["MIN_COSINE", "CompareReport", "OutputError", "PairResult", "compare", "output_errors"]

#: Lowest cosine similarity (over every output) a variant may show, by precision.
MIN_COSINE = {"fp16": 0.999, "int8": 0.95, "mixed": 0.95}


@dataclass(frozen=True)
class OutputError:
    """Error of one output against the reference."""

    name: str
    max_abs: float
    max_rel: float
    cosine: float
    allclose: bool  # within the reference bundle's golden rtol/atol

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "max_abs": self.max_abs, "max_rel": self.max_rel, "cosine": self.cosine,
                "allclose": self.allclose}


@dataclass
class PairResult:
    """One variant on one backend."""

    variant: str
    precision: str
    backend: str
    status: str  # "ok", "fail", "skipped", "error"
    reason: str = ""
    outputs: list[OutputError] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "precision": self.precision, "backend": self.backend,
                "status": self.status, "reason": self.reason, "outputs": [o.to_dict() for o in self.outputs]}


@dataclass
class CompareReport:
    """All pairs; ``ok`` is False when any available pair failed or errored."""

    reference: str
    results: list[PairResult]

    @property
    def ok(self) -> bool:
        return all(r.status in ("ok", "skipped") for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "ok": self.ok, "results": [r.to_dict() for r in self.results]}

    def table(self) -> str:
        lines = [f"reference: {self.reference}",
                 (f"{'variant':<28} {'prec':<5} {'backend':<18} {'status':<8} {'max_abs':>9} {'max_rel':>9} "
                  f"{'min_cos':>9}")]
        for r in self.results:
            if r.outputs:
                ma = max(o.max_abs for o in r.outputs)
                mr = max(o.max_rel for o in r.outputs)
                mc = min(o.cosine for o in r.outputs)
                nums = f"{ma:9.2e} {mr:9.2e} {mc:9.6f}"
            else:
                nums = f"{'-':>9} {'-':>9} {'-':>9}"
            tail = f"  ({r.reason})" if r.reason else ""
            lines.append(f"{r.variant:<28} {r.precision:<5} {r.backend:<18} {r.status:<8} {nums}{tail}")
        return "\n".join(lines)


def output_errors(
    got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], *, rtol: float, atol: float
) -> list[OutputError]:
    """Max abs / rel error and cosine similarity of every reference output.

    Args:
        got: outputs to check.
        ref: reference outputs (same names and shapes).
        rtol: relative tolerance for ``allclose``.
        atol: absolute tolerance for ``allclose``.

    Returns:
        One :class:`OutputError` per reference output.

    Raises:
        InputError: an output is missing or has another shape.
    """
    errs = []
    for name, r in ref.items():
        if name not in got:
            raise InputError(f"compare: output {name!r} is missing")
        g = np.asarray(got[name], np.float64)
        r = np.asarray(r, np.float64)
        if g.shape != r.shape:
            raise InputError(f"compare: output {name!r} has shape {g.shape}, the reference {r.shape}")
        diff = np.abs(g - r)
        rel = diff / np.maximum(np.abs(r), 1e-6)
        denom = np.linalg.norm(g) * np.linalg.norm(r)
        cos = float(np.dot(g.ravel(), r.ravel()) / denom) if denom > 0 else float(np.array_equal(g, r))
        errs.append(OutputError(name, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), cos,
                                bool(np.all(diff <= atol + rtol * np.abs(r)))))
    return errs


def _run_backend(name: str, bundle: Bundle, options: Mapping[str, Any],
                 batches: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    io = ModelIO.from_manifest(bundle.manifest)
    with get_backend(name, **dict(options)).load(bundle.model_path, io) as b:
        return [b.infer(dict(f)) for f in batches]


def _concat(outs: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def compare(
    bundle_dir: str | os.PathLike,
    backends: Sequence[str] = ("onnxruntime",),
    *,
    variants: Sequence[str | os.PathLike] = (),
    data: str | os.PathLike | None = None,
    data_limit: int = 16,
    min_cosine: Mapping[str, float] | None = None,
    backend_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> CompareReport:
    """Run the FP32 bundle and its variants on every named backend and compare with the FP32 reference.

    Args:
        bundle_dir: the FP32 bundle (its golden outputs are the reference).
        backends: registered backend names; ones unavailable here are reported as skipped.
        variants: more bundles of the same model (FP16, INT8, ...) with the same inputs/outputs.
        data: optional data-set manifest whose samples are added to the golden inputs.
        data_limit: most data samples.
        min_cosine: per-precision cosine thresholds (default :data:`MIN_COSINE`).
        backend_options: constructor options per backend name.

    Returns:
        The :class:`CompareReport`.

    Raises:
        BundleError: a bundle is invalid. InputError: an unknown backend name or a variant with
            different inputs/outputs.
    """
    ref_bundle = load_bundle(bundle_dir)
    unknown = [b for b in backends if b not in registered_backends()]
    if unknown:
        raise InputError(f"compare: unknown backend(s) {', '.join(unknown)}; registered: "
                         f"{', '.join(registered_backends())}")
    thresholds = {**MIN_COSINE, **dict(min_cosine or {})}
    golden_in, golden_out = ref_bundle.golden()
    batches: list[dict[str, np.ndarray]] = [golden_in]
    reference = [dict(golden_out)]
    if data is not None:
        from fusionedge.export.quantize import load_calibration_feeds

        extra = load_calibration_feeds(ref_bundle, data, limit=data_limit, batch_size=8)
        batches += extra
        reference += _run_backend("onnxruntime", ref_bundle, {}, extra)
    ref = _concat(reference)
    rtol, atol = ref_bundle.manifest["golden"]["rtol"], ref_bundle.manifest["golden"]["atol"]
    bundles = [ref_bundle] + [load_bundle(v) for v in variants]
    for b in bundles[1:]:
        if [i["name"] for i in b.inputs] != [i["name"] for i in ref_bundle.inputs] or \
                [o["name"] for o in b.outputs] != [o["name"] for o in ref_bundle.outputs]:
            raise InputError(f"compare: {b.path} has other inputs/outputs than {ref_bundle.path}")
    results = []
    for b in bundles:
        label = f"{b.name}:{b.path.name}"
        for name in backends:
            reason = backend_class(name).unavailable_reason()
            if reason is not None:
                results.append(PairResult(label, b.precision, name, "skipped", reason))
                continue
            try:
                got = _concat(_run_backend(name, b, (backend_options or {}).get(name, {}), batches))
            except FusionEdgeError as e:
                results.append(PairResult(label, b.precision, name, "error", str(e).splitlines()[0]))
                continue
            errs = output_errors(got, ref, rtol=rtol, atol=atol)
            if b.precision == "fp32":
                ok = all(e.allclose for e in errs)
                why = "" if ok else f"outside rtol {rtol} / atol {atol}"
            else:
                need = thresholds[b.precision]
                ok = min(e.cosine for e in errs) >= need
                why = "" if ok else f"cosine below {need}"
            results.append(PairResult(label, b.precision, name, "ok" if ok else "fail", why, errs))
    return CompareReport(str(ref_bundle.path), results)
