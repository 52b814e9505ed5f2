"""The fleet repository: signed (TUF) releases of model bundles and rollout records, as static files.

A repository is a folder; only ``metadata/`` and ``targets/`` are served (any web server, object
store or CDN; :mod:`fusionedge.export.fleet.server` for development)::

    REPO/
      metadata/      1.root.json, 2.root.json, ..., root.json (latest copy), timestamp.json,
                     <N>.snapshot.json, <N>.targets.json, <N>.rollouts.json   (consistent snapshots)
      targets/       models/<model>/<version>/<sha256>.bundle.tar, .../<sha256>.manifest.json,
                     .../engines/<sha256>.<fingerprint>.plan, rollouts/<sha256>.<model>.json
      keys/offline/  root/, targets/      private keys (PEM, 0600): move them off the server after init
      keys/online/   snapshot/, timestamp/, rollouts/   the server that refreshes timestamps needs these
      repo.json      thresholds, expiry periods, per-model release counters, rollout salts (not secret)

Roles: ``root`` and ``targets`` (offline keys), ``snapshot`` and ``timestamp`` (online), and
``rollouts``, a role delegated by ``targets`` for ``rollouts/*`` (terminating, online key), so
rollout records are signed without the offline targets key. Built on python-tuf's Metadata API;
clients verify with ``tuf.ngclient.Updater``.

The workflow, each step a function (and a ``fusionedge fleet`` verb)::

    init_repository(repo)                               keys + version-1 metadata
    publish(repo, bundle_dir, model=, version=, ...)    -> release number (offline targets key)
    set_rollout(repo, model=, version=, percent=, ...)  -> the signed rollout record (online keys)
    refresh_timestamp(repo)                             daily from cron (online keys)
    rotate_key(repo, role)                              replace a role's keys; clients follow
    resign(repo, role)                                  renew a role's expiry (e.g. targets every 60 d)

Every operation takes a lock on the repository, writes target files first, then the role
metadata, then the snapshot, and the timestamp last (each file atomically), so a client fetching
during an update sees either the old or the new consistent snapshot. Tests pass ``now=`` (the
signing clock) to make metadata that has already expired.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fusionedge.export.fleet.keys import (
    OFFLINE_ROLES,
    ONLINE_ROLES,
    ROLES,
    RepositoryError,
    SigningKeyError,
    generate_key,
    key_folder,
    load_role_signers,
    remove_keys,
    save_key,
)
from fusionedge.sdk.bundle import MANIFEST_NAME, load_bundle, write_bytes_atomic, write_json_atomic

__all__ = [
    "DEFAULT_EXPIRY",
    "OFFLINE_ROLES",
    "ONLINE_ROLES",
    "ROLES",
    "RepositoryError",
    "SigningKeyError",
    "bundle_target_path",
    "init_repository",
    "publish",
    "refresh_timestamp",
    "repository_status",
    "resign",
    "rollout_target_path",
    "rotate_key",
    "set_rollout",
]

log = logging.getLogger(__name__)

#: How long each role's metadata stays valid after it is signed.
DEFAULT_EXPIRY: dict[str, timedelta] = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "rollouts": timedelta(days=30),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
CONFIG_NAME = "repo.json"
CONFIG_SCHEMA = 1
ROLLOUTS_ROLE = "rollouts"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_FINGERPRINT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def bundle_target_path(model: str, version: str) -> str:
    """The TUF target path of a release's bundle archive: ``models/<model>/<version>/bundle.tar``."""
    return f"models/{model}/{version}/bundle.tar"


def rollout_target_path(model: str) -> str:
    """The TUF target path of a model's rollout record: ``rollouts/<model>.json``."""
    return f"{ROLLOUTS_ROLE}/{model}.json"


# ------------------------------------------------------------------------------------------ paths


@dataclass(frozen=True)
class _Paths:
    root: Path
    offline_keys: Path
    online_keys: Path

    @property
    def metadata(self) -> Path:
        return self.root / "metadata"

    @property
    def targets(self) -> Path:
        return self.root / "targets"

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    def key_folder(self, role: str) -> Path:
        return key_folder(role, offline_dir=self.offline_keys, online_dir=self.online_keys)


def _paths(repo: str | os.PathLike, offline_keys: str | os.PathLike | None,
           online_keys: str | os.PathLike | None) -> _Paths:
    root = Path(repo)
    return _Paths(
        root=root,
        offline_keys=Path(offline_keys) if offline_keys is not None else root / "keys" / "offline",
        online_keys=Path(online_keys) if online_keys is not None else root / "keys" / "online",
    )


