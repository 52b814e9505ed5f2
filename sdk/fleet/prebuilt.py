"""The prebuilt-engine step of an update: fetch the release's TensorRT plan for this device, if it has one.

A release may list prebuilt plans in its signed ``custom.fusionedge.engines`` map (device fingerprint ->
target path). When the agent has an ``engine_fingerprint`` callable and the map lists this device's
fingerprint, the plan is a TUF target like the archive: a ranged download into
``staging/<sha256>.part`` bounded by its signed length, ``verify_length_and_hashes``, then a move to
``store/<sha256>/engines/<fingerprint>.plan`` (and its signed sidecar ``<fingerprint>.json`` beside it)
— after the install, before the health check, as the journaled step ``engine``.

A failed engine download fails the update (nothing committed, the uncommitted install removed) but
does not mark the release bad: it is usually transient, and the next check retries (the partial
plan resumes). No listed plan: the backend builds one on first load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fusionedge.sdk.bundle import Bundle, load_bundle
from fusionedge.sdk.errors import FusionEdgeError, UpdateError, VerificationError
from fusionedge.sdk.fleet.fetch import (
    DISK_FULL,
    Fetcher,
    expected_errors,
    fetch_ranged,
    target_url,
    wrap_error,
)
from fusionedge.sdk.fleet.journal import Journal
from fusionedge.sdk.fleet.protocol import (
    Release,
    check_fingerprint,
    check_sha256,
    engine_sidecar_target_path,
    engine_target_path,
)
from fusionedge.sdk.fleet.store import Store

__all__ = ["EngineStep"]

log = logging.getLogger(__name__)

_MAX_SIDECAR_BYTES = 1 << 20  # an engine sidecar is a small JSON file


class EngineStep:
    """Fetches a release's prebuilt plan for this device into an installed (uncommitted) bundle.

    Args:
        journal, store, fetcher: the agent's journal, state folder and HTTP client.
        url: the repository base URL.
        max_bytes: the largest plan accepted even when signed.
        hook: calls the agent's fault hook for a point (``engine:chunk``, ``engine``).
        report: reports a progress state (``downloading-engine``) with fields.
        progress: show a progress bar.
    """

    def __init__(self, *, journal: Journal, store: Store, fetcher: Fetcher, url: str, max_bytes: int,
                 hook: Callable[[str], None], report: Callable[..., None], progress: bool) -> None:
        self.journal, self.store, self.fetcher, self.url = journal, store, fetcher, url
        self.max_bytes, self.hook, self.report, self.progress = max_bytes, hook, report, progress

    def run(self, txn: str, updater: Any, release: Release, path: Path,
            fingerprint_of: Callable[[Bundle], str | None]) -> dict:
        """Put the plan for this device into ``<bundle>/engines/<fingerprint>.plan`` when the release has one.

        Without a matching engine nothing is fetched or journaled.

        Returns:
            ``{"fingerprint", "prebuilt"}`` (+ ``"sidecar"`` when fetched, ``"error"`` when no fingerprint
            could be had).

        Raises:
            DownloadError, VerificationError: the plan could not be fetched or verified; the
                uncommitted install was removed (the release is not marked bad).
        """
        from tuf.api import exceptions as tuf_exc

        fingerprint, problem = _device_fingerprint(fingerprint_of, path)
        target = release.engines.get(fingerprint) if fingerprint is not None else None
        if target is None:
            if fingerprint is not None:
                log.info("%s lists no prebuilt engine for fingerprint %s; the backend builds one on first "
                         "load", release.label, fingerprint)
            return {"fingerprint": fingerprint, "prebuilt": False, **({"error": problem} if problem else {})}
        try:
            info = self._target(updater, release, fingerprint, target)
        except UpdateError as e:
            self.journal.begin(txn, "engine", sha256=release.sha256, release=release.release,
                               fingerprint=fingerprint, target=target)
            self.journal.fail(txn, "engine", str(e))
            self.store.discard(release)
            raise
        engine_sha, length = info.hashes["sha256"], int(info.length)
        part = self.store.staging_dir / f"{engine_sha}.part"
        final = path / "engines" / f"{fingerprint}.plan"
        self.journal.begin(txn, "engine", sha256=release.sha256, release=release.release,
                           fingerprint=fingerprint, target=target, engine_sha256=engine_sha, length=length)
        self.report("downloading-engine", release, fingerprint=fingerprint)
        try:
            got = fetch_ranged(self.fetcher, target_url(self.url, info), length, part,
                               desc=f"engine {fingerprint}", on_chunk=lambda: self.hook("engine:chunk"),
                               progress=self.progress)
            try:
                with open(part, "rb") as f:
                    info.verify_length_and_hashes(f)
            except tuf_exc.LengthOrHashMismatchError as e:
                part.unlink(missing_ok=True)  # never keep bytes that failed verification
                raise VerificationError(f"{target}: the downloaded plan does not match the signed length and "
                                        f"hashes ({e}); discarded") from e
            self.hook("engine")
            self.store.place(part, final)
            sidecar = self._sidecar(updater, target, final)
        except UpdateError as e:
            self.journal.fail(txn, "engine", str(e))
            self.store.discard(release)
            raise
        except expected_errors() as e:
            error = wrap_error(e, f"engine {fingerprint} of {release.label}")
            if isinstance(e, OSError) and e.errno in DISK_FULL:
                part.unlink(missing_ok=True)  # free the space
            self.journal.fail(txn, "engine", str(error))
            self.store.discard(release)
            raise error from e
        self.journal.end(txn, "engine", bytes=got, path=f"engines/{final.name}", sidecar=sidecar)
        return {"fingerprint": fingerprint, "prebuilt": True, "sidecar": sidecar}

    def _target(self, updater: Any, release: Release, fingerprint: str, path: str) -> Any:
        """The signed TargetFile of the release's plan for ``fingerprint``; raise VerificationError."""
        expected = engine_target_path(release.model, release.version, fingerprint)
        if path != expected:
            raise VerificationError(f"{release.target}: custom.fusionedge.engines names {path!r} for "
                                    f"fingerprint {fingerprint!r}, expected {expected!r}")
        try:
            info = updater.get_targetinfo(path)
        except expected_errors() as e:
            raise wrap_error(e, path) from e
        if info is None:
            raise VerificationError(f"{path}: the release lists this engine but no signed targets metadata "
                                    f"does")
        check_sha256(info.hashes.get("sha256"), f"{path}: the signed metadata's sha256 hash")
        if info.length > self.max_bytes:
            raise VerificationError(f"{path}: {info.length} bytes is more than this device accepts "
                                    f"({self.max_bytes})")
        return info

    def _sidecar(self, updater: Any, plan_target: str, plan: Path) -> bool:
        """Fetch the plan's signed sidecar (``engines/<fingerprint>.json``) next to it, when published.

        The TensorRT backend loads a plan only through its sidecar (full fingerprint + plan sha256).
        tuf's download_target verifies length and hashes; it is written to staging, then moved.

        Returns:
            Whether a sidecar was placed.
        """
        side_target = engine_sidecar_target_path(plan_target)
        info = updater.get_targetinfo(side_target)
        if info is None:
            log.warning("%s has no signed sidecar: a TensorRT backend will not load it", plan_target)
            return False
        if info.length > _MAX_SIDECAR_BYTES:
            raise VerificationError(f"{side_target}: {info.length} bytes is too large for an engine sidecar")
        staged = Path(updater.download_target(info, str(self.store.staging_dir / f".{plan.stem}.json.part")))
        self.store.place(staged, plan.with_suffix(".json"))
        return True


def _device_fingerprint(fingerprint_of: Callable[[Bundle], str | None],
                        path: Path) -> tuple[str | None, str | None]:
    """``(fingerprint, problem)`` of this device for the installed bundle at ``path``."""
    try:
        fingerprint = fingerprint_of(load_bundle(path, verify=False))  # the install verified it
    except FusionEdgeError as e:
        problem = f"no engine fingerprint for this device ({type(e).__name__}: {e})"
        log.warning("%s; going on without a prebuilt engine", problem)
        return None, problem
    if fingerprint is not None:
        try:
            check_fingerprint(fingerprint, "engine_fingerprint's result")
        except VerificationError:
            problem = (f"engine_fingerprint returned {fingerprint!r}, expected None or letters, digits, '.', "
                       f"'_' or '-'")
            log.warning("%s; going on without a prebuilt engine", problem)
            return None, problem
    return fingerprint, None
