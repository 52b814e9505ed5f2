"""The bundle manifest's schema (versions 1 and 2), checked field by field.

:func:`validate_manifest` walks a parsed ``manifest.json`` and raises
:class:`~fusionedge.sdk.errors.BundleError` naming the first field that is missing or of the wrong type
or value, e.g. ``manifest.json: field 'inputs[1].shape': expected a list, got str``. It only reads
the document; what the fields mean, and how a bundle is loaded and verified, is in
:mod:`fusionedge.sdk.bundle`, which re-exports these names.

Version 2 makes the manifest declarative enough to serve any model: a top-level ``task``
(``fusion`` for the project's own camera + audio model, or ``classify`` / ``detect`` /
``audio-classify`` for an imported ONNX model), a ``scale`` on every image and video input (what a
0-255 pixel is multiplied by before ``mean`` / ``std``), and on each output the label list it
scores (``labels``) and its decoder's settings (``params``). Version 1 manifests still load: they
describe the fused model, whose fields version 2 only makes explicit (docs/BUNDLE.md lists them).

Standard library only: this module is part of the device runtime.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from fusionedge.sdk.errors import BundleError

__all__ = [
    "COLORS",
    "DECODES",
    "DTYPES",
    "GOLDEN_NAME",
    "IMAGE_LAYOUTS",
    "LABEL_KINDS",
    "MANIFEST_NAME",
    "MODALITIES",
    "MODEL_NAME",
    "PRECISIONS",
    "QA_KEY",
    "QA_MAX_TOKENS",
    "RESIZES",
    "SCHEMA_VERSION",
    "SHA256_HEX",
    "SUPPORTED_VERSIONS",
    "TASKS",
    "manifest_task",
    "safe_relpath",
    "type_name",
    "validate_manifest",
]

#: The manifest schema the exporter writes.
SCHEMA_VERSION = 2
#: Every manifest schema this runtime reads.
SUPPORTED_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
GOLDEN_NAME = "golden.npz"

MODALITIES = ("image", "video", "audio", "vector")
DECODES = ("softmax", "sigmoid", "centernet-heatmap", "centernet-size", "centernet-offset", "yolo", "none")
#: What a bundle's model does (schema 2): the fused camera + audio model, or an imported one.
TASKS = ("fusion", "classify", "detect", "audio-classify")
#: Image layouts an ``image`` input may declare (schema 2).
IMAGE_LAYOUTS = ("NCHW", "NHWC")
#: How an image is fitted to the model input: stretched, or scaled keeping its aspect and padded.
RESIZES = ("stretch", "letterbox", "area-stretch")
COLORS = ("RGB", "BGR")
DTYPES = ("float32", "float16", "uint8", "int8", "int32", "int64", "bool")
PRECISIONS = ("fp32", "fp16", "int8", "mixed")
LABEL_KINDS = ("events", "objects", "audio_tags")
#: 64 lowercase hex digits: how the manifest writes a SHA-256.
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _fail(where: str, message: str) -> BundleError:
    return BundleError(f"{MANIFEST_NAME}: field '{where}': {message}")


def type_name(value: Any) -> str:
    """The JSON-ish name of a value's type for messages (``null`` for None)."""
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
        raise _fail(path, f"expected {description}, got {type_name(value)}")
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


def _check_preprocessing(entry: Mapping, modality: str, where: str, version: int) -> None:
    pre = _get(entry, "preprocessing", where, "dict")
    where = f"{where}.preprocessing"
    if modality in ("video", "image") and version >= 2:
        _check_positive(_get(pre, "scale", where, "number"), f"{where}.scale")
        _get_choice(pre, "color", where, COLORS)
        _get_choice(pre, "resize", where, RESIZES)
        if modality == "image":
            _get_choice(entry, "layout", where.rsplit(".", 1)[0], IMAGE_LAYOUTS)
        if "pad_value" in pre:
            _get(pre, "pad_value", where, "number")
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


def _check_output_v2(entry: Mapping, where: str) -> None:
    if "labels" in entry:
        _get_choice(entry, "labels", where, LABEL_KINDS)
    if "params" in entry:
        params = _get(entry, "params", where, "dict")
        for key, value in params.items():
            if isinstance(value, (dict, list)):
                raise _fail(f"{where}.params.{key}",
                            f"expected a string, number or boolean, got {type_name(value)}")


def _check_tensors(manifest: Mapping, key: str, version: int) -> None:
    entries = _get(manifest, key, "", "list")
    if not entries:
        raise _fail(key, "expected a non-empty list")
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict):
            raise _fail(where, f"expected an object, got {type_name(entry)}")
        name = _get(entry, "name", where, "str")
        if not name or name in seen:
            raise _fail(f"{where}.name", f"expected a unique non-empty name, got {name!r}")
        seen.add(name)
        _check_shape(_get(entry, "shape", where, "list"), f"{where}.shape")
        if key == "inputs":
            modality = _get_choice(entry, "modality", where, MODALITIES)
            _get_choice(entry, "dtype", where, DTYPES)
            _get(entry, "layout", where, "str")
            _check_preprocessing(entry, modality, where, version)
        else:
            _get_choice(entry, "decode", where, DECODES)
            if version >= 2:
                _check_output_v2(entry, where)


