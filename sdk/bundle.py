"""The model bundle on disk: its manifest schema, loading, verification and metric updates.

A bundle is a folder::

    bundle/
      manifest.json   what the model is: inputs, outputs, labels, geometry, hashes of every other file
      model.onnx      the portable artifact (weights inside, opset 18)
      golden.npz      reference inputs and outputs (``input.<name>`` / ``output.<name>`` arrays)
      engines/        optional TensorRT plans (a cache keyed by device fingerprint; not hashed)

Use it in this order:

1. :func:`load_bundle` reads ``manifest.json``, checks the schema field by field and (unless
   ``verify=False``) the size and SHA-256 of every file the manifest lists. A bad bundle raises
   :class:`~fusionedge.sdk.errors.BundleError` naming the file and the field; nothing is half-loaded.
2. :meth:`Bundle.golden` gives the reference inputs and outputs for a self-test.
3. :func:`update_bundle_metrics` records evaluation results in ``manifest.json`` (atomically; the
   ``metrics`` field is the one part of the manifest outside :attr:`Bundle.digest`, so recording
   them changes neither the file hashes nor the bundle's identity).

:attr:`Bundle.digest` (:func:`manifest_digest`) is the SHA-256 of the canonical manifest without
``metrics``. The manifest lists the hash of every other file, so that one digest pins the whole
bundle: ``load_bundle(path, expected_digest=...)`` refuses a manifest in which anything was changed —
a swapped label, a loosened golden tolerance, a replaced file hash.

This module is part of the device runtime: NumPy and the standard library only, never torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np

from fusionedge.sdk.errors import BundleError, InputError
from fusionedge.sdk.fileio import fsync_dir, json_safe, write_bytes_atomic, write_json_atomic
from fusionedge.sdk.spec import InputGeometry

__all__ = [
    "SCHEMA_VERSION",
    "MANIFEST_NAME",
    "MODEL_NAME",
    "GOLDEN_NAME",
    "Bundle",
    "load_bundle",
    "validate_manifest",
    "verify_files",
    "update_bundle_metrics",
    "manifest_digest",
    "check_digest",
    "DIGEST_EXCLUDES",
    "sha256_file",
    "write_json_atomic",
    "write_bytes_atomic",
    "fsync_dir",
    "json_safe",
]

#: The manifest schema this runtime reads and the exporter writes.
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
GOLDEN_NAME = "golden.npz"

MODALITIES = ("image", "video", "audio", "vector")
DECODES = ("softmax", "sigmoid", "centernet-heatmap", "centernet-size", "centernet-offset", "none")
DTYPES = ("float32", "float16", "uint8", "int8", "int32", "int64", "bool")
PRECISIONS = ("fp32", "fp16", "int8", "mixed")
LABEL_KINDS = ("events", "objects", "audio_tags")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
#: Manifest fields the digest leaves out: only what ``fusionedge eval --record`` rewrites in place.
DIGEST_EXCLUDES = ("metrics",)


# ------------------------------------------------------------------------------------------ hashing


def sha256_file(path: str | os.PathLike) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks.

    Args:
        path: the file.

    Returns:
        64 lowercase hex digits.

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """The bundle's identity: SHA-256 of its canonical manifest, every field but ``metrics``.

    Canonical means ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
    encoded as UTF-8, so key order and whitespace in the file do not matter while every value does.
    The manifest lists the size and SHA-256 of every other file, so this one digest pins the whole
    bundle (the ``engines/`` cache aside). ``metrics`` is left out so that recording evaluation results
    (:func:`update_bundle_metrics`) does not change the identity.

    Args:
        manifest: the parsed ``manifest.json``.

    Returns:
        64 lowercase hex digits.

    Raises:
        BundleError: the manifest holds something JSON cannot represent (NaN, a non-string key...).
    """
    body = {k: v for k, v in manifest.items() if k not in DIGEST_EXCLUDES}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise BundleError(f"{MANIFEST_NAME}: cannot be put in canonical form ({e})") from e
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _normalize_digest(digest: Any) -> str:
    """``"sha256:<hex>"`` or ``"<hex>"`` → 64 lowercase hex digits; InputError for anything else."""
    text = digest.strip().lower() if isinstance(digest, str) else None
    if text is not None and text.startswith("sha256:"):
        text = text[len("sha256:"):]
    if text is None or not _SHA256.match(text):
        raise InputError(f"expected_digest must be 64 hex digits (optionally 'sha256:'-prefixed), got {digest!r}")
    return text


def check_digest(manifest: Mapping[str, Any], expected_digest: str) -> str:
    """Refuse a manifest whose :func:`manifest_digest` is not ``expected_digest``.

    Args:
        manifest: the parsed ``manifest.json``.
        expected_digest: the pinned digest (from a release record, a deployment config...).

    Returns:
        The digest.

    Raises:
        BundleError: the digests differ — the manifest was altered (a label swapped, a tolerance
            loosened, a file hash replaced) or this is another bundle.
        InputError: ``expected_digest`` is not 64 hex digits.
    """
    expected = _normalize_digest(expected_digest)
    digest = manifest_digest(manifest)
    if digest != expected:
        raise BundleError(
            f"{MANIFEST_NAME}: digest mismatch (expected {expected[:12]}…, got {digest[:12]}…): the manifest "
            f"was altered or this is another bundle"
        )
    return digest


# --------------------------------------------------------------------------------------- schema


def _fail(where: str, message: str) -> BundleError:
    return BundleError(f"{MANIFEST_NAME}: field '{where}': {message}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


_KINDS: dict[str, tuple[Any, str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (_is_int, "an integer"),
    "number": (_is_number, "a finite number"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
}


def _get(obj: Mapping, key: str, where: str, kind: str, *, nullable: bool = False) -> Any:
    """Return ``obj[key]`` after checking that it exists and has the expected JSON type."""
    path = f"{where}.{key}" if where else key
    if key not in obj:
        raise _fail(path, "missing")
    value = obj[key]
    if value is None and nullable:
        return None
    check, description = _KINDS[kind]
    if not check(value):
        raise _fail(path, f"expected {description}, got {_type_name(value)}")
    return value


def _get_choice(obj: Mapping, key: str, where: str, choices: tuple[str, ...]) -> str:
    value = _get(obj, key, where, "str")
    if value not in choices:
        path = f"{where}.{key}" if where else key
        raise _fail(path, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def _check_positive(value: Any, where: str) -> None:
    if value <= 0:
        raise _fail(where, f"expected a value > 0, got {value}")


def _check_shape(shape: list, where: str) -> None:
    if not shape:
        raise _fail(where, "expected a non-empty list")
    for i, dim in enumerate(shape):
        if isinstance(dim, str):
            if not dim:
                raise _fail(f"{where}[{i}]", "expected a dimension name, got an empty string")
        elif not _is_int(dim) or dim <= 0:
            raise _fail(f"{where}[{i}]", f"expected a positive integer or a dimension name, got {dim!r}")
    if shape[0] != "batch":
        raise _fail(f"{where}[0]", f"expected 'batch' (the dynamic batch dimension), got {shape[0]!r}")


def _check_number_list(obj: Mapping, key: str, where: str, length: int) -> None:
    values = _get(obj, key, where, "list")
    if len(values) != length or not all(_is_number(v) for v in values):
        raise _fail(f"{where}.{key}", f"expected a list of {length} numbers, got {values!r}")


def _check_preprocessing(entry: Mapping, modality: str, where: str) -> None:
    pre = _get(entry, "preprocessing", where, "dict")
    where = f"{where}.preprocessing"
    if modality in ("video", "image"):
        for key in ("height", "width") + (("clip_frames",) if modality == "video" else ()):
            _check_positive(_get(pre, key, where, "int"), f"{where}.{key}")
        if modality == "video":
            _check_positive(_get(pre, "clip_seconds", where, "number"), f"{where}.clip_seconds")
        _check_number_list(pre, "mean", where, 3)
        _check_number_list(pre, "std", where, 3)
        _get(pre, "color", where, "str")
        _get(pre, "resize", where, "str")
    elif modality == "audio":
        _check_positive(_get(pre, "sample_rate", where, "int"), f"{where}.sample_rate")
        _check_positive(_get(pre, "clip_seconds", where, "number"), f"{where}.clip_seconds")
        _check_positive(_get(pre, "channels", where, "int"), f"{where}.channels")


def _check_tensors(manifest: Mapping, key: str) -> None:
    entries = _get(manifest, key, "", "list")
    if not entries:
        raise _fail(key, "expected a non-empty list")
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict):
            raise _fail(where, f"expected an object, got {_type_name(entry)}")
        name = _get(entry, "name", where, "str")
        if not name or name in seen:
            raise _fail(f"{where}.name", f"expected a unique non-empty name, got {name!r}")
        seen.add(name)
        _check_shape(_get(entry, "shape", where, "list"), f"{where}.shape")
        if key == "inputs":
            modality = _get_choice(entry, "modality", where, MODALITIES)
            _get_choice(entry, "dtype", where, DTYPES)
            _get(entry, "layout", where, "str")
            _check_preprocessing(entry, modality, where)
        else:
            _get_choice(entry, "decode", where, DECODES)


def _check_source(manifest: Mapping) -> None:
    source = _get(manifest, "source", "", "dict")
    sha = _get(source, "checkpoint_sha256", "source", "str", nullable=True)
    if sha is not None and not _SHA256.match(sha):
        raise _fail("source.checkpoint_sha256", f"expected 64 hex digits or null, got {sha!r}")
    _get(source, "model_name", "source", "str")
    _get(source, "model_config", "source", "dict")
    _get(source, "git_rev", "source", "str", nullable=True)
    _get(source, "fusionedge_version", "source", "str")


def _check_labels(manifest: Mapping) -> None:
    labels = _get(manifest, "labels", "", "dict")
    for kind in LABEL_KINDS:
        values = _get(labels, kind, "labels", "list")
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v:
                raise _fail(f"labels.{kind}[{i}]", f"expected a non-empty string, got {v!r}")
        if len(set(values)) != len(values):
            raise _fail(f"labels.{kind}", "expected unique labels")


def _check_geometry(manifest: Mapping) -> None:
    geometry = _get(manifest, "geometry", "", "dict")
    for key in ("clip_frames", "height", "width", "sample_rate", "output_stride"):
        _check_positive(_get(geometry, key, "geometry", "int"), f"geometry.{key}")
    _check_positive(_get(geometry, "clip_seconds", "geometry", "number"), "geometry.clip_seconds")
    _check_number_list(geometry, "mean", "geometry", 3)
    _check_number_list(geometry, "std", "geometry", 3)


def _check_files(manifest: Mapping) -> None:
    files = _get(manifest, "files", "", "dict")
    for rel, entry in files.items():
        where = f"files[{rel!r}]"
        _safe_relpath(rel, where)
        if not isinstance(entry, dict):
            raise _fail(where, f"expected an object, got {_type_name(entry)}")
        sha = _get(entry, "sha256", where, "str")
        if not _SHA256.match(sha):
            raise _fail(f"{where}.sha256", f"expected 64 lowercase hex digits, got {sha!r}")
        size = _get(entry, "size", where, "int")
        if size < 0:
            raise _fail(f"{where}.size", f"expected a size >= 0, got {size}")
    if MODEL_NAME not in files:
        raise _fail("files", f"expected an entry for {MODEL_NAME}")


def _check_golden_and_batch(manifest: Mapping) -> None:
    golden = _get(manifest, "golden", "", "dict")
    golden_file = _get(golden, "file", "golden", "str")
    _safe_relpath(golden_file, "golden.file")
    if golden_file not in manifest["files"]:
        raise _fail("golden.file", f"{golden_file!r} is not listed in 'files'")
    for key in ("rtol", "atol"):
        if _get(golden, key, "golden", "number") < 0:
            raise _fail(f"golden.{key}", "expected a tolerance >= 0")
    _check_positive(_get(golden, "batch", "golden", "int"), "golden.batch")
    batch = _get(manifest, "batch", "", "dict")
    lo, opt, hi = (_get(batch, k, "batch", "int") for k in ("min", "opt", "max"))
    if not 1 <= lo <= opt <= hi:
        raise _fail("batch", f"expected 1 <= min <= opt <= max, got min {lo}, opt {opt}, max {hi}")


def _safe_relpath(rel: str, where: str) -> None:
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or rel == MANIFEST_NAME:
        raise _fail(where, f"expected a relative path inside the bundle (not the manifest), got {rel!r}")


def validate_manifest(manifest: Any) -> None:
    """Check a parsed ``manifest.json`` against schema version 1, field by field.

    Args:
        manifest: the parsed JSON document.

    Raises:
        BundleError: the first field that is missing or wrong, e.g.
            ``manifest.json: field 'inputs[1].shape': expected a list, got str``; or a
            ``schema_version`` this runtime does not read.
    """
    if not isinstance(manifest, dict):
        raise BundleError(f"{MANIFEST_NAME}: expected a JSON object at the top, got {_type_name(manifest)}")
    version = _get(manifest, "schema_version", "", "int")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{MANIFEST_NAME}: schema_version {version} is not supported by this runtime (it reads "
            f"{SCHEMA_VERSION}); upgrade fusionedge or re-export the bundle"
        )
    for key in ("name", "version"):
        if not _get(manifest, key, "", "str"):
            raise _fail(key, "expected a non-empty string")
    created = _get(manifest, "created", "", "str")
    try:
        datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError as e:
        raise _fail("created", f"expected an ISO-8601 time, got {created!r}") from e
    _check_source(manifest)
    _check_tensors(manifest, "inputs")
    _check_tensors(manifest, "outputs")
    _check_labels(manifest)
    _check_geometry(manifest)
    _get_choice(manifest, "precision", "", PRECISIONS)
    _get(manifest, "metrics", "", "dict")
    _check_files(manifest)
    _check_golden_and_batch(manifest)


# ---------------------------------------------------------------------------------- verification


def verify_files(root: str | os.PathLike, files: Mapping[str, Mapping[str, Any]]) -> None:
    """Check that every listed file exists with the recorded size and SHA-256.

    Args:
        root: the bundle folder.
        files: the manifest's ``files`` mapping ``{relpath: {"sha256", "size"}}``.

    Raises:
        BundleError: naming the first file that is missing, has the wrong size or the wrong hash.
    """
    root = Path(root)
    for rel, entry in files.items():
        path = root / rel
        if not path.is_file():
            raise BundleError(
                f"{rel}: missing from the bundle (listed in {MANIFEST_NAME}); re-export or re-download it"
            )
        size = path.stat().st_size
        if size != entry["size"]:
            raise BundleError(
                f"{rel}: size mismatch (expected {entry['size']} bytes, got {size}): the file is truncated "
                f"or was altered"
            )
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise BundleError(
                f"{rel}: sha256 mismatch (expected {entry['sha256'][:12]}…, got {digest[:12]}…): "
                f"the bundle was altered or corrupted"
            )


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle folder (no such directory)")
    if not path.is_file():
        raise BundleError(f"{MANIFEST_NAME}: missing in {root}; this folder is not a bundle")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{MANIFEST_NAME}: not UTF-8 text ({e}); the bundle is corrupted") from e
    except json.JSONDecodeError as e:
        raise BundleError(
            f"{MANIFEST_NAME}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from e
    validate_manifest(manifest)
    return manifest


# ------------------------------------------------------------------------------------------- Bundle


@dataclass(frozen=True)
class Bundle:
    """A loaded (and, unless asked otherwise, verified) bundle. Treat ``manifest`` as read-only."""

    path: Path  # the bundle folder
    manifest: dict  # the parsed manifest.json, schema-checked
    geometry: InputGeometry
    labels: dict[str, tuple[str, ...]]  # {"events", "objects", "audio_tags"}
    model_path: Path  # path / "model.onnx"
    verified: bool  # True when every file's size and sha256 were checked at load

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical manifest without ``metrics`` (:func:`manifest_digest`): pin this."""
        return manifest_digest(self.manifest)

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def model_id(self) -> str:
        """``name@version``, how results name the model."""
        return f"{self.name}@{self.version}"

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def inputs(self) -> list[dict]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.manifest["outputs"]

    @property
    def engines_dir(self) -> Path:
        """Where device-built TensorRT plans are cached (may not exist)."""
        return self.path / "engines"

    def golden(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Load the reference inputs and outputs from the golden file.

        Returns:
            ``(inputs, outputs)``, each ``{name: array}`` for every input / output the manifest lists.

        Raises:
            BundleError: the golden file is unreadable or lacks an input or output.
        """
        rel = self.manifest["golden"]["file"]
        try:
            with np.load(self.path / rel, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError) as e:
            raise BundleError(f"{rel}: cannot be read as .npz ({e}); the bundle is corrupted") from e
        inputs, outputs = {}, {}
        for prefix, specs, dest in (("input", self.inputs, inputs), ("output", self.outputs, outputs)):
            for spec in specs:
                key = f"{prefix}.{spec['name']}"
                if key not in arrays:
                    raise BundleError(f"{rel}: no array {key!r}; re-export the bundle")
                dest[spec["name"]] = arrays[key]
        return inputs, outputs


def load_bundle(path: str | os.PathLike, *, verify: bool = True, expected_digest: str | None = None) -> Bundle:
    """Read a bundle folder, check its manifest and (by default) every file's size and hash.

    Args:
        path: the bundle folder (the one holding ``manifest.json``).
        verify: check the size and SHA-256 of every file the manifest lists. Only skip this for a
            bundle verified moments ago; the schema is always checked.
        expected_digest: the bundle's pinned :attr:`Bundle.digest` (64 hex digits, optionally
            ``sha256:``-prefixed). When given, a manifest with any other digest is refused before any
            file is hashed.

    Returns:
        The :class:`Bundle`.

    Raises:
        BundleError: no manifest, invalid JSON, a missing or wrongly typed field (named), an unknown
            schema version, a digest other than ``expected_digest``, or a missing / truncated /
            altered file (named).
        InputError: ``expected_digest`` is not 64 hex digits.
    """
    root = Path(path)
    if expected_digest is not None:
        _normalize_digest(expected_digest)  # a malformed pin is the caller's error, whatever the bundle
    manifest = _read_manifest(root)
    if expected_digest is not None:
        check_digest(manifest, expected_digest)
    if verify:
        verify_files(root, manifest["files"])
    else:
        for rel in (MODEL_NAME, manifest["golden"]["file"]):
            if not (root / rel).is_file():
                raise BundleError(f"{rel}: missing from the bundle (listed in {MANIFEST_NAME})")
    labels = {kind: tuple(manifest["labels"][kind]) for kind in LABEL_KINDS}
    return Bundle(
        path=root,
        manifest=manifest,
        geometry=InputGeometry.from_dict(manifest["geometry"]),
        labels=labels,
        model_path=root / MODEL_NAME,
        verified=verify,
    )


def update_bundle_metrics(path: str | os.PathLike, metrics: Mapping[str, Any]) -> dict:
    """Replace the manifest's ``metrics`` with ``metrics``, rewriting ``manifest.json`` atomically.

    ``metrics`` is outside :attr:`Bundle.digest`, so the bundle keeps its identity and stays valid;
    the other files are not touched.

    Args:
        path: the bundle folder.
        metrics: JSON-serializable results (e.g. from ``fusionedge eval``).

    Returns:
        The updated manifest.

    Raises:
        BundleError: the bundle's manifest is missing or invalid.
        InputError: ``metrics`` is not a mapping or not JSON-serializable (the manifest is unchanged).
    """
    if not isinstance(metrics, Mapping):
        raise InputError(f"metrics must be a mapping, got {_type_name(metrics)}")
    root = Path(path)
    manifest = _read_manifest(root)
    manifest["metrics"] = json_safe(dict(metrics))
    write_json_atomic(root / MANIFEST_NAME, manifest)
    return manifest
