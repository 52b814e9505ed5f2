"""Write a model bundle folder (``manifest.json``, ``model.onnx``, ``golden.npz``) atomically.

Every file the model reads is in the bundle and listed with its hash: a model whose weights live in
ONNX external-data files (needed past protobuf's 2 GiB) has each file copied beside ``model.onnx``
under the same relative name and listed in ``files`` — the runtime refuses any file it finds in a
bundle that the manifest does not list.

:func:`write_bundle` builds the whole bundle in a temporary folder beside the target
(``<out_dir>.tmp-XXXX``), fsyncs it, verifies it with the runtime's own
:func:`~fusionedge.sdk.bundle.load_bundle`, and only then renames it to ``out_dir``. A failure at
any point removes the temporary folder: ``out_dir`` either holds a complete, verified bundle or is
left as it was.

The manifest schema is documented (and checked) in :mod:`fusionedge.sdk.bundle`.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from fusionedge.export.onnx_export import MAX_BATCH, OPSET, ExportError
from fusionedge.export.parity import ParityReport
from fusionedge.sdk.backends.base import non_finite
from fusionedge.sdk.bundle import (
    ENGINES_DIR,
    GOLDEN_NAME,
    MANIFEST_NAME,
    MODEL_NAME,
    SCHEMA_VERSION,
    Bundle,
    load_bundle,
    sha256_file,
)
from fusionedge.sdk.bundle_signature import SIGNATURE_NAME
from fusionedge.sdk.errors import FusionEdgeError
from fusionedge.sdk.fileio import fsync_dir, json_safe, write_json_atomic
from fusionedge.sdk.spec import (
    INPUT_NAMES,
    MODALITIES,
    OUTPUT_DECODES,
    OUTPUT_NAMES,
    OUTPUT_VOCABULARY,
    InputGeometry,
)

__all__ = ["DECODES", "build_manifest", "check_golden_finite", "check_target", "external_data_files",
           "fsync_file", "git_rev", "package_version", "publish_folder", "utc_now", "write_bundle",
           "write_bundle_folder"]

#: How the runtime decodes each contract output (the contract's own table).
DECODES: dict[str, str] = OUTPUT_DECODES
_LABEL_KINDS = ("events", "objects", "audio_tags")
#: The label list each scored contract output refers to (schema 2 writes it on the output).
_OUTPUT_LABELS: dict[str, str] = {
    "event_logits": "events",
    "audio_tag_logits": "audio_tags",
    "det_heatmap": "objects",
}


def git_rev(start: str | os.PathLike | None = None) -> str | None:
    """The git commit of the source tree holding ``start`` (default: this package), or None.

    Returns:
        40 hex digits, or None where the code is not in a git checkout or git is missing.
    """
    where = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev if len(rev) == 40 else None


def utc_now() -> str:
    """The current UTC time as the manifest's ``created`` writes it, e.g. ``2026-01-31T12:00:00Z``."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None where it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_target(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check that a bundle may be written at ``out_dir`` (call before expensive work).

    Args:
        out_dir: the bundle folder to create.
        overwrite: allow replacing an existing non-empty folder.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ExportError: ``out_dir`` is a file, or a non-empty folder and ``overwrite`` is False, or its
            parent does not exist.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out}: folder exists and is not empty; remove it or pass overwrite=True")
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent}: parent folder does not exist")
    return out


def _input_entries(geometry: InputGeometry, golden_inputs: Mapping[str, np.ndarray]) -> list[dict]:
    g = geometry
    expected = {
        "video": (g.clip_frames, 3, g.height, g.width),
        "audio": (g.audio_samples,),
        "presence": (len(MODALITIES),),
    }
    for name in INPUT_NAMES:
        if name not in golden_inputs:
            raise ExportError(f"golden inputs lack {name!r}")
        got = tuple(golden_inputs[name].shape[1:])
        if got != expected[name]:
            raise ExportError(
                f"golden input {name!r} has per-sample shape {got}, the geometry says {expected[name]}"
            )
    return [
        {
            "name": "video", "modality": "video", "shape": ["batch", *expected["video"]], "dtype": "float32",
            "layout": "NTCHW",
            "preprocessing": {
                "clip_frames": g.clip_frames, "height": g.height, "width": g.width,
                "clip_seconds": g.clip_seconds, "mean": list(g.mean), "std": list(g.std),
                "color": "RGB", "resize": "area-stretch", "scale": 1.0 / 255.0,
            },
        },
        {
            "name": "audio", "modality": "audio", "shape": ["batch", *expected["audio"]], "dtype": "float32",
            "layout": "NS",
            "preprocessing": {"sample_rate": g.sample_rate, "clip_seconds": g.clip_seconds, "channels": 1},
        },
        {
            "name": "presence", "modality": "vector", "shape": ["batch", *expected["presence"]],
            "dtype": "float32", "layout": "NM",
            "preprocessing": {"order": list(MODALITIES), "values": "1 present, 0 missing"},
        },
    ]


