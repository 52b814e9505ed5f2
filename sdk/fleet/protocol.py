"""The fleet wire format, one definition for both ends: what the repository writes, what devices read.

The repository tools (:mod:`fusionedge.export.fleet`) write target files and records with these
functions and classes, and the device agent (:mod:`fusionedge.sdk.fleet.agent`) parses them with the
same ones, so a record one side writes is by construction a record the other side accepts:

* target paths — :func:`bundle_target_path`, :func:`manifest_target_path`, :func:`engine_target_path`,
  :func:`engine_sidecar_target_path`, :func:`rollout_target_path`, and :func:`hashed_target_path`
  (the content-addressed name a consistent-snapshot repository stores a target under);
* names, versions and fingerprints — one rule each (:func:`check_name`, :func:`check_version`,
  :func:`check_fingerprint`). Where the two ends used to differ the stricter rule won: names are
  1-64 characters (letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit) and versions
  are semantic versions (``1.2.0``, ``1.2.0-rc.1``). Both rules also keep ``..`` and ``/`` out of
  target paths;
* the records — :class:`Rollout` (``rollouts/<model>.json``, signed by the ``rollouts`` role) and
  :class:`Release` (the ``custom.fusionedge`` block of a bundle target in the signed targets metadata,
  and the ``store/<sha256>.release.json`` a device keeps beside an installed bundle). ``from_json``
  reads untrusted bytes through :func:`fusionedge.sdk.fileio.loads_json` with tight limits and raises
  a :class:`~fusionedge.sdk.errors.VerificationError` with one line naming the file and the field;
* eligibility — :func:`bucket` and :func:`is_eligible`: which device takes a rollout.

Standard library only (plus :mod:`fusionedge.sdk.fileio`): this module is part of the device runtime.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fusionedge.sdk.errors import VerificationError
from fusionedge.sdk.fileio import dumps_json, loads_json

__all__ = [
    "MAX_RECORD_BYTES",
    "NAME_RULE",
    "ROLLOUTS_ROLE",
    "VERSION_RULE",
    "Release",
    "Rollout",
    "bucket",
    "bundle_target_path",
    "check_fingerprint",
    "check_name",
    "check_sha256",
    "check_version",
    "engine_sidecar_target_path",
    "engine_target_path",
    "hashed_target_path",
    "is_eligible",
    "manifest_target_path",
    "rollout_target_path",
    "version_key",
]

#: The delegated role that signs rollout records, and the target folder they live in.
ROLLOUTS_ROLE = "rollouts"
#: The largest rollout or release record accepted (real ones are well under a kilobyte).
MAX_RECORD_BYTES = 1 << 20
#: Names of models, device classes, cohorts and backends: 1-64 characters, no path separators.
NAME_RULE = "1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
#: Release versions and ``min_sdk``: semantic versions.
VERSION_RULE = "a semantic version such as 1.2.0 (or 1.2.0-rc.1)"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SEMVER = re.compile(r"^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})"
                     r"(?:-[0-9A-Za-z.-]{1,64})?(?:\+[0-9A-Za-z.-]{1,64})?$")
_FINGERPRINT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_SALT = 256
_MAX_COHORTS = 256
_JSON_LIMITS = {"max_bytes": MAX_RECORD_BYTES, "max_depth": 8, "max_int_digits": 20}


# ------------------------------------------------------------------------------------------ rules


def check_name(value: Any, what: str, error: type[Exception] = VerificationError) -> str:
    """Return ``value`` when it is a valid model / device-class / cohort / backend name, else raise.

    Args:
        value: the name to check.
        what: names the field in the message (e.g. ``"model"``).
        error: the exception type raised (the repository raises its ``RepositoryError``, the agent's
            constructor :class:`~fusionedge.sdk.errors.InputError`, a parser ``VerificationError``).

    Raises:
        ``error``: not a string of :data:`NAME_RULE`.
    """
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise error(f"{what} {value!r}: expected {NAME_RULE}{_traversal(value)}")
    return value


def _traversal(value: Any) -> str:
    """A note for messages about a value that would climb out of a target folder."""
    return " (path traversal in target names refused)" if isinstance(value, str) and (
        "/" in value or "\\" in value or ".." in value) else ""


def check_version(value: Any, what: str = "version", error: type[Exception] = VerificationError) -> str:
    """Return ``value`` when it is a semantic version (:data:`VERSION_RULE`), else raise ``error``."""
    if not isinstance(value, str) or not _SEMVER.match(value) or ".." in value:
        raise error(f"{what} {value!r}: expected {VERSION_RULE}{_traversal(value)}")
    return value


def check_fingerprint(value: Any, what: str = "engine fingerprint",
                      error: type[Exception] = VerificationError) -> str:
    """Return ``value`` when it is a valid engine fingerprint (1-128 name characters), else raise."""
    if not isinstance(value, str) or not _FINGERPRINT.match(value) or ".." in value:
        raise error(f"{what} {value!r}: expected 1-128 characters of letters, digits, '.', '_' or '-', "
                    f"starting with a letter or digit")
    return value


def check_sha256(value: Any, what: str, error: type[Exception] = VerificationError) -> str:
    """Return ``value`` when it is a lower-case hex sha256 digest, else raise ``error``."""
    if not isinstance(value, str) or not _SHA256.match(value):
        raise error(f"{what}: expected a sha256 hex digest, got {value!r}")
    return value


def version_key(text: str) -> tuple[int, int, int]:
    """``(major, minor, patch)`` of a version string, for ordering ``min_sdk`` against the runtime.

    Reads the leading ``N[.N[.N]]`` only: ``0.3.0rc1`` and ``0.3.0.post2`` compare as 0.3.0.

    Raises:
        VerificationError: ``text`` does not start with a number.
    """
    m = re.match(r"^(\d{1,9})(?:\.(\d{1,9}))?(?:\.(\d{1,9}))?", str(text))
    if m is None:
        raise VerificationError(f"{text!r} is not a version (expected e.g. 0.2.0)")
    major, minor, patch = (int(p or 0) for p in m.groups())
    return major, minor, patch


# ------------------------------------------------------------------------------------------ paths


def bundle_target_path(model: str, version: str) -> str:
    """The TUF target path of a release's bundle archive: ``models/<model>/<version>/bundle.tar``."""
    return f"models/{model}/{version}/bundle.tar"


