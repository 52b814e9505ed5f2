"""Numerical parity of an exported ONNX model with its PyTorch source, and the golden reference.

:func:`check_parity` runs the same deterministic inputs through PyTorch and ONNX Runtime (CPU) at
several batch sizes — by default 1 and 3, neither of which is the export example's batch 2, so a
batch dimension the exporter fixed is caught — and records per output the largest absolute and
relative error. An element passes when ``|onnx - torch| <= atol + rtol * |torch|`` (NumPy's
``allclose`` rule). The default tolerances, rtol 1e-3 and atol 1e-4, leave room for the float32
reassociation ONNX Runtime does (measured differences are ~1e-6 on FusionEdge models) while catching
any real divergence; they are recorded in the :class:`ParityReport` and in the bundle manifest.

:func:`make_golden` computes the reference inputs/outputs stored in ``golden.npz``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fusionedge.export.onnx_export import ExportError, example_inputs
from fusionedge.sdk.spec import INPUT_NAMES, OUTPUT_NAMES, InputGeometry

__all__ = [
    "DEFAULT_RTOL",
    "DEFAULT_ATOL",
    "ParityError",
    "OutputParity",
    "ParityReport",
    "run_torch",
    "run_onnx",
    "compare_outputs",
    "check_parity",
    "make_golden",
]

DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-4


class ParityError(ExportError):
    """The exported model does not reproduce PyTorch within tolerance; ``report`` says where."""

    def __init__(self, message: str, report: "ParityReport") -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class OutputParity:
    """How far one output of the ONNX model is from PyTorch at one batch size."""

    batch: int
    output: str
    max_abs: float  # max |onnx - torch|
    max_rel: float  # max |onnx - torch| / |torch| over elements with |torch| > atol (0 if none)
    ok: bool  # every element within atol + rtol * |torch|, and the shapes agree


@dataclass(frozen=True)
class ParityReport:
    """Result of :func:`check_parity`; ``ok`` is True when every output at every batch passed."""

    rtol: float
    atol: float
    batches: tuple[int, ...]
    seed: int
    results: tuple[OutputParity, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def max_abs(self) -> float:
        return max((r.max_abs for r in self.results), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((r.max_rel for r in self.results), default=0.0)

    def failures(self) -> list[OutputParity]:
        """The (batch, output) pairs outside tolerance."""
        return [r for r in self.results if not r.ok]

    def to_dict(self) -> dict:
        """A JSON-safe summary (what the bundle manifest records)."""
        return {
            "rtol": self.rtol,
            "atol": self.atol,
            "batches": list(self.batches),
            "seed": self.seed,
            "max_abs": _finite(self.max_abs),
            "max_rel": _finite(self.max_rel),
            "results": [{**asdict(r), "max_abs": _finite(r.max_abs), "max_rel": _finite(r.max_rel)}
                        for r in self.results],
        }

    def summary(self) -> str:
        """One line per failure, or a one-line pass message."""
        if self.ok:
            return (f"parity ok at batches {list(self.batches)}: max abs {self.max_abs:.3g}, "
                    f"max rel {self.max_rel:.3g}")
        failures = "; ".join(
            f"batch {r.batch} '{r.output}': max abs {r.max_abs:.3g}, max rel {r.max_rel:.3g}"
            for r in self.failures()
        )
        return f"{failures} (tolerance rtol {self.rtol:g}, atol {self.atol:g})"


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def run_torch(model: nn.Module, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a contract model in eval mode without gradients.

    Args:
        model: ``model(video, audio, presence)`` returning outputs in contract order.
        inputs: ``{"video", "audio", "presence"}`` arrays.

    Returns:
        ``{output name: float32 array}``.

    Raises:
        ExportError: the model does not return one tensor per contract output.
    """
    model.eval()
    with torch.no_grad():
        out = model(*(torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in INPUT_NAMES))
    names = tuple(getattr(model, "output_names", OUTPUT_NAMES))  # a head-less task has fewer
    if not isinstance(out, (tuple, list)) or len(out) != len(names):
        raise ExportError(
            f"the model must return a tuple of {len(names)} tensors {list(names)}"
        )
    return {n: t.detach().cpu().numpy().astype(np.float32) for n, t in zip(names, out)}