def _utcnow(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc).replace(microsecond=0)
    if now.tzinfo is None:
        raise RepositoryError(f"now={now!r}: pass a timezone-aware time (UTC)")
    return now.astimezone(timezone.utc).replace(microsecond=0)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_bytes_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomic write into a folder that may not exist yet (served files must be world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data, mode=mode)


@contextlib.contextmanager
def _locked(paths: _Paths) -> Iterator[None]:
    """An exclusive lock on the repository (a CLI publish and an unattended rollout must not race)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks; one writer at a time
        yield
        return
    with open(paths.root / ".fleet.lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------- validation


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise RepositoryError(
            f"{what} {value!r}: expected 1-64 characters of letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit"
        )
    return value


def _check_version(value: Any, what: str = "version") -> str:
    if not isinstance(value, str) or not _SEMVER.match(value):
        raise RepositoryError(f"{what} {value!r}: expected a semantic version such as 1.2.0")
    return value


def _check_role(role: Any) -> str:
    if role not in ROLES:
        raise RepositoryError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role


def _role_ints(values: Mapping[str, int] | None, what: str) -> dict[str, int]:
    out = {role: 1 for role in ROLES}
    for role, n in (values or {}).items():
        _check_role(role)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise RepositoryError(f"{what} for {role}: expected an integer >= 1, got {n!r}")
        out[role] = n
    return out


def _tuf():
    """python-tuf, imported when a repository is touched (the fleet extra)."""
    try:
        from tuf.api import exceptions, metadata
        from tuf.api.serialization.json import JSONSerializer
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RepositoryError("fleet repositories need python-tuf: pip install 'fusionedge[fleet]'") from e
    return metadata, exceptions, JSONSerializer


# ------------------------------------------------------------------------------------------ state


class _Repo:
    """The loaded repository: config and the current metadata of every role, and how to sign them.

    Not public: the functions below open one under the lock, change it and :meth:`commit` it.
    """

    def __init__(self, paths: _Paths, config: dict, roles: dict[str, Any]) -> None:
        self.paths = paths
        self.config = config
        self.md = roles  # role -> tuf Metadata

    # -------------------------------------------------------------------------------- loading

    @classmethod
    def open(cls, paths: _Paths) -> _Repo:
        metadata, _, _ = _tuf()
        if not paths.config.is_file() or not (paths.metadata / "root.json").is_file():
            raise RepositoryError(
                f"{paths.root}: not a fleet repository (no {CONFIG_NAME} or metadata/root.json); "
                f"create one with `fusionedge fleet init {paths.root}`"
            )
        try:
            config = json.loads(paths.config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RepositoryError(f"{paths.config}: cannot be read as JSON ({e})") from e
        if not isinstance(config, dict) or config.get("schema_version") != CONFIG_SCHEMA:
            raise RepositoryError(f"{paths.config}: expected schema_version {CONFIG_SCHEMA}")

        def read(name: str, cls_: Any) -> Any:
            path = paths.metadata / name
            try:
                md = metadata.Metadata.from_file(str(path))
            except Exception as e:  # tuf raises several types (DeserializationError, OSError, ...)
                raise RepositoryError(f"{path}: cannot be read as TUF metadata ({e})") from e
            if not isinstance(md.signed, cls_):
                raise RepositoryError(f"{path}: expected {cls_.type} metadata, got {md.signed.type}")
            return md

        roles: dict[str, Any] = {"root": read("root.json", metadata.Root),
                                 "timestamp": read("timestamp.json", metadata.Timestamp)}
        snap_version = roles["timestamp"].signed.snapshot_meta.version
        roles["snapshot"] = read(f"{snap_version}.snapshot.json", metadata.Snapshot)
        for role in ("targets", ROLLOUTS_ROLE):
            meta = roles["snapshot"].signed.meta.get(f"{role}.json")
            if meta is None:
                raise RepositoryError(f"{snap_version}.snapshot.json: lists no {role}.json")
            roles[role] = read(f"{meta.version}.{role}.json", metadata.Targets)
        return cls(paths, config, roles)

    def save_config(self) -> None:
        write_json_atomic(self.paths.config, self.config)

    # -------------------------------------------------------------------------------- signing

    def role_keys(self, role: str) -> tuple[list[str], int]:
        """(key ids, threshold) of ``role`` as its delegator lists them."""
        if role == ROLLOUTS_ROLE:
            delegations = self.md["targets"].signed.delegations
            if delegations is None or delegations.roles is None or ROLLOUTS_ROLE not in delegations.roles:
                raise RepositoryError("targets metadata does not delegate the rollouts role")
            r = delegations.roles[ROLLOUTS_ROLE]
        else:
            r = self.md["root"].signed.roles[role]
        return list(r.keyids), r.threshold

    def signers(self, role: str, keyids: Sequence[str] | None = None, threshold: int | None = None) -> list:
        """Load the private keys for ``role``; raise unless at least its threshold is present."""
        listed, need = self.role_keys(role)
        keyids = listed if keyids is None else keyids
        need = need if threshold is None else threshold
        folder = self.paths.key_folder(role)
        found = load_role_signers(folder, keyids)
        if len(found) < need:
            where = "offline" if role in OFFLINE_ROLES else "online"
            raise SigningKeyError(
                f"cannot sign {role} metadata: {len(found)} of the {need} keys it needs are in {folder} "
                f"(the {where} key folder); pass the folder that holds them "
                f"(--{where}-keys / {where}_keys=)"
            )
        return found

    def require(self, *roles: str) -> None:
        """Fail before changing anything when a role's keys are missing."""
        for role in roles:
            self.signers(role)

    def expiry(self, role: str) -> timedelta:
        return timedelta(days=float(self.config["expiry_days"][role]))

    def sign(self, role: str, md: Any, now: datetime, *, bump: bool = True, extra: Sequence = ()) -> None:
        """Set version and expiry, sign with the role's keys (+ ``extra``), and verify the result."""
        _, exceptions, _ = _tuf()
        if bump:
            md.signed.version += 1
        md.signed.expires = now + self.expiry(role)
        md.signatures.clear()
        signers = {s.public_key.keyid: s for s in [*self.signers(role), *extra]}
        for signer in signers.values():
            md.sign(signer, append=True)
        delegator = self.md["targets"] if role == ROLLOUTS_ROLE else self.md["root"]
        try:
            delegator.signed.verify_delegate(role, md.signed_bytes, md.signatures)
            if role == "root":
                md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
        except exceptions.UnsignedMetadataError as e:  # a bug or a wrong key file: never write it
            raise SigningKeyError(f"{role} metadata does not verify after signing: {e}") from e

    def write(self, role: str, md: Any) -> bytes:
        """Serialize and write one role's metadata atomically; return the bytes written."""
        _, _, JSONSerializer = _tuf()
        data = md.to_bytes(JSONSerializer(compact=False))
        name = "timestamp.json" if role == "timestamp" else f"{md.signed.version}.{role}.json"
        _write_bytes_atomic(self.paths.metadata / name, data)
        if role == "root":
            _write_bytes_atomic(self.paths.metadata / "root.json", data)
        return data

    def commit(self, changed: set[str], now: datetime, *, bump: bool = True) -> None:
        """Re-sign and write the changed roles, then snapshot (if needed) and timestamp, in that order.

        ``bump=False`` keeps the versions as they are (the version-1 metadata of a new repository).
        """
        metadata, _, _ = _tuf()
        snap = self.md["snapshot"]
        for role in ("targets", ROLLOUTS_ROLE):
            if role in changed:
                self.sign(role, self.md[role], now, bump=bump)
                data = self.write(role, self.md[role])
                snap.signed.meta[f"{role}.json"] = metadata.MetaFile.from_data(
                    self.md[role].signed.version, data, ["sha256"])
                changed = changed | {"snapshot"}
        if "snapshot" in changed:
            self.sign("snapshot", snap, now, bump=bump)
            data = self.write("snapshot", snap)
            self.md["timestamp"].signed.snapshot_meta = metadata.MetaFile.from_data(
                snap.signed.version, data, ["sha256"])
        self.sign("timestamp", self.md["timestamp"], now, bump=bump)
        self.write("timestamp", self.md["timestamp"])

    # -------------------------------------------------------------------------------- targets

    def add_target(self, target_path: str, src: Path, custom: Mapping | None = None) -> Any:
        """Copy ``src`` to its hash-prefixed name under ``targets/`` and return its TargetFile."""
        metadata, _, _ = _tuf()
        info = metadata.TargetFile.from_file(target_path, str(src), ["sha256"])
        if custom is not None:
            info.unrecognized_fields["custom"] = dict(custom)
        (prefixed,) = info.get_prefixed_paths()
        dest = self.paths.targets / prefixed
        if not dest.is_file():  # content-addressed: an existing file already holds these bytes
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
            os.close(fd)
            try:
                shutil.copyfile(src, tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return info


@contextlib.contextmanager
def _open(repo: str | os.PathLike, offline_keys: str | os.PathLike | None,
          online_keys: str | os.PathLike | None) -> Iterator[_Repo]:
    paths = _paths(repo, offline_keys, online_keys)
    if not paths.root.is_dir():
        raise RepositoryError(f"{paths.root}: no such repository folder")
    with _locked(paths):
        yield _Repo.open(paths)


# ------------------------------------------------------------------------------------------- init


def init_repository(
    repo: str | os.PathLike,
    *,
    thresholds: Mapping[str, int] | None = None,
    key_counts: Mapping[str, int] | None = None,
    expiry: Mapping[str, timedelta] | None = None,
    offline_keys: str | os.PathLike | None = None,
    online_keys: str | os.PathLike | None = None,
    now: datetime | None = None,
) -> Path:
    """Create a fleet repository: fresh ed25519 keys for every role and version-1 metadata.

    Args:
        repo: the repository folder (created if missing; must not hold a repository already).
        thresholds: signatures each role needs, e.g. ``{"root": 2}`` (default 1 for every role).
        key_counts: keys generated per role (default: its threshold; must be >= the threshold).
        expiry: validity period per role after each signing (defaults: :data:`DEFAULT_EXPIRY`).
        offline_keys: where to write the root and targets keys (default ``REPO/keys/offline``).
        online_keys: where to write the snapshot, timestamp and rollouts keys (default ``REPO/keys/online``).
        now: the signing clock (default: the current time, UTC).

    Returns:
        The path of ``metadata/root.json``: the trust anchor to embed in device images.

    Raises:
        RepositoryError: a repository already exists there, or a threshold, key count or expiry is
            invalid (nothing is written then).
    """
    metadata, _, _ = _tuf()
    paths = _paths(repo, offline_keys, online_keys)
    now = _utcnow(now)
    need = _role_ints(thresholds, "threshold")
    counts = _role_ints({**need, **(key_counts or {})}, "key count")
    for role in ROLES:
        if counts[role] < need[role]:
            raise RepositoryError(f"{role}: {counts[role]} keys cannot meet a threshold of {need[role]}")
    periods = dict(DEFAULT_EXPIRY)
    for role, period in (expiry or {}).items():
        _check_role(role)
        if not isinstance(period, timedelta) or period <= timedelta(0):
            raise RepositoryError(f"expiry for {role}: expected a positive timedelta, got {period!r}")
        periods[role] = period
    if paths.config.exists() or (paths.metadata / "root.json").exists():
        raise RepositoryError(f"{paths.root}: already holds a fleet repository")

    paths.root.mkdir(parents=True, exist_ok=True)
    for folder in (paths.metadata, paths.targets):
        folder.mkdir(exist_ok=True)
    for folder in (paths.offline_keys, paths.online_keys):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(paths):
        # Keys first: metadata that names a key nobody saved would be unusable.
        keys: dict[str, list] = {}
        for role in ROLES:
            keys[role] = [generate_key() for _ in range(counts[role])]
            for signer in keys[role]:
                save_key(signer, paths.key_folder(role))
        root = metadata.Root(consistent_snapshot=True)
        for role in ("root", "targets", "snapshot", "timestamp"):
            for signer in keys[role]:
                root.add_key(signer.public_key, role)
            root.roles[role].threshold = need[role]
        targets = metadata.Targets()
        targets.delegations = metadata.Delegations(
            keys={s.public_key.keyid: s.public_key for s in keys[ROLLOUTS_ROLE]},
            roles={ROLLOUTS_ROLE: metadata.DelegatedRole(
                name=ROLLOUTS_ROLE, keyids=[s.public_key.keyid for s in keys[ROLLOUTS_ROLE]],
                threshold=need[ROLLOUTS_ROLE], terminating=True, paths=[f"{ROLLOUTS_ROLE}/*"])},
        )
        config = {
            "schema_version": CONFIG_SCHEMA,
            "thresholds": need,
            "expiry_days": {role: periods[role] / timedelta(days=1) for role in ROLES},
            "models": {},
        }
        state = _Repo(paths, config, {
            "root": metadata.Metadata(root),
            "targets": metadata.Metadata(targets),
            ROLLOUTS_ROLE: metadata.Metadata(metadata.Targets()),
            "snapshot": metadata.Metadata(metadata.Snapshot()),
            "timestamp": metadata.Metadata(metadata.Timestamp()),
        })
        state.sign("root", state.md["root"], now, bump=False)
        state.write("root", state.md["root"])
        state.commit({"targets", ROLLOUTS_ROLE}, now, bump=False)
        state.save_config()
    log.info("initialized fleet repository %s", paths.root)
    return paths.metadata / "root.json"


# ---------------------------------------------------------------------------------------- publish


def _default_min_sdk(manifest: Mapping) -> str:
    version = str(manifest.get("source", {}).get("fusionedge_version", "0.1.0"))
    return version if _SEMVER.match(version) else "0.1.0"


def publish(
    repo: str | os.PathLike,
    bundle_dir: str | os.PathLike,
    *,
    model: str,
    version: str,
    device_classes: Sequence[str],
    min_sdk: str | None = None,
    engines: Mapping[str, str | os.PathLike] | None = None,
    backends: Sequence[str] | None = None,
    offline_keys: str | os.PathLike | None = None,
    online_keys: str | os.PathLike | None = None,
    now: datetime | None = None,
) -> int:
    """Publish a bundle as a new release of ``model``: archive it, add the targets, re-sign.

    Adds the targets ``models/<model>/<version>/bundle.tar`` (with the ``custom["fusionedge"]``
    fields the device checks), ``.../manifest.json`` and one ``.../engines/<fingerprint>.plan`` per
    prebuilt engine. A release is not rolled out until :func:`set_rollout` names it.

    Args:
        repo: the repository folder.
        bundle_dir: a bundle folder; it is verified (schema and hashes) before anything is written.
        model: the fleet's name for the model (may differ from the bundle's own name).
        version: the release version (semantic version); must not be published yet.
        device_classes: the device classes this release may run on (at least one), e.g.
            ``["jetson-orin", "x86-cpu"]``.
        min_sdk: the oldest fusionedge runtime that can run it (default: the version that exported it).
        engines: prebuilt TensorRT plans, ``{device fingerprint: plan file}``; a plan's sidecar
            (``<plan>.json``, written by ``fusionedge engine build``) is published with it when present.
        backends: backends the release supports (default ``onnxruntime``, plus ``tensorrt`` with engines).
        offline_keys: folder holding the targets key (default ``REPO/keys/offline``).
        online_keys: folder holding the snapshot and timestamp keys (default ``REPO/keys/online``).
        now: the signing clock (default: the current time).

    Returns:
        The release number: a per-model counter, one higher than the model's previous release.

    Raises:
        RepositoryError: a bad name or version, the version is already published, or a signing key
            is missing (SigningKeyError); nothing is published then.
        BundleError: the bundle folder is not a valid bundle.
    """
    _check_name(model, "model")
    _check_version(version)
    classes = [_check_name(c, "device class") for c in device_classes]
    if not classes:
        raise RepositoryError("publish needs at least one device class (e.g. --device-class jetson-orin)")
    engines = dict(engines or {})
    for fingerprint, plan in engines.items():
        if not isinstance(fingerprint, str) or not _FINGERPRINT.match(fingerprint):
            raise RepositoryError(
                f"engine fingerprint {fingerprint!r}: expected letters, digits, '.', '_' or '-'")
        if not Path(plan).is_file():
            raise RepositoryError(f"engine {fingerprint}: plan file {plan} not found")
    backend_list = list(backends) if backends is not None else (
        ["onnxruntime"] + (["tensorrt"] if engines else []))
    for b in backend_list:
        _check_name(b, "backend")
    bundle = load_bundle(bundle_dir)  # BundleError names the bad file / field
    min_sdk = _check_version(min_sdk if min_sdk is not None else _default_min_sdk(bundle.manifest), "min_sdk")
    if bundle.version != version:
        log.warning("publishing bundle %s (manifest version %s) as %s %s", bundle.path, bundle.version,
                    model, version)
    try:
        from fusionedge.sdk.bundle_archive import pack_bundle
    except ImportError as e:  # pragma: no cover - the device side ships it
        raise RepositoryError("fusionedge.sdk.bundle_archive is missing: cannot archive the bundle") from e

    now = _utcnow(now)
    target = bundle_target_path(model, version)
    with _open(repo, offline_keys, online_keys) as state:
        existing = state.md["targets"].signed.targets.get(target)
        if existing is not None:
            release = existing.custom.get("fusionedge", {}).get("release") if existing.custom else None
            raise RepositoryError(
                f"{model} {version} is already published (release {release}); publish a new version"
            )
        state.require("targets", "snapshot", "timestamp")
        entry = state.config["models"].setdefault(model, {"release_counter": 0, "rollout_seq": 0,
                                                          "versions": {}, "rollout": None})
        release = int(entry["release_counter"]) + 1
        prefix = f"models/{model}/{version}"
        with tempfile.TemporaryDirectory(prefix=".publish-", dir=state.paths.root) as work:
            archive = Path(work) / "bundle.tar"
            pack_bundle(bundle.path, archive)
            engine_paths = {fp: f"{prefix}/engines/{fp}.plan" for fp in engines}
            new_targets = {f"{prefix}/{MANIFEST_NAME}": state.add_target(
                f"{prefix}/{MANIFEST_NAME}", bundle.path / MANIFEST_NAME)}
            for fp, plan in engines.items():
                new_targets[engine_paths[fp]] = state.add_target(engine_paths[fp], Path(plan))
                # The sidecar `fusionedge engine build` writes beside a plan (its full fingerprint and
                # sha256) travels with it: the TensorRT backend loads a plan only through its sidecar.
                sidecar = Path(plan).with_suffix(".json")
                if sidecar.is_file():
                    side_target = f"{prefix}/engines/{fp}.json"
                    new_targets[side_target] = state.add_target(side_target, sidecar)
            sha = _sha256(archive)
            custom = {"fusionedge": {
                "model": model, "version": version, "release": release,
                "compat": {"device_classes": classes, "min_sdk": min_sdk, "backends": backend_list,
                           "precision": bundle.precision},
                "bundle_sha256": sha, "engines": engine_paths,
            }}
            new_targets[target] = state.add_target(target, archive, custom)
        # Counter first: a crash after this leaves a gap in release numbers, never a duplicate.
        entry["release_counter"] = release
        entry["versions"][version] = {"release": release, "salt": secrets.token_hex(16),
                                      "published": _iso(now), "bundle_sha256": sha}
        state.save_config()
        state.md["targets"].signed.targets.update(new_targets)
        state.commit({"targets"}, now)
    log.info("published %s %s as release %d", model, version, release)
    return release


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- rollout


def set_rollout(
    repo: str | os.PathLike,
    *,
    model: str,
    version: str,
    percent: float | None = None,
    cohorts: Sequence[str] | None = None,
    paused: bool | None = None,
    online_keys: str | os.PathLike | None = None,
    now: datetime | None = None,
) -> dict:
    """Write and sign the rollout record ``rollouts/<model>.json`` (online keys only).

    Devices decide eligibility themselves: ``bucket(salt, device_id) < percent`` or their cohort is
    listed, and not paused. The salt is fixed per release, so raising the percent never removes a
    device that was already eligible.

    Args:
        repo: the repository folder.
        model: a published model.
        version: a published version of it (rolling back to an older version is allowed).
        percent: share of devices, 0 to 100. None keeps the current record's percent (the current
            record must then be for this version).
        cohorts: cohorts that get the release regardless of percent. None keeps the current record's
            cohorts for this version (none for a new version).
        paused: True pauses, False resumes; None keeps the current state (not paused for a new version).
        online_keys: folder holding the rollouts, snapshot and timestamp keys (default ``REPO/keys/online``).
        now: the signing clock (default: the current time).

    Returns:
        The record as written: ``model, version, release, percent, cohorts, paused, salt, issued, seq``.

    Raises:
        RepositoryError: the version is not published, percent is out of range or missing, a cohort
            name is invalid, or an online key is missing (SigningKeyError).
    """
    _check_name(model, "model")
    _check_version(version)
    if percent is not None and (isinstance(percent, bool) or not isinstance(percent, (int, float))
                                or not 0 <= percent <= 100):
        raise RepositoryError(f"percent {percent!r}: expected a number from 0 to 100")
    if cohorts is not None:
        cohorts = [_check_name(c, "cohort") for c in cohorts]
    if paused is not None and not isinstance(paused, bool):
        raise RepositoryError(f"paused {paused!r}: expected True, False or None")
    now = _utcnow(now)
    with _open(repo, None, online_keys) as state:
        target = state.md["targets"].signed.targets.get(bundle_target_path(model, version))
        entry = state.config["models"].get(model)
        if target is None or entry is None:
            raise RepositoryError(f"{model} {version} is not published; publish it before rolling it out")
        state.require(ROLLOUTS_ROLE, "snapshot", "timestamp")
        versions = entry["versions"]
        if version not in versions:  # metadata written but the config lost it: recover from metadata
            versions[version] = {"release": target.custom["fusionedge"]["release"],
                                 "salt": secrets.token_hex(16), "published": _iso(now)}
        previous = entry.get("rollout") if (entry.get("rollout") or {}).get("version") == version else None
        if percent is None:
            if previous is None:
                raise RepositoryError(f"{model} {version} has no rollout yet: give a percent")
            percent = previous["percent"]
        record = {
            "model": model,
            "version": version,
            "release": int(versions[version]["release"]),
            "percent": int(percent) if float(percent).is_integer() else float(percent),
            "cohorts": sorted(set(cohorts if cohorts is not None else (previous or {}).get("cohorts", []))),
            "paused": paused if paused is not None else bool((previous or {}).get("paused", False)),
            "salt": versions[version]["salt"],
            "issued": _iso(now),
            "seq": int(entry.get("rollout_seq", 0)) + 1,
        }
        entry["rollout_seq"] = record["seq"]
        entry["rollout"] = record
        state.save_config()
        data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
        with tempfile.TemporaryDirectory(prefix=".rollout-", dir=state.paths.root) as work:
            src = Path(work) / f"{model}.json"
            src.write_bytes(data)
            path = rollout_target_path(model)
            state.md[ROLLOUTS_ROLE].signed.targets[path] = state.add_target(path, src)
        state.commit({ROLLOUTS_ROLE}, now)
    return record


# ------------------------------------------------------------------------------- expiry and keys


def refresh_timestamp(
    repo: str | os.PathLike,
    *,
    online_keys: str | os.PathLike | None = None,
    now: datetime | None = None,
) -> dict:
    """Re-sign the timestamp with a new expiry; also renew snapshot and rollouts when half their life is gone.

    Run it from cron well inside the timestamp period (e.g. every 6 hours for the default 1 day).
    Only online keys are used. Offline roles close to expiry are reported, not renewed.

    Args:
        repo: the repository folder.
        online_keys: folder holding the online keys (default ``REPO/keys/online``).
        now: the signing clock (default: the current time).

    Returns:
        ``{"timestamp": {"version", "expires"}, "renewed": [roles], "expiring": {role: expires}}``,
        where ``expiring`` lists offline roles (root, targets) with less than a third of their period
        left: renew them with :func:`resign` and the offline keys.

    Raises:
        RepositoryError: an online key is missing (SigningKeyError) or the repository is unreadable.
    """
    now = _utcnow(now)
    with _open(repo, None, online_keys) as state:
        state.require("timestamp")
        renewed = {role for role in (ROLLOUTS_ROLE, "snapshot")
                   if state.md[role].signed.expires - now < state.expiry(role) / 2}
        if renewed:
            renewed.add("snapshot")  # a renewed rollouts role is a new snapshot too
        state.require(*renewed)
        state.commit(renewed, now)
        expiring = {role: _iso(state.md[role].signed.expires) for role in OFFLINE_ROLES
                    if state.md[role].signed.expires - now < state.expiry(role) / 3}
        ts = state.md["timestamp"].signed
        return {"timestamp": {"version": ts.version, "expires": _iso(ts.expires)},
                "renewed": sorted(renewed), "expiring": expiring}


def resign(
    repo: str | os.PathLike,
    role: str,
    *,
    offline_keys: str | os.PathLike | None = None,
    online_keys: str | os.PathLike | None = None,
    now: datetime | None = None,
) -> int:
    """Re-sign one role with a new version and expiry (its keys unchanged); snapshot and timestamp follow.

    Args:
        repo: the repository folder.
        role: root, targets, snapshot, timestamp or rollouts.
        offline_keys: folder holding root/targets keys (default ``REPO/keys/offline``).
        online_keys: folder holding the online keys (default ``REPO/keys/online``).
        now: the signing clock (default: the current time).

    Returns:
        The role's new metadata version.

    Raises:
        RepositoryError: unknown role, or its keys (or the online keys) are missing.
    """
    _check_role(role)
    now = _utcnow(now)
    with _open(repo, offline_keys, online_keys) as state:
        state.require(role, "snapshot", "timestamp")
        if role == "root":
            state.sign("root", state.md["root"], now)
            state.write("root", state.md["root"])
            state.commit(set(), now)
        else:
            state.commit({role}, now)
        return state.md[role].signed.version


def rotate_key(
    repo: str | os.PathLike,
    role: str,
    *,
    offline_keys: str | os.PathLike | None = None,
    online_keys: str | os.PathLike | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Replace every key of ``role`` with a fresh one (same count and threshold); clients follow.

    Top-level roles change in a new root version, signed by the root keys — for root itself by
    the old keys (to the old threshold) and the new ones, so a client holding the old root accepts
    the chain ``N.root.json → N+1.root.json``. The ``rollouts`` keys live in the targets
    delegation, so rotating them re-signs targets (offline key). The rotated role is then
    re-signed with its new keys, then snapshot and timestamp. The old private key files are deleted.

    Args:
        repo: the repository folder.
        role: root, targets, snapshot, timestamp or rollouts.
        offline_keys: folder holding root/targets keys (default ``REPO/keys/offline``).
        online_keys: folder holding the online keys (default ``REPO/keys/online``).
        now: the signing clock (default: the current time).

    Returns:
        The new key ids.

    Raises:
        RepositoryError: unknown role, or a key needed to sign the change is missing (nothing is
            changed then; new key files may remain and are ignored).
    """
    _check_role(role)
    now = _utcnow(now)
    with _open(repo, offline_keys, online_keys) as state:
        old_ids, threshold = state.role_keys(role)
        delegator = "targets" if role == ROLLOUTS_ROLE else "root"
        # Only keys that will sign are needed: a lost or compromised key of the rotated role is not.
        old_root_signers = state.signers("root") if role == "root" else []
        if role != "root":
            state.require(*({delegator, "snapshot", "timestamp"} - {role}))
        new = [generate_key() for _ in old_ids]
        for signer in new:
            save_key(signer, state.paths.key_folder(role))
        if role == ROLLOUTS_ROLE:
            targets = state.md["targets"].signed
            for keyid in old_ids:
                targets.revoke_key(keyid, ROLLOUTS_ROLE)
            for signer in new:
                targets.add_key(signer.public_key, ROLLOUTS_ROLE)
            state.commit({"targets", ROLLOUTS_ROLE}, now)
        else:
            old_root = state.md["root"]
            new_root = copy.deepcopy(old_root)
            for keyid in old_ids:
                new_root.signed.revoke_key(keyid, role)
            for signer in new:
                new_root.signed.add_key(signer.public_key, role)
            state.md["root"] = new_root
            try:
                # Old keys to the old threshold (checked against the old root), and the new keys.
                state.sign("root", new_root, now, extra=old_root_signers)
                old_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
            except Exception:
                state.md["root"] = old_root
                raise
            state.write("root", new_root)
            if role != "root":
                state.commit({role} - {"timestamp"}, now)
        remove_keys(state.paths.key_folder(role), old_ids)
        log.info("rotated %s keys: %s", role, ", ".join(s.public_key.keyid[:12] for s in new))
        return [s.public_key.keyid for s in new]


# ----------------------------------------------------------------------------------------- status


def repository_status(repo: str | os.PathLike) -> dict:
    """Describe a repository: each role's version, expiry, threshold and key ids; models and rollouts.

    Needs no keys.

    Args:
        repo: the repository folder.

    Returns:
        ``{"repo", "roles": {role: {"version", "expires", "threshold", "keyids"}},
        "models": {model: {"versions": {version: release}, "rollout": record or None}}}``.

    Raises:
        RepositoryError: not a repository, or its metadata is unreadable.
    """
    with _open(repo, None, None) as state:
        roles = {}
        for role in ROLES:
            keyids, threshold = state.role_keys(role)
            signed = state.md[role].signed
            roles[role] = {"version": signed.version, "expires": _iso(signed.expires),
                           "threshold": threshold, "keyids": keyids}
        models = {name: {"versions": {v: info["release"] for v, info in entry["versions"].items()},
                         "rollout": entry.get("rollout")}
                  for name, entry in state.config["models"].items()}
        return {"repo": str(state.paths.root), "roles": roles, "models": models}