def manifest_target_path(model: str, version: str) -> str:
    """The TUF target path of a release's manifest: ``models/<model>/<version>/manifest.json``."""
    return f"models/{model}/{version}/manifest.json"


def engine_target_path(model: str, version: str, fingerprint: str) -> str:
    """The TUF target path of a prebuilt engine: ``models/<model>/<version>/engines/<fingerprint>.plan``."""
    return f"models/{model}/{version}/engines/{fingerprint}.plan"


def engine_sidecar_target_path(plan_target: str) -> str:
    """The target path of a plan's sidecar (``.../engines/<fingerprint>.json``)."""
    return plan_target[: -len(".plan")] + ".json" if plan_target.endswith(".plan") else plan_target + ".json"


def rollout_target_path(model: str) -> str:
    """The TUF target path of a model's rollout record: ``rollouts/<model>.json``."""
    return f"{ROLLOUTS_ROLE}/{model}.json"


def hashed_target_path(target_path: str, sha256: str) -> str:
    """Where a consistent-snapshot repository stores a target: ``<folder>/<sha256>.<name>``."""
    folder, sep, name = target_path.rpartition("/")
    return f"{folder}{sep}{sha256}.{name}"


# ---------------------------------------------------------------------------------------- helpers


def _field(obj: Mapping, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    bad_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
    if value is None or not isinstance(value, kind) or bad_bool:
        raise VerificationError(f"{where}: field {key!r} missing or of the wrong type (got {value!r})")
    return value


def _object(data: bytes | str, where: str) -> dict:
    obj = loads_json(data, what=where, error=VerificationError, **_JSON_LIMITS)
    if not isinstance(obj, dict):
        raise VerificationError(f"{where}: expected a JSON object")
    return obj


def _dumps(obj: Mapping) -> bytes:
    return (dumps_json(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------------------- rollout


@dataclass(frozen=True)
class Rollout:
    """A rollout record (``rollouts/<model>.json``): which release goes to which share of devices.

    Attributes:
        model: the fleet model name.
        version: the release version rolled out.
        release: that version's release counter (>= 1).
        percent: share of devices, 0 to 100.
        cohorts: named cohorts that take the release regardless of ``percent``.
        paused: True stops every device from starting this update.
        salt: fixed per release, so raising ``percent`` only ever adds devices (see :func:`bucket`).
        seq: the record's sequence number per model (grows with every record written).
        issued: when it was signed, ISO-8601 UTC.
    """

    model: str
    version: str
    release: int
    percent: float
    cohorts: tuple[str, ...]
    paused: bool
    salt: str
    seq: int
    issued: str

    def __post_init__(self) -> None:
        self.validate("rollout record")

    def validate(self, where: str) -> None:
        """Check every field against the wire rules; raise :class:`VerificationError` naming ``where``."""
        check_name(self.model, f"{where}: model")
        check_version(self.version, f"{where}: version")
        if isinstance(self.release, bool) or not isinstance(self.release, int) or self.release < 1:
            raise VerificationError(f"{where}: release must be an integer >= 1, got {self.release!r}")
        if (isinstance(self.percent, bool) or not isinstance(self.percent, (int, float))
                or not math.isfinite(self.percent) or not 0 <= self.percent <= 100):
            raise VerificationError(f"{where}: percent must be a number from 0 to 100, got {self.percent!r}")
        if not isinstance(self.cohorts, tuple) or len(self.cohorts) > _MAX_COHORTS:
            raise VerificationError(f"{where}: cohorts must be a list of at most {_MAX_COHORTS} names")
        for c in self.cohorts:
            check_name(c, f"{where}: cohort")
        if not isinstance(self.paused, bool):
            raise VerificationError(f"{where}: paused must be true or false, got {self.paused!r}")
        if not isinstance(self.salt, str) or not 0 < len(self.salt) <= _MAX_SALT:
            raise VerificationError(f"{where}: salt must be a non-empty string of at most {_MAX_SALT} "
                                    f"characters")
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 0:
            raise VerificationError(f"{where}: seq must be an integer >= 0, got {self.seq!r}")
        if not isinstance(self.issued, str):
            raise VerificationError(f"{where}: issued must be a string, got {self.issued!r}")

    def to_dict(self) -> dict:
        """The record as plain JSON types (``percent`` an integer when it is one, cohorts sorted)."""
        percent = float(self.percent)
        return {
            "model": self.model, "version": self.version, "release": self.release,
            "percent": int(percent) if percent.is_integer() else percent,
            "cohorts": sorted(set(self.cohorts)), "paused": self.paused, "salt": self.salt,
            "issued": self.issued, "seq": self.seq,
        }

    def to_json(self) -> bytes:
        """The signed file's bytes: indented JSON with sorted keys and a final newline."""
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str, *, model: str | None = None) -> Rollout:
        """Parse a rollout record from untrusted bytes (after TUF verified them, but never trusted blindly).

        Args:
            data: the file's bytes.
            model: the model the device asked for; a record naming another one is refused.

        Raises:
            VerificationError: not bounded JSON, a field missing or invalid, or another model's record.
        """
        where = rollout_target_path(model) if model is not None else "rollout record"
        obj = _object(data, where)
        named = _field(obj, "model", str, where)
        if model is not None and named != model:
            raise VerificationError(f"{where}: names model {named!r}, expected {model!r}")
        cohorts = obj.get("cohorts", [])
        if not isinstance(cohorts, list):
            raise VerificationError(f"{where}: field 'cohorts' must be a list of names")
        percent = _field(obj, "percent", (int, float), where)
        record = object.__new__(cls)
        values = {
            "model": named, "version": _field(obj, "version", str, where),
            "release": _field(obj, "release", int, where), "percent": percent,
            "cohorts": tuple(cohorts), "paused": obj.get("paused", False),
            "salt": _field(obj, "salt", str, where), "seq": obj.get("seq", 0),
            "issued": obj.get("issued", ""),
        }
        for k, v in values.items():
            object.__setattr__(record, k, v)
        record.validate(where)
        object.__setattr__(record, "percent", float(percent))
        return record


# ---------------------------------------------------------------------------------------- release


@dataclass(frozen=True)
class Release:
    """A release: the signed description of one bundle archive of a model.

    In the signed targets metadata it is the ``custom.fusionedge`` block of the target
    :func:`bundle_target_path` (:meth:`custom` / :meth:`from_target`); on a device it is also kept as
    ``store/<sha256>.release.json`` beside the installed bundle (:meth:`to_json` / :meth:`from_json`).

    Attributes:
        model, version: the fleet model and release version.
        release: the per-model counter, growing with every publish (devices refuse to go back).
        sha256, length: of the bundle archive (the signed target's hash and length).
        target: the TUF target path of the archive.
        compat: ``{"device_classes": [...], "min_sdk": "0.1.0", "backends": [...], "precision": ...}``.
        engines: ``{device fingerprint: target path of its prebuilt plan}``.
        digest: the bundle's own digest (sha256 of its canonical manifest) when the publisher pinned
            it; a device checks the unpacked bundle against it. Empty when not pinned.
    """

    model: str
    version: str
    release: int
    sha256: str
    length: int
    target: str
    compat: dict = field(default_factory=dict)
    engines: dict = field(default_factory=dict)
    digest: str = ""

    @property
    def label(self) -> str:
        """``model@version (release N)`` for messages."""
        return f"{self.model}@{self.version} (release {self.release})"

    def to_dict(self) -> dict:
        """JSON-safe fields (``digest`` only when pinned, so older readers see the same keys)."""
        out = {"model": self.model, "version": self.version, "release": self.release, "sha256": self.sha256,
               "length": self.length, "target": self.target, "compat": dict(self.compat),
               "engines": dict(self.engines)}
        if self.digest:
            out["digest"] = self.digest
        return out

    def to_json(self, **extra: Any) -> bytes:
        """The device's ``store/<sha256>.release.json`` bytes (``extra`` adds e.g. ``installed``)."""
        return _dumps({**self.to_dict(), **extra})

    @classmethod
    def from_json(cls, data: bytes | str, *, where: str = "release record") -> Release:
        """Parse a stored release record (:meth:`to_json`); raise :class:`VerificationError` when invalid."""
        obj = _object(data, where)
        release = cls(
            model=check_name(_field(obj, "model", str, where), f"{where}: model"),
            version=check_version(_field(obj, "version", str, where), f"{where}: version"),
            release=_positive(_field(obj, "release", int, where), f"{where}: release"),
            sha256=check_sha256(_field(obj, "sha256", str, where), f"{where}: sha256"),
            length=_positive(_field(obj, "length", int, where), f"{where}: length"),
            target=_field(obj, "target", str, where),
            compat=dict(_field(obj, "compat", dict, where)),
            engines=_engines(obj.get("engines") or {}, where),
            digest=_digest(obj.get("digest", ""), where),
        )
        if release.target != bundle_target_path(release.model, release.version):
            raise VerificationError(f"{where}: target {release.target!r} is not "
                                    f"{bundle_target_path(release.model, release.version)!r}")
        return release

    def custom(self) -> dict:
        """The ``custom`` block of the signed bundle target: ``{"fusionedge": {...}}``."""
        block = {"model": self.model, "version": self.version, "release": self.release,
                 "compat": dict(self.compat), "bundle_sha256": self.sha256, "engines": dict(self.engines)}
        if self.digest:
            block["digest"] = self.digest
        return {"fusionedge": block}

    @classmethod
    def from_target(cls, path: str, custom: Any, sha256: Any, length: int, *,
                    model: str, version: str | None = None, release: int | None = None) -> Release:
        """Read a release from a verified bundle target (its path, ``custom`` block, hash and length).

        Args:
            path: the target path, which must be :func:`bundle_target_path` of ``model``/``version``.
            custom: the target's ``custom`` field from the signed metadata.
            sha256, length: the target's signed hash and length.
            model: the model the device runs.
            version, release: what the rollout record names (None: not checked) — a mix of a rollout
                record and a release from different publishes is refused.

        Raises:
            VerificationError: not a FusionEdge release, or it disagrees with the path or the rollout.
        """
        where = f"{path}: custom.fusionedge"
        fe = custom.get("fusionedge") if isinstance(custom, dict) else None
        if not isinstance(fe, dict):
            raise VerificationError(f"{where}: missing; not a FusionEdge release")
        check_sha256(sha256, f"{path}: the signed sha256 hash")
        named = (_field(fe, "model", str, where), _field(fe, "version", str, where))
        want_version = version if version is not None else named[1]
        if named != (model, want_version):
            raise VerificationError(f"{where}: names {named[0]}@{named[1]}, but the rollout names "
                                    f"{model}@{want_version} (mix-and-match refused)")
        check_name(named[0], f"{where}: model")
        check_version(named[1], f"{where}: version")
        if path != bundle_target_path(*named):
            raise VerificationError(f"{where}: describes {named[0]}@{named[1]} but signs the target {path!r}")
        number = _positive(_field(fe, "release", int, where), f"{where}: release")
        if release is not None and number != release:
            raise VerificationError(f"{where}: release {number}, but the rollout record says release "
                                    f"{release} (mix-and-match refused)")
        if fe.get("bundle_sha256") != sha256:
            raise VerificationError(f"{where}: bundle_sha256 does not match the signed hash of {path}")
        return cls(model=named[0], version=named[1], release=number, sha256=sha256, length=int(length),
                   target=path, compat=dict(_field(fe, "compat", dict, where)),
                   engines=_engines(fe.get("engines") or {}, where), digest=_digest(fe.get("digest", ""), where))


def _positive(value: int, what: str) -> int:
    if value < 1:
        raise VerificationError(f"{what}: expected an integer >= 1, got {value!r}")
    return value


def _engines(engines: Any, where: str) -> dict:
    if not isinstance(engines, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in engines.items()):
        raise VerificationError(f"{where}: 'engines' must map device fingerprints to target paths")
    for fingerprint in engines:
        check_fingerprint(fingerprint, f"{where}: engine fingerprint")
    return dict(engines)


def _digest(value: Any, where: str) -> str:
    if value in ("", None):
        return ""
    return check_sha256(value, f"{where}: digest")


# ------------------------------------------------------------------------------------ eligibility


def bucket(salt: str, device_id: str) -> float:
    """The device's place in a rollout, uniform in [0, 100): fixed per (release salt, device).

    ``int.from_bytes(sha256(f"{salt}:{device_id}").digest()[:8], "big") / 2**64 * 100``.
    """
    digest = hashlib.sha256(f"{salt}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def is_eligible(rollout: Rollout, device_id: str, cohort: str | None) -> bool:
    """Whether a device takes a rollout: not paused, and inside the percent or in a named cohort.

    Raising the percent of the same release never removes a device (the salt stays the same).
    """
    if rollout.paused:
        return False
    in_cohort = cohort is not None and cohort in rollout.cohorts
    return bucket(rollout.salt, device_id) < rollout.percent or in_cohort
