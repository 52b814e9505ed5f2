"""The export chain, checkpoint or in-memory model → verified bundle (see the package docstring)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm

from fusionedge.export.bundle_writer import build_manifest, check_target, write_bundle
from fusionedge.export.onnx_export import (
    ExportError,
    check_onnx,
    example_inputs,
    export_onnx,
    model_output_names,
)
from fusionedge.export.parity import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    ParityError,
    ParityReport,
    check_parity,
    make_golden,
)
from fusionedge.sdk.bundle import sha256_file
from fusionedge.sdk.spec import InputGeometry

__all__ = ["export_checkpoint", "export_model"]


def export_model(
    model: Any,
    info: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    version: str = "0.1.0",
    checkpoint_sha256: str | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Export an in-memory contract model to a verified bundle (export, check, parity, golden, write).

    Args:
        model: a ``torch.nn.Module`` with ``model(video, audio, presence) -> 5 outputs``.
        info: ``model_name``, ``model_config``, ``geometry`` (InputGeometry.to_dict()), ``labels``,
            optionally ``metrics`` and ``epoch`` (as ``load_checkpoint`` returns).
        out_dir: the bundle folder to create.
        name: bundle name (default ``info["model_name"]``).
        version: bundle version.
        checkpoint_sha256: hash of the checkpoint the model came from, if any.
        rtol: parity / golden relative tolerance.
        atol: parity / golden absolute tolerance.
        overwrite: replace an existing bundle at ``out_dir``.
        progress: show a progress bar on stderr.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ExportError: any step failed (ParityError for a numerical mismatch); nothing is left at ``out_dir``.
    """
    out = check_target(out_dir, overwrite=overwrite)
    if "geometry" not in info:
        raise ExportError("model info lacks 'geometry'")
    geometry = InputGeometry.from_dict(dict(info["geometry"]))
    with _Steps(progress, total=5) as steps, tempfile.TemporaryDirectory(prefix="fusionedge-export-") as work:
        onnx_path = Path(work) / "model.onnx"
        steps.run("export onnx", export_onnx, model, geometry, onnx_path)
        steps.run("check onnx", check_onnx, onnx_path, model_output_names(model))
        parity = steps.run("parity", check_parity, model, onnx_path, geometry, rtol=rtol, atol=atol)
        golden_inputs, golden_outputs = steps.run("golden", make_golden, model, geometry)
        return steps.run(
            "write bundle", write_bundle, out, onnx_path, info, parity, golden_inputs, golden_outputs,
            name=name, version=version, checkpoint_sha256=checkpoint_sha256, overwrite=overwrite,
        )


def export_checkpoint(
    checkpoint_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    version: str = "0.1.0",
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Export a training checkpoint to a verified bundle.

    Args:
        checkpoint_path: a file written by ``fusionedge.training.checkpoint.save_checkpoint``.
        out_dir: the bundle folder to create.
        name: bundle name (default: the checkpoint's model name).
        version: bundle version.
        progress: show a progress bar on stderr.
        overwrite: replace an existing bundle at ``out_dir``.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ExportError: the checkpoint is missing, or any export step failed; nothing is left at ``out_dir``.
        FusionEdgeError: the checkpoint is invalid (the training package's CheckpointError).
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise ExportError(f"{path}: checkpoint not found")
    check_target(out_dir, overwrite=overwrite)
    from fusionedge.training.checkpoint import load_checkpoint

    model, info = load_checkpoint(path)
    return export_model(
        model, info, out_dir, name=name, version=version, checkpoint_sha256=sha256_file(path),
        overwrite=overwrite, progress=progress,
    )


class _Steps:
    """A progress bar over named pipeline steps (stderr, off when ``progress`` is False)."""

    def __init__(self, progress: bool, total: int) -> None:
        self._bar = tqdm(total=total, desc="export", unit="step", file=sys.stderr, disable=not progress,
                         leave=False)

    def run(self, label: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        self._bar.set_postfix_str(label)
        result = func(*args, **kwargs)
        self._bar.update(1)
        return result

    def __enter__(self) -> "_Steps":
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()
