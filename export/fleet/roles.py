"""A fleet repository's role metadata on disk: open it under a lock, sign a role, write in order.

:class:`RepoState` (the loaded ``repo.json`` and the current metadata of every role) is what each
operation of :mod:`fusionedge.export.fleet.repo` opens with :func:`open_repo`, changes, and
:meth:`~RepoState.commit` them: changed roles are re-signed and written first, then the snapshot, and
``timestamp.json`` last, each file atomically, so a client fetching during a change sees the old or
the new consistent snapshot. Every signature is verified against its delegator before the file is
written. Built on python-tuf's Metadata API, imported when a repository is touched (the fleet extra).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fusionedge.export.fleet.keys import (
    OFFLINE_ROLES,
    ROLES,
    RepositoryError,
    SigningKeyError,
    key_folder,
    load_role_signers,
)
from fusionedge.sdk.fileio import copy_file_atomic, read_json, write_bytes_atomic, write_json_atomic
from fusionedge.sdk.fleet.protocol import ROLLOUTS_ROLE

__all__ = [
    "CONFIG_NAME",
    "CONFIG_SCHEMA",
    "DEFAULT_EXPIRY",
    "RepoPaths",
    "RepoState",
    "check_role",
    "iso",
    "locked",
    "open_repo",
    "repo_paths",
    "role_ints",
    "tuf",
    "utcnow",
]

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
_CONFIG_MAX_BYTES = 64 * 1024 * 1024  # per-model counters and salts: grows with releases, stays small


# ------------------------------------------------------------------------------------------ paths


@dataclass(frozen=True)
class RepoPaths:
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


def repo_paths(repo: str | os.PathLike, offline_keys: str | os.PathLike | None,
           online_keys: str | os.PathLike | None) -> RepoPaths:
    root = Path(repo)
    return RepoPaths(
        root=root,
        offline_keys=Path(offline_keys) if offline_keys is not None else root / "keys" / "offline",
        online_keys=Path(online_keys) if online_keys is not None else root / "keys" / "online",
    )


def utcnow(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc).replace(microsecond=0)
    if now.tzinfo is None:
        raise RepositoryError(f"now={now!r}: pass a timezone-aware time (UTC)")
    return now.astimezone(timezone.utc).replace(microsecond=0)


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_bytes_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomic write into a folder that may not exist yet (served files must be world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data, mode=mode)


@contextlib.contextmanager
def locked(paths: RepoPaths) -> Iterator[None]:
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


def check_role(role: Any) -> str:
    if role not in ROLES:
        raise RepositoryError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role


def role_ints(values: Mapping[str, int] | None, what: str) -> dict[str, int]:
    out = {role: 1 for role in ROLES}
    for role, n in (values or {}).items():
        check_role(role)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise RepositoryError(f"{what} for {role}: expected an integer >= 1, got {n!r}")
        out[role] = n
    return out


def tuf():
    """python-tuf, imported when a repository is touched (the fleet extra)."""
    try:
        from tuf.api import exceptions, metadata
        from tuf.api.serialization.json import JSONSerializer
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RepositoryError("fleet repositories need python-tuf: pip install 'fusionedge[fleet]'") from e
    return metadata, exceptions, JSONSerializer


# ------------------------------------------------------------------------------------------ state


class RepoState:
    """The loaded repository: config and the current metadata of every role, and how to sign them.

    Not public: the functions below open one under the lock, change it and :meth:`commit` it.
    """

    def __init__(self, paths: RepoPaths, config: dict, roles: dict[str, Any]) -> None:
        self.paths = paths
        self.config = config
        self.md = roles  # role -> tuf Metadata

    # -------------------------------------------------------------------------------- loading

    @classmethod
    def open(cls, paths: RepoPaths) -> RepoState:
        metadata, _, _ = tuf()
        if not paths.config.is_file() or not (paths.metadata / "root.json").is_file():
            raise RepositoryError(
                f"{paths.root}: not a fleet repository (no {CONFIG_NAME} or metadata/root.json); "
                f"create one with `fusionedge fleet init {paths.root}`"
            )
        try:
            config = read_json(paths.config, what=str(paths.config), max_bytes=_CONFIG_MAX_BYTES,
                               error=RepositoryError)
        except OSError as e:
            raise RepositoryError(f"{paths.config}: cannot be read ({e})") from e
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
        _, exceptions, _ = tuf()
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
        _, _, JSONSerializer = tuf()
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
        metadata, _, _ = tuf()
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
        metadata, _, _ = tuf()
        info = metadata.TargetFile.from_file(target_path, str(src), ["sha256"])
        if custom is not None:
            info.unrecognized_fields["custom"] = dict(custom)
        (prefixed,) = info.get_prefixed_paths()
        dest = self.paths.targets / prefixed
        if not dest.is_file():  # content-addressed: an existing file already holds these bytes
            dest.parent.mkdir(parents=True, exist_ok=True)
            copy_file_atomic(src, dest)
        return info


@contextlib.contextmanager
def open_repo(repo: str | os.PathLike, offline_keys: str | os.PathLike | None,
          online_keys: str | os.PathLike | None) -> Iterator[RepoState]:
    paths = repo_paths(repo, offline_keys, online_keys)
    if not paths.root.is_dir():
        raise RepositoryError(f"{paths.root}: no such repository folder")
    with locked(paths):
        yield RepoState.open(paths)


