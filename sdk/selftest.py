"""The golden self-test: run a bundle's reference inputs and refuse outputs it cannot vouch for.

Every bundle carries ``golden.npz`` — inputs and the outputs the exporter's own run produced — and a
tolerance (``golden.rtol`` / ``golden.atol`` in the manifest). Running the golden inputs on a backend
and comparing is the cheapest end-to-end proof that this model file, on this backend and device,
computes what was exported: a release server runs it before it signs a bundle, a device before it
swaps one in. :func:`compare_golden` is the comparison (also behind
:meth:`fusionedge.sdk.Perception.self_test`); :func:`run_golden` loads a bundle on one backend, runs
it and returns a :class:`GoldenReport`.

Refused, each with a typed error naming the output: NaN/Inf computed by the model
(:class:`~fusionedge.sdk.errors.NonFiniteOutputError`), NaN/Inf recorded in the golden file, a shape
that differs, or a value outside ``|out - ref| <= atol + rtol * |ref|``
(:class:`~fusionedge.sdk.errors.BundleError`).

Part of the device runtime: NumPy and the backends only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from fusionedge.sdk.backends import ModelIO, check_outputs, get_backend
from fusionedge.sdk.backends.base import non_finite
from fusionedge.sdk.bundle import Bundle, check_digest, load_bundle
from fusionedge.sdk.errors import BundleError

__all__ = ["GoldenReport", "compare_golden", "run_golden"]


@dataclass(frozen=True)
class GoldenReport:
    """A passed golden self-test.

    Attributes:
        model: ``name@version`` of the bundle.
        backend: the backend that ran it.
        max_abs_err: the largest absolute difference over every output.
        outputs: the largest absolute difference per output.
        rtol, atol: the manifest's tolerance the outputs were held to.
    """

    model: str
    backend: str
    max_abs_err: float
    outputs: dict[str, float]
    rtol: float
    atol: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the report."""
        return {"model": self.model, "backend": self.backend, "max_abs_err": self.max_abs_err,
                "outputs": dict(self.outputs), "rtol": self.rtol, "atol": self.atol}


def compare_golden(
    got: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    *,
    rtol: float,
    atol: float,
    where: str,
    golden_file: str = "golden.npz",
) -> dict[str, float]:
    """Compare outputs with the golden outputs, output by output.

    Args:
        got: ``{name: array}`` the backend returned.
        expected: ``{name: array}`` from the golden file; every name must be in ``got``.
        rtol, atol: elementwise ``|got - ref| <= atol + rtol * |ref|``.
        where: names the run in messages, e.g. ``"self-test on onnxruntime"``.
        golden_file: the golden file's name, for messages about its contents.

    Returns:
        ``{name: largest absolute difference}``.

    Raises:
        NonFiniteOutputError: an output in ``got`` holds NaN or Inf.
        BundleError: the golden file holds NaN/Inf, an output is missing or has another shape, or
            differs beyond the tolerance (names the output and the largest difference).
    """
    check_outputs(got, where=where)
    for name, ref in expected.items():
        what = non_finite(ref)
        if what is not None:
            raise BundleError(f"{golden_file}: output '{name}' holds {what}; the golden file is broken, "
                              f"re-export the bundle")
    errors: dict[str, float] = {}
    for name, ref in expected.items():
        if name not in got:
            raise BundleError(f"{where}: no output '{name}' to compare with the golden outputs")
        out = np.asarray(got[name])
        if out.shape != ref.shape:
            raise BundleError(f"{where}: output '{name}' has shape {out.shape}, golden {ref.shape}")
        ref64 = ref.astype(np.float64)
        diff = np.abs(out.astype(np.float64) - ref64)
        err = float(diff.max()) if diff.size else 0.0
        errors[name] = err
        if not np.all(diff <= atol + rtol * np.abs(ref64)):
            raise BundleError(
                f"{where}: output '{name}' differs from the golden outputs by up to {err:.3g} (tolerance "
                f"rtol {rtol:g}, atol {atol:g}); the model or backend is broken"
            )
    return errors


def run_golden(
    bundle: Bundle | str | os.PathLike,
    *,
    backend: str = "onnxruntime",
    backend_options: Mapping[str, Any] | None = None,
    expected_digest: str | None = None,
) -> GoldenReport:
    """Load a bundle on one backend, run its golden inputs and hold the outputs to its tolerance.

    Args:
        bundle: a loaded :class:`~fusionedge.sdk.bundle.Bundle`, or a bundle folder (loaded and
            verified here).
        backend: the backend to run on (no fallback: the test is of this backend).
        backend_options: constructor options for the backend, e.g. ``{"intra_op_threads": 1}``.
        expected_digest: refuse a bundle whose :attr:`~fusionedge.sdk.bundle.Bundle.digest` differs.

    Returns:
        The :class:`GoldenReport`.

    Raises:
        NonFiniteOutputError: the model computed NaN or Inf (names the output).
        BundleError: the bundle is invalid, altered or not the pinned one, its golden file is unreadable or holds
            NaN/Inf, or an output differs beyond the manifest's tolerance.
        BackendError: the backend is unavailable or cannot load or run the model.
    """
    if isinstance(bundle, Bundle):
        b = bundle
        if expected_digest is not None:
            check_digest(b.manifest, expected_digest)
    else:
        b = load_bundle(bundle, expected_digest=expected_digest)
    inputs, expected = b.golden()
    golden = b.manifest["golden"]
    rtol, atol = float(golden["rtol"]), float(golden["atol"])
    with get_backend(backend, **dict(backend_options or {})) as runner:
        runner.load(b.model_path, ModelIO.from_manifest(b.manifest))
        got = runner.infer(inputs)
    errors = compare_golden(got, expected, rtol=rtol, atol=atol, where=f"self-test on {backend}",
                            golden_file=golden["file"])
    return GoldenReport(model=b.model_id, backend=backend, max_abs_err=max(errors.values(), default=0.0),
                        outputs=errors, rtol=rtol, atol=atol)
