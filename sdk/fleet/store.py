"""The agent's state folder: staged downloads, the archive store, the A/B links and the bad-release list.

::

    STATE/ tuf/              TUF metadata cache (python-tuf's Updater)
           staging/          downloads in progress (<sha256>.part) and verified archives (<sha256>.tar)
           store/<sha256>/   unpacked, verified bundles; store/<sha256>.release.json says which release
                             (+ engines/<fingerprint>.plan: a verified prebuilt TensorRT plan, if any)
           current -> store/<sha256>    the model the device runs (switched atomically)
           previous -> store/<sha256>   the one before it (kept for rollback)
           journal.jsonl  status.json  bad_releases.json  lock

:class:`Store` owns the files; it knows nothing of HTTP or of the journal. Every change is atomic on
its own (a rename, a symlink swap, a whole-file write, each followed by an fsync of the folder), and
the entries ``current`` and ``previous`` point to are never removed — so whatever the journal says was
interrupted, the model in use is intact. The A/B switch is two links: ``current`` is replaced in one
``rename``, ``previous`` keeps the model before it for a rollback.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from fusionedge.sdk.bundle_archive import unpack_bundle
from fusionedge.sdk.errors import InputError, UpdateError, VerificationError
from fusionedge.sdk.fileio import (
    copy_file_atomic,
    fsync_dir,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
)
from fusionedge.sdk.fleet.journal import utc_now
from fusionedge.sdk.fleet.protocol import MAX_RECORD_BYTES, Release

__all__ = ["Store", "switch_link"]

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def switch_link(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically: a temp symlink beside it, ``os.replace``, fsync the folder."""
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}.tmp")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