def run_onnx(
    onnx_path: str | os.PathLike, inputs: Mapping[str, np.ndarray], *, threads: int = 1
) -> dict[str, np.ndarray]:
    """Run an ONNX file in ONNX Runtime on the CPU.

    Args:
        onnx_path: the model file.
        inputs: ``{input name: array}``.
        threads: intra-op threads (1 keeps results deterministic run to run).

    Returns:
        ``{output name: array}`` in the contract order.

    Raises:
        ExportError: ONNX Runtime cannot load or run the model (e.g. at a batch size the graph fixed).
    """
    import onnxruntime as ort

    path = Path(onnx_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    batch = next(iter(inputs.values())).shape[0]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]  # the contract's, less the heads a task lacks
        outs = session.run(names, {n: np.ascontiguousarray(inputs[n]) for n in INPUT_NAMES})
    except Exception as e:
        raise ExportError(
            f"{path.name}: ONNX Runtime cannot run it at batch {batch}: {e} (was it exported with a batch-1 "
            f"example? that fixes the batch dimension)"
        ) from e
    return dict(zip(names, outs))


def compare_outputs(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    *,
    batch: int,
    rtol: float,
    atol: float,
) -> list[OutputParity]:
    """Compare each output elementwise (``|a - e| <= atol + rtol * |e|``).

    Args:
        expected: reference outputs (PyTorch).
        actual: outputs to check (ONNX Runtime).
        batch: the batch size, for the report.
        rtol: relative tolerance.
        atol: absolute tolerance.

    Returns:
        One :class:`OutputParity` per expected output (a shape mismatch is a failure with infinite error).
    """
    results = []
    for name, ref in expected.items():
        got = actual.get(name)
        if got is None or got.shape != ref.shape:
            results.append(OutputParity(batch, name, float("inf"), float("inf"), False))
            continue
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        diff = np.abs(got64 - ref64)
        if not np.isfinite(diff).all():  # NaN/Inf on either side
            results.append(OutputParity(batch, name, float("inf"), float("inf"), False))
            continue
        max_abs = float(diff.max()) if diff.size else 0.0
        big = np.abs(ref64) > atol  # relative error is meaningless near zero
        max_rel = float((diff[big] / np.abs(ref64[big])).max()) if big.any() else 0.0
        ok = bool(np.all(diff <= atol + rtol * np.abs(ref64)))
        results.append(OutputParity(batch, name, max_abs, max_rel, ok))
    return results


def check_parity(
    model: nn.Module,
    onnx_path: str | os.PathLike,
    geometry: InputGeometry,
    batches: Sequence[int] = (1, 3),
    seed: int = 0,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> ParityReport:
    """Check that ONNX Runtime reproduces PyTorch on the exported model at each batch size.

    Args:
        model: the PyTorch source model.
        onnx_path: the exported file.
        geometry: the model's input geometry.
        batches: batch sizes to test; keep 1 and a size other than the export example's (3).
        seed: seed of the inputs (each batch size uses ``seed + batch``).
        rtol: relative tolerance per element.
        atol: absolute tolerance per element.

    Returns:
        The :class:`ParityReport` (all passed).

    Raises:
        ParityError: an output is outside tolerance or has the wrong shape (``.report`` holds the
            :class:`ParityReport`).
        ExportError: ONNX Runtime cannot load the file or run a batch size.
    """
    if not batches:
        raise ExportError("check_parity needs at least one batch size")
    results: list[OutputParity] = []
    for batch in batches:
        inputs = example_inputs(geometry, batch, seed=seed + batch)
        expected = run_torch(model, inputs)
        actual = run_onnx(onnx_path, inputs)
        results.extend(compare_outputs(expected, actual, batch=batch, rtol=rtol, atol=atol))
    report = ParityReport(rtol=rtol, atol=atol, batches=tuple(batches), seed=seed, results=tuple(results))
    if not report.ok:
        raise ParityError(
            f"{Path(onnx_path).name}: ONNX Runtime does not match PyTorch: {report.summary()}", report
        )
    return report


def make_golden(
    model: nn.Module, geometry: InputGeometry, *, batch: int = 3, seed: int = 1234
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Reference inputs and PyTorch outputs for a bundle's ``golden.npz``.

    The default batch of 3 covers the three presence patterns (both, video only, audio only).

    Args:
        model: the PyTorch source model.
        geometry: its input geometry.
        batch: samples in the golden set.
        seed: seed of the inputs.

    Returns:
        ``(inputs, outputs)``, each ``{name: array}``.
    """
    inputs = example_inputs(geometry, batch, seed=seed)
    return inputs, run_torch(model, inputs)