def _output_entries(golden_outputs: Mapping[str, np.ndarray], labels: Mapping[str, Any]) -> list[dict]:
    """The manifest's outputs: those of the heads the task has (a head whose vocabulary is empty has none)."""
    entries = []
    for name in OUTPUT_NAMES:
        if not labels[OUTPUT_VOCABULARY[name]]:
            if name in golden_outputs:
                raise ExportError(f"golden outputs have {name!r}, but the labels have no {OUTPUT_VOCABULARY[name]}")
            continue
        if name not in golden_outputs:
            raise ExportError(f"golden outputs lack {name!r}")
        entries.append({
            "name": name,
            "shape": ["batch", *(int(d) for d in golden_outputs[name].shape[1:])],
            "dtype": "float32",
            "decode": DECODES[name],
            **({"labels": _OUTPUT_LABELS[name]} if name in _OUTPUT_LABELS else {}),
        })
    return entries


def build_manifest(
    info: Mapping[str, Any],
    parity: ParityReport,
    golden_inputs: Mapping[str, np.ndarray],
    golden_outputs: Mapping[str, np.ndarray],
    files: Mapping[str, Mapping[str, Any]],
    *,
    name: str,
    version: str,
    metrics: Mapping[str, Any] | None = None,
    checkpoint_sha256: str | None = None,
) -> dict:
    """Assemble the manifest dict (schema version 2, task ``fusion``) for a bundle's files.

    Args:
        info: the checkpoint info (``model_name``, ``model_config``, ``geometry``, ``labels``,
            optionally ``metrics`` and ``epoch`` from training).
        parity: the passed parity report (its tolerances become the golden tolerances).
        golden_inputs: reference inputs, ``{name: (B, ...)}``.
        golden_outputs: reference outputs, ``{name: (B, ...)}``.
        files: ``{relpath: {"sha256", "size"}}`` of every file except the manifest.
        name: bundle name.
        version: bundle version.
        metrics: evaluation metrics (usually empty at export; ``fusionedge eval`` fills them).
        checkpoint_sha256: hash of the source checkpoint file, or None for an in-memory model.

    Returns:
        The manifest as a JSON-safe dict.

    Raises:
        ExportError: ``info`` lacks a field, or the golden arrays disagree with the geometry.
    """
    for key in ("model_name", "geometry", "labels"):
        if key not in info:
            raise ExportError(f"model info lacks {key!r} (expected from load_checkpoint)")
    labels = info["labels"]
    missing = [k for k in _LABEL_KINDS if k not in labels]
    if missing:
        raise ExportError(f"model info labels lack {missing}")
    geometry = InputGeometry.from_dict(dict(info["geometry"]))
    batch = int(next(iter(golden_inputs.values())).shape[0])
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "task": "fusion",
        "name": name,
        "version": version,
        "created": utc_now(),
        "source": {
            "checkpoint_sha256": checkpoint_sha256,
            "model_name": str(info["model_name"]),
            "model_config": dict(info.get("model_config") or {}),
            "git_rev": git_rev(),
            "fusionedge_version": package_version("fusionedge") or "0+unknown",
            "training": {"epoch": info.get("epoch"), "metrics": dict(info.get("metrics") or {})},
        },
        "inputs": _input_entries(geometry, golden_inputs),
        "outputs": _output_entries(golden_outputs, labels),
        "labels": {k: [str(v) for v in labels[k]] for k in _LABEL_KINDS},
        "modalities": list((info.get("model_config") or {}).get("modalities") or MODALITIES),
        "geometry": geometry.to_dict(),
        "precision": "fp32",
        "metrics": dict(metrics or {}),
        "files": {rel: dict(entry) for rel, entry in files.items()},
        "golden": {"file": GOLDEN_NAME, "rtol": parity.rtol, "atol": parity.atol, "batch": batch},
        "batch": {"min": 1, "opt": 1, "max": MAX_BATCH},
        "export": {
            "opset": OPSET,
            "exporter": "torch.onnx.export(dynamo=True)",
            "torch_version": package_version("torch"),
            "onnx_version": package_version("onnx"),
            "parity": parity.to_dict(),
        },
    }
    return json_safe(manifest)


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of an ONNX graph: initializers, sparse ones, and constants in nodes and subgraphs."""
    from onnx import AttributeProto

    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == AttributeProto.GRAPH:
                yield from _tensors(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _tensors(g)


def external_data_files(onnx_path: str | os.PathLike) -> list[str]:
    """The external-data files an ONNX model reads, as relative paths from its folder, sorted.

    Args:
        onnx_path: the ``.onnx`` file (its external data is not loaded).

    Returns:
        The distinct ``location`` values of tensors stored outside the protobuf (often none).

    Raises:
        ExportError: the file is not ONNX, or a location is absolute, climbs out with ``..``, or would
            collide with a file the bundle reserves (manifest, signature, golden file, engines/).
    """
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:
        raise ExportError(f"{Path(onnx_path).name}: cannot be read as ONNX: {type(e).__name__}: {e}") from e
    reserved = (MODEL_NAME, GOLDEN_NAME, MANIFEST_NAME, SIGNATURE_NAME)
    found: set[str] = set()
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        rel = next((e.value for e in tensor.external_data if e.key == "location"), "")
        p = PurePosixPath(rel)
        if (not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or rel in reserved
                or p.parts[0] == ENGINES_DIR):
            raise ExportError(f"{Path(onnx_path).name}: tensor {tensor.name!r}: external data {rel!r}: expected a "
                              f"relative path inside the model's folder, other than {', '.join(reserved)} and "
                              f"{ENGINES_DIR}/")
        found.add(p.as_posix())
    return sorted(found)


def check_golden_finite(golden_inputs: Mapping[str, np.ndarray], golden_outputs: Mapping[str, np.ndarray]) -> None:
    """Refuse golden arrays holding NaN or Inf: a bundle's self-test could never pass with them.

    Raises:
        ExportError: ``golden output '<name>' holds NaN (first at index ...)``, naming the array.
    """
    for kind, arrays in (("input", golden_inputs), ("output", golden_outputs)):
        for name, arr in arrays.items():
            what = non_finite(arr)
            if what is not None:
                raise ExportError(f"golden {kind} '{name}' holds {what}; the model computes non-finite values "
                                  f"on the golden inputs, refusing to write the bundle")


def fsync_file(path: Path) -> None:
    """fsync a file already written and closed (a copied model, a saved golden file)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def publish_folder(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move a finished, fsynced folder from ``tmp`` to ``out`` by renames, then fsync the parent.

    An existing non-empty ``out`` is only replaced when ``overwrite``: it is renamed aside first and
    put back if the rename of ``tmp`` fails, then removed. ``tmp`` must be on the same file system.

    Raises:
        ExportError: ``out`` exists and is not empty while ``overwrite`` is False (see :func:`check_target`).
        OSError: a rename failed (the previous folder is back in place).
    """
    check_target(out, overwrite=overwrite)
    old: Path | None = None
    if out.is_dir():
        if any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
            old.rmdir()
            os.rename(out, old)
        else:
            out.rmdir()
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)  # put the previous bundle back
        raise
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_bundle(
    out_dir: str | os.PathLike,
    onnx_path: str | os.PathLike,
    info: Mapping[str, Any],
    parity: ParityReport,
    golden_inputs: Mapping[str, np.ndarray],
    golden_outputs: Mapping[str, np.ndarray],
    metrics: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    version: str = "0.1.0",
    checkpoint_sha256: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write and verify a bundle at ``out_dir``, atomically.

    Args:
        out_dir: the bundle folder to create (must not exist, or be empty, unless ``overwrite``).
        onnx_path: the checked, parity-tested ONNX file (copied as ``model.onnx``, with its external-data
            files, if any, under their relative names; each is listed and hashed).
        info: checkpoint info (see :func:`build_manifest`).
        parity: the passed :class:`ParityReport`.
        golden_inputs: reference inputs ``{name: (B, ...)}``.
        golden_outputs: reference outputs ``{name: (B, ...)}``.
        metrics: evaluation metrics for the manifest (default: none yet).
        name: bundle name (default: ``info["model_name"]``).
        version: bundle version.
        checkpoint_sha256: hash of the source checkpoint, if any.
        overwrite: replace an existing bundle at ``out_dir`` (swapped in only once the new one verified).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ExportError: the parity report failed, the target is not writable, the inputs are
            inconsistent, a golden array holds NaN/Inf, or the written bundle does not verify.
            Nothing is left at ``out_dir``.
    """
    if not parity.ok:
        raise ExportError(f"refusing to write a bundle whose parity check failed: {parity.summary()}")

    def manifest_for(files: Mapping[str, Mapping[str, Any]]) -> dict:
        return build_manifest(
            info, parity, golden_inputs, golden_outputs, files,
            name=name or str(info.get("model_name", "model")), version=version, metrics=metrics,
            checkpoint_sha256=checkpoint_sha256,
        )

    return write_bundle_folder(out_dir, onnx_path, golden_inputs, golden_outputs, manifest_for,
                               overwrite=overwrite)


def write_bundle_folder(
    out_dir: str | os.PathLike,
    onnx_path: str | os.PathLike,
    golden_inputs: Mapping[str, np.ndarray],
    golden_outputs: Mapping[str, np.ndarray],
    manifest_for: Callable[[Mapping[str, Mapping[str, Any]]], dict],
    *,
    overwrite: bool = False,
    check: Callable[[Bundle], None] | None = None,
) -> Path:
    """Write and verify any bundle at ``out_dir`` atomically: the model, golden file and manifest.

    The one writer behind :func:`write_bundle` (the fused model) and
    :func:`fusionedge.export.import_onnx.import_onnx` (a user's model): it copies the model and its
    external data, saves the golden arrays, hashes every file, asks ``manifest_for`` for the manifest
    of those files, verifies the result with the runtime's loader and only then renames it into place.

    Args:
        out_dir: the bundle folder to create (must not exist, or be empty, unless ``overwrite``).
        onnx_path: the ONNX file, copied as ``model.onnx``.
        golden_inputs: reference inputs ``{name: (B, ...)}``.
        golden_outputs: reference outputs ``{name: (B, ...)}``.
        manifest_for: builds the manifest from ``{relpath: {"sha256", "size"}}`` of every other file.
        overwrite: replace an existing bundle at ``out_dir`` (swapped in only once the new one verified).
        check: called with the loaded, verified bundle before it is published (e.g. the runtime's
            contract check); a FusionEdgeError it raises aborts the write.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ExportError: the target is not writable, a golden array holds NaN/Inf, or the written bundle
            does not verify. Nothing is left at ``out_dir``.
    """
    out = check_target(out_dir, overwrite=overwrite)
    check_golden_finite(golden_inputs, golden_outputs)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        shutil.copyfile(onnx_path, tmp / MODEL_NAME)
        external = external_data_files(onnx_path)
        for rel in external:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(onnx_path).parent / rel, tmp / rel)
        arrays = {f"input.{k}": np.asarray(v) for k, v in golden_inputs.items()}
        arrays.update({f"output.{k}": np.asarray(v) for k, v in golden_outputs.items()})
        np.savez(tmp / GOLDEN_NAME, **arrays)
        files = {}
        for rel in (MODEL_NAME, GOLDEN_NAME, *external):
            fsync_file(tmp / rel)
            files[rel] = {"sha256": sha256_file(tmp / rel), "size": (tmp / rel).stat().st_size}
        write_json_atomic(tmp / MANIFEST_NAME, manifest_for(files))
        try:
            written = load_bundle(tmp, verify=True)
            written.golden()
            if check is not None:
                check(written)
        except FusionEdgeError as e:
            raise ExportError(f"the written bundle does not verify: {e}") from e
        for folder in {(tmp / rel).parent for rel in external} | {tmp}:
            fsync_dir(folder)
        publish_folder(tmp, out, overwrite)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (FusionEdgeError, KeyboardInterrupt, SystemExit)):
            raise
        raise ExportError(f"writing the bundle at {out} failed: {type(e).__name__}: {e}") from e
    return out