class Store:
    """The files of one agent's state folder (see the module docs for the layout).

    Args:
        state_dir: the folder (created with its sub-folders if missing).

    Raises:
        UpdateError: the folder cannot be created.
    """

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.state_dir = Path(state_dir)
        self.tuf_dir = self.state_dir / "tuf"
        self.staging_dir = self.state_dir / "staging"
        self.store_dir = self.state_dir / "store"
        try:
            for d in (self.tuf_dir, self.staging_dir, self.store_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UpdateError(f"{self.state_dir}: cannot create the state folder ({e})") from e

    # ---------------------------------------------------------------------------------- links

    def link_sha(self, name: str) -> str | None:
        """The store entry ``current`` / ``previous`` points to, or None."""
        try:
            target = os.readlink(self.state_dir / name)
        except OSError:
            return None
        sha = Path(target).name
        return sha if _SHA256.match(sha) else None

    def kept(self) -> set[str]:
        """The entries that must stay: what ``current`` and ``previous`` point to."""
        return {s for s in (self.link_sha("current"), self.link_sha("previous")) if s}

    def point(self, name: str, sha: str | None) -> None:
        """Switch ``current`` / ``previous`` to ``store/<sha>`` atomically (None removes the link)."""
        if sha:
            switch_link(self.state_dir / name, f"store/{sha}")
        else:
            (self.state_dir / name).unlink(missing_ok=True)
            fsync_dir(self.state_dir)

    # ------------------------------------------------------------------------------- releases

    def read_release(self, sha: str) -> Release | None:
        """The release stored beside ``store/<sha>`` (None, with a warning, when it is unreadable)."""
        path = self.store_dir / f"{sha}.release.json"
        try:
            data = path.read_bytes()
            if len(data) > MAX_RECORD_BYTES:
                raise VerificationError(f"{len(data)} bytes")
            return Release.from_json(data, where=f"store/{sha[:12]}.release.json")
        except (OSError, VerificationError) as e:
            log.warning("store/%s.release.json is unreadable: %s", sha[:12], e)
            return None

    def current_release(self) -> Release | None:
        """The release ``current`` points to, or None."""
        sha = self.link_sha("current")
        return None if sha is None else self.read_release(sha)

    def install(self, release: Release, archive: Path, *, then: Callable[[], None] | None = None) -> Path:
        """Unpack a verified archive into ``store/<sha>`` and record its release beside it.

        A leftover of an interrupted attempt is redone from the archive; the archive is removed.
        ``then`` runs last, inside the same cleanup (a fault-injection seam).

        Raises:
            UpdateError: a hostile or broken archive (the unpacker's checks).
            OSError: the disk (the partial entry is removed first).
        """
        dest = self.store_dir / release.sha256
        try:
            if dest.exists() and release.sha256 not in self.kept():
                shutil.rmtree(dest)
            unpack_bundle(archive, dest, max_bytes=release.length)
            write_bytes_atomic(self.store_dir / f"{release.sha256}.release.json",
                               release.to_json(installed=utc_now()))
            if then is not None:
                then()
        except BaseException:
            self.discard(release)
            raise
        finally:
            archive.unlink(missing_ok=True)
        return dest

    def discard(self, release: Release) -> None:
        """Remove an uncommitted store entry (never one that ``current`` or ``previous`` points to)."""
        if release.sha256 not in self.kept():
            shutil.rmtree(self.store_dir / release.sha256, ignore_errors=True)
            (self.store_dir / f"{release.sha256}.release.json").unlink(missing_ok=True)

    @staticmethod
    def place(src: Path, dest: Path) -> None:
        """Move a verified file into the store atomically (a copy when staging is another filesystem)."""
        dest.parent.mkdir(exist_ok=True)
        try:
            os.replace(src, dest)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            copy_file_atomic(src, dest)
            src.unlink()
        fsync_dir(dest.parent)
        fsync_dir(dest.parent.parent)

    # -------------------------------------------------------------------------------- cleaning

    def clean_store(self) -> list[str]:
        """Remove store entries other than current / previous (the model in use is never touched)."""
        keep = self.kept()
        actions = []
        for entry in sorted(self.store_dir.iterdir()):
            sha = entry.name.split(".")[0] if not entry.name.startswith(".") else ""
            if sha in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            actions.append(f"removed store/{entry.name}")
        # a dangling previous link (its entry vanished) is dropped rather than kept pointing nowhere
        prev = self.state_dir / "previous"
        if prev.is_symlink() and not prev.exists():
            prev.unlink()
            actions.append("removed a dangling previous link")
        return actions

    def clean_staging(self, keep: set[str]) -> list[str]:
        """Remove everything in ``staging/`` except the names in ``keep`` (resumable partial files)."""
        actions = []
        for entry in sorted(self.staging_dir.iterdir()):
            if entry.name in keep:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            actions.append(f"removed staging/{entry.name}")
        return actions

    # ---------------------------------------------------------------------------- bad releases

    def bad_releases(self) -> list[dict]:
        """Releases rolled back here (never retried): ``[{model, version, release, sha256, reason, ts}]``."""
        path = self.state_dir / "bad_releases.json"
        try:
            data = read_json(path, error=InputError)
        except FileNotFoundError:
            return []
        except (OSError, InputError) as e:
            log.warning("%s is unreadable (%s); treating it as empty", path, e)
            return []
        releases = data.get("releases", []) if isinstance(data, dict) else []
        return [r for r in releases if isinstance(r, dict)] if isinstance(releases, list) else []

    def is_bad(self, model: str, release: int) -> bool:
        """Whether release number ``release`` of ``model`` was rolled back here."""
        return any(b.get("model") == model and b.get("release") == release for b in self.bad_releases())

    def mark_bad(self, model: str, version: str, release: int, sha: str, reason: str) -> None:
        """Record a release as bad (replacing an older entry for the same release)."""
        releases = [b for b in self.bad_releases()
                    if not (b.get("model") == model and b.get("release") == release)]
        releases.append({"model": model, "version": version, "release": release, "sha256": sha,
                         "reason": reason, "ts": utc_now()})
        write_json_atomic(self.state_dir / "bad_releases.json", {"releases": releases})

    # ------------------------------------------------------------------------------------ lock

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the state folder's lock (one agent per folder); raise at once when another holds it.

        Raises:
            UpdateError: another agent holds the lock.
        """
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise UpdateError(f"{self.state_dir}: another agent is running on this state folder") from e
            yield
        finally:
            os.close(fd)
