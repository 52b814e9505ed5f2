"""The model bundle on disk: loading, verification, its identity (digest) and metric updates.

A bundle is a folder::

    bundle/
      manifest.json   what the model is: inputs, outputs, labels, geometry, hashes of every other file
      model.onnx      the portable artifact (opset 18; weights inside, or in listed external-data files)
      golden.npz      reference inputs and outputs (``input.<name>`` / ``output.<name>`` arrays)
      manifest.sig    optional ed25519 signature over the digest (:mod:`~fusionedge.sdk.bundle_signature`)
      engines/        optional TensorRT plans (a cache keyed by device fingerprint; not listed)

Use it in this order:

1. :func:`load_bundle` refuses any link inside the folder, reads ``manifest.json`` within size, depth
   and integer-length limits, checks the schema field by field (:mod:`~fusionedge.sdk.bundle_schema`),
   the pinned digest and signature when asked, refuses any file the manifest does not list, and
   (unless ``verify=False``) checks the size and SHA-256 of every listed file. A bad bundle raises
   :class:`~fusionedge.sdk.errors.BundleError` naming the file and the field; nothing is half-loaded.
2. :meth:`Bundle.golden` gives the reference inputs and outputs for a self-test
   (:func:`fusionedge.sdk.selftest.run_golden`).
3. :func:`update_bundle_metrics` records evaluation results in ``manifest.json`` (atomically; the
   ``metrics`` field is the one part of the manifest outside :attr:`Bundle.digest`, so recording
   them changes neither the file hashes nor the bundle's identity).

**What protects what.** The manifest hashes every other file, and every file a model can read must
be listed — ONNX external data resolves against the folder, so an unlisted file or a link could change
predictions under valid hashes; both are refused. The manifest itself is protected by its digest,
:attr:`Bundle.digest` (:func:`manifest_digest`): SHA-256 of the canonical manifest (sorted keys,
compact separators, UTF-8) without ``metrics``, so that one value pins the whole bundle —
``load_bundle(path, expected_digest=...)`` refuses a swapped label, a loosened golden tolerance, a
replaced file hash. Pinning a digest is the primary defence because it is what a distribution system
already carries: a TUF target's hashes and a fleet release record name the bundle by it, and they are
signed by the fleet's own keys, so a device needs no extra key to trust it. A bundle moved by hand has
no such record; for it :func:`~fusionedge.sdk.bundle_signature.sign_bundle` writes an optional
``manifest.sig`` (ed25519 over the digest), verified when the caller passes a trusted
``public_key``. ``cryptography`` is only imported then, so the runtime install does not need it.

This module is part of the device runtime: NumPy and the standard library only, never torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.sdk.bundle_schema import (
    DECODES,
    DTYPES,
    GOLDEN_NAME,
    LABEL_KINDS,
    MANIFEST_NAME,
    MODALITIES,
    MODEL_NAME,
    PRECISIONS,
    SCHEMA_VERSION,
    SHA256_HEX,
    SUPPORTED_VERSIONS,
    TASKS,
    manifest_task,
    type_name,
    validate_manifest,
)
from fusionedge.sdk.bundle_signature import SIGNATURE_NAME, load_public_keys, verify_signature
from fusionedge.sdk.errors import BundleError, InputError
from fusionedge.sdk.fileio import fsync_dir, json_safe, read_json, write_bytes_atomic, write_json_atomic
from fusionedge.sdk.spec import InputGeometry

__all__ = [
    "DECODES",
    "DIGEST_EXCLUDES",
    "DTYPES",
    "ENGINES_DIR",
    "GOLDEN_NAME",
    "LABEL_KINDS",
    "MANIFEST_MAX_BYTES",
    "MANIFEST_NAME",
    "MAX_ENTRIES",
    "MODALITIES",
    "MODEL_NAME",
    "PRECISIONS",
    "SCHEMA_VERSION",
    "SUPPORTED_VERSIONS",
    "TASKS",
    "Bundle",
    "check_digest",
    "check_unlisted",
    "fsync_dir",
    "json_safe",
    "load_bundle",
    "manifest_digest",
    "scan_folder",
    "sha256_file",
    "update_bundle_metrics",
    "validate_manifest",
    "verify_files",
    "write_bytes_atomic",
    "write_json_atomic",
]

_CHUNK = 1 << 20
#: Manifest fields the digest leaves out: only what ``fusionedge eval --record`` rewrites in place.
DIGEST_EXCLUDES = ("metrics",)
#: The folder of device-built TensorRT plans: a cache, not listed in the manifest.
ENGINES_DIR = "engines"
#: Largest manifest read (a real one is a few kilobytes).
MANIFEST_MAX_BYTES = 1 << 20
#: Most entries (files and folders) a bundle folder may hold; a real one has a handful.
MAX_ENTRIES = 10_000
#: Files the runtime itself may leave in the bundle's top folder: the temp names of an atomic rewrite
#: of the manifest or its signature (``update_bundle_metrics``, ``sign_bundle``) cut short by a crash.
_RUNTIME_TEMP = re.compile(r"^\.(manifest\.json|manifest\.sig)\.[^/]+\.tmp$")


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
    if text is None or not SHA256_HEX.match(text):
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


def scan_folder(root: str | os.PathLike, *, max_entries: int = MAX_ENTRIES) -> list[str]:
    """Every regular file under a bundle folder, as sorted POSIX relative paths; links are refused.

    ``root`` itself may be a symbolic link (a device's ``current`` link to the bundle in use); nothing
    inside it may be: a link would make the runtime read a file the manifest's hashes never covered.

    Args:
        root: the bundle folder.
        max_entries: most files and folders accepted.

    Returns:
        The regular files, e.g. ``["engines/x.plan", "golden.npz", "manifest.json", "model.onnx"]``.

    Raises:
        BundleError: an entry is a symbolic link, or neither a regular file nor a folder (a FIFO, a
            device, a socket), or there are more than ``max_entries`` entries; the message names it.
    """
    base = Path(root)
    files: list[str] = []
    stack = [""]
    count = 0
    while stack:
        prefix = stack.pop()
        try:
            it = os.scandir(base / prefix if prefix else base)
        except OSError as e:
            raise BundleError(f"{prefix or base}: cannot be listed ({e})") from e
        with it:
            for entry in it:
                rel = f"{prefix}{entry.name}"
                count += 1
                if count > max_entries:
                    raise BundleError(f"{base}: more than {max_entries} files and folders; not a bundle")
                if entry.is_symlink():
                    raise BundleError(f"{rel}: a symbolic link in the bundle; a bundle holds regular files "
                                      f"only (copy the file in, or re-export)")
                if entry.is_dir(follow_symlinks=False):
                    stack.append(f"{rel}/")
                elif entry.is_file(follow_symlinks=False):
                    files.append(rel)
                else:
                    raise BundleError(f"{rel}: not a regular file or folder (a FIFO, device or socket)")
    return sorted(files)


def check_unlisted(files: Sequence[str], manifest: Mapping[str, Any]) -> None:
    """Refuse a regular file in the bundle that the manifest does not list (and hash).

    Allowed besides the listed files: ``manifest.json``, ``manifest.sig``, the temp names the runtime
    writes beside them, and anything under ``engines/`` (device-built TensorRT plans, checked against
    their own fingerprint and hash when loaded). Any other file could be read by the model — ONNX
    external data is resolved relative to ``model.onnx`` — without a hash vouching for it.

    Args:
        files: the bundle's regular files (:func:`scan_folder`).
        manifest: the schema-checked manifest.

    Raises:
        BundleError: ``<file>: in the bundle folder but not listed in manifest.json ...``.
    """
    listed = manifest["files"]
    for rel in files:
        if rel in listed or rel in (MANIFEST_NAME, SIGNATURE_NAME) or rel.startswith(f"{ENGINES_DIR}/"):
            continue
        if _RUNTIME_TEMP.match(rel):
            continue
        raise BundleError(
            f"{rel}: in the bundle folder but not listed in {MANIFEST_NAME}; every file a model may read must "
            f"be listed and hashed (remove it, or re-export the bundle with it)"
        )


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle folder (no such directory)")
    if path.is_symlink():
        raise BundleError(f"{MANIFEST_NAME}: a symbolic link in the bundle; a bundle holds regular files only")
    if not path.is_file():
        raise BundleError(f"{MANIFEST_NAME}: missing in {root}; this folder is not a bundle")
    try:
        manifest = read_json(path, what=MANIFEST_NAME, max_bytes=MANIFEST_MAX_BYTES, error=BundleError)
    except OSError as e:
        raise BundleError(f"{MANIFEST_NAME}: cannot be read ({e})") from e
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
    signer: str | None = None  # key id of the trusted key whose signature verified at load, if one was asked for

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
    def task(self) -> str:
        """What the model does: ``fusion`` (the camera + audio model; every schema-1 bundle),
        ``classify``, ``detect`` or ``audio-classify`` (an imported model, schema 2)."""
        return manifest_task(self.manifest)

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


def load_bundle(
    path: str | os.PathLike,
    *,
    verify: bool = True,
    expected_digest: str | None = None,
    public_key: Any = None,
) -> Bundle:
    """Read a bundle folder, check its manifest and (by default) every file's size and hash.

    In order: no entry in the folder is a link; the manifest parses (within size, depth and
    integer-length limits) and follows the schema; its digest is ``expected_digest`` and its
    signature verifies with ``public_key`` (each when given); no file is there that the manifest does
    not list; every listed file has its recorded size and SHA-256 (unless ``verify=False``).

    Args:
        path: the bundle folder (the one holding ``manifest.json``).
        verify: check the size and SHA-256 of every file the manifest lists. Only skip this for a
            bundle verified moments ago; the schema is always checked.
        expected_digest: the bundle's pinned :attr:`Bundle.digest` (64 hex digits, optionally
            ``sha256:``-prefixed). When given, a manifest with any other digest is refused before any
            file is hashed.
        public_key: a trusted ed25519 public key (PEM, 32 raw bytes, or a ``cryptography`` key), or a
            list of them; when given, ``manifest.sig`` must hold a valid signature over the digest by
            one of them (:mod:`fusionedge.sdk.bundle_signature`; needs ``cryptography``).

    Returns:
        The :class:`Bundle`.

    Raises:
        BundleError: no manifest, a manifest that is not acceptable JSON or misses a field or has a
            wrongly typed one (named), an unknown schema version, a digest other than
            ``expected_digest``, a missing or invalid signature, a link or an unlisted file in the
            folder, or a missing / truncated / altered file (each named).
        InputError: ``expected_digest`` is not 64 hex digits, or ``public_key`` is not an ed25519 key.
    """
    root = Path(path)
    if expected_digest is not None:
        _normalize_digest(expected_digest)  # a malformed pin is the caller's error, whatever the bundle
    keys = load_public_keys(public_key) if public_key is not None else None
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle folder (no such directory)")
    files = scan_folder(root)
    manifest = _read_manifest(root)
    if expected_digest is not None:
        check_digest(manifest, expected_digest)
    signer = verify_signature(root, manifest, keys) if keys is not None else None
    check_unlisted(files, manifest)
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
        signer=signer,
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
        raise InputError(f"metrics must be a mapping, got {type_name(metrics)}")
    root = Path(path)
    manifest = _read_manifest(root)
    manifest["metrics"] = json_safe(dict(metrics))
    write_json_atomic(root / MANIFEST_NAME, manifest)
    return manifest