def _check_source(manifest: Mapping) -> None:
    source = _get(manifest, "source", "", "dict")
    sha = _get(source, "checkpoint_sha256", "source", "str", nullable=True)
    if sha is not None and not SHA256_HEX.match(sha):
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
        safe_relpath(rel, where)
        if not isinstance(entry, dict):
            raise _fail(where, f"expected an object, got {type_name(entry)}")
        sha = _get(entry, "sha256", where, "str")
        if not SHA256_HEX.match(sha):
            raise _fail(f"{where}.sha256", f"expected 64 lowercase hex digits, got {sha!r}")
        size = _get(entry, "size", where, "int")
        if size < 0:
            raise _fail(f"{where}.size", f"expected a size >= 0, got {size}")
    if MODEL_NAME not in files:
        raise _fail("files", f"expected an entry for {MODEL_NAME}")


def _check_golden_and_batch(manifest: Mapping) -> None:
    golden = _get(manifest, "golden", "", "dict")
    golden_file = _get(golden, "file", "golden", "str")
    safe_relpath(golden_file, "golden.file")
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


#: The manifest block of a bundle that answers questions about a clip (``fusionedge ask``).
QA_KEY = "qa"
#: The range of a ``qa`` block's ``max_tokens`` (``[CLS]`` included).
QA_MAX_TOKENS = (2, 512)


def _check_qa(manifest: Mapping, version: int) -> None:
    """The ``qa`` block: its three files listed in ``files``, the answers, the token length, the scores' settings."""
    if version >= 2 and manifest.get("task", "fusion") != "fusion":
        raise _fail(QA_KEY, f"only the fused camera + audio model answers questions, not a {manifest['task']!r} model")
    qa = _get(manifest, QA_KEY, "", "dict")
    for key in ("model", "tokenizer", "golden"):
        rel = _get(qa, key, QA_KEY, "str")
        safe_relpath(rel, f"{QA_KEY}.{key}")
        if rel not in manifest["files"]:
            raise _fail(f"{QA_KEY}.{key}", f"{rel!r} is not listed in 'files'")
    lo, hi = QA_MAX_TOKENS
    max_tokens = _get(qa, "max_tokens", QA_KEY, "int")
    if not lo <= max_tokens <= hi:
        raise _fail(f"{QA_KEY}.max_tokens", f"expected an integer in {lo}..{hi}, got {max_tokens}")
    answers = _get(qa, "answers", QA_KEY, "list")
    if not answers:
        raise _fail(f"{QA_KEY}.answers", "expected a non-empty list")
    for i, a in enumerate(answers):
        if not isinstance(a, str) or not a:
            raise _fail(f"{QA_KEY}.answers[{i}]", f"expected a non-empty string, got {a!r}")
    if len(set(answers)) != len(answers):
        raise _fail(f"{QA_KEY}.answers", "expected unique answers")
    if "question_types" in qa:
        for i, t in enumerate(_get(qa, "question_types", QA_KEY, "list")):
            if not isinstance(t, str) or not t:
                raise _fail(f"{QA_KEY}.question_types[{i}]", f"expected a non-empty string, got {t!r}")
    if "temperature" in qa:
        _check_positive(_get(qa, "temperature", QA_KEY, "number"), f"{QA_KEY}.temperature")
    if "min_confidence" in qa:
        conf = _get(qa, "min_confidence", QA_KEY, "number")
        if not 0.0 <= conf <= 1.0:
            raise _fail(f"{QA_KEY}.min_confidence", f"expected a score in [0, 1], got {conf}")
    for key in ("golden_rtol", "golden_atol"):
        if key in qa and _get(qa, key, QA_KEY, "number") < 0:
            raise _fail(f"{QA_KEY}.{key}", "expected a tolerance >= 0")


def safe_relpath(rel: str, where: str) -> None:
    """Refuse a manifest path that is empty, absolute, climbs out with ``..``, or names the manifest.

    Raises:
        BundleError: ``manifest.json: field '<where>': expected a relative path inside the bundle...``.
    """
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or rel == MANIFEST_NAME:
        raise _fail(where, f"expected a relative path inside the bundle (not the manifest), got {rel!r}")


def validate_manifest(manifest: Any) -> None:
    """Check a parsed ``manifest.json`` against its schema version (1 or 2), field by field.

    Args:
        manifest: the parsed JSON document.

    Raises:
        BundleError: the first field that is missing or wrong, e.g.
            ``manifest.json: field 'inputs[1].shape': expected a list, got str``; or a
            ``schema_version`` this runtime does not read.
    """
    if not isinstance(manifest, dict):
        raise BundleError(f"{MANIFEST_NAME}: expected a JSON object at the top, got {type_name(manifest)}")
    version = _get(manifest, "schema_version", "", "int")
    if version not in SUPPORTED_VERSIONS:
        raise BundleError(
            f"{MANIFEST_NAME}: schema_version {version} is not supported by this runtime (it reads "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}); upgrade fusionedge or re-export the bundle"
        )
    for key in ("name", "version"):
        if not _get(manifest, key, "", "str"):
            raise _fail(key, "expected a non-empty string")
    created = _get(manifest, "created", "", "str")
    try:
        datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError as e:
        raise _fail("created", f"expected an ISO-8601 time, got {created!r}") from e
    if version >= 2:
        _get_choice(manifest, "task", "", TASKS)
    _check_source(manifest)
    _check_tensors(manifest, "inputs", version)
    _check_tensors(manifest, "outputs", version)
    _check_labels(manifest)
    _check_geometry(manifest)
    _get_choice(manifest, "precision", "", PRECISIONS)
    _get(manifest, "metrics", "", "dict")
    _check_files(manifest)
    _check_golden_and_batch(manifest)
    if QA_KEY in manifest:
        _check_qa(manifest, version)




def manifest_task(manifest: Mapping[str, Any]) -> str:
    """The task a schema-checked manifest declares; a version 1 manifest is the fused model's."""
    return str(manifest.get("task", "fusion")) if manifest.get("schema_version", 1) >= 2 else "fusion"
