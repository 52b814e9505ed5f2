"""The on-device update agent: signed releases in, a health-checked model out, the old one kept.

Use it in this order (``fusionedge fleet agent`` does the same from the command line)::

    agent = Agent("https://updates.example.com/fleet", "cam-042", "/var/lib/fusionedge",
                  device_class="jetson-orin", model="student", root="/etc/fusionedge/root.json")
    agent.recover()              # after a restart: bring the state folder to a consistent point
    outcome = agent.check_once()  # one check: refresh -> rollout -> download -> verify -> install
                                  #   -> [prebuilt engine] -> health check -> commit (or roll back)
    print(outcome.action, outcome.release, outcome.error)
    agent.run(interval_s=300)     # or: check every 300 s ± 20% (jittered per device)

Every check is one transaction in the crash-safe journal (:mod:`.journal`); every step is idempotent,
so ``kill -9`` at any point followed by :meth:`Agent.recover` (:mod:`.recovery`) leaves either the old
model or the new one fully committed, never a mix. This module orchestrates; the parts live beside it:
the wire format (:mod:`.protocol`), bounded HTTP (:mod:`.fetch`), the state folder and A/B links
(:mod:`.store`), the update decision (:mod:`.decision`), the prebuilt-engine step (:mod:`.prebuilt`)
and the health check (:mod:`.health`).

What is trusted and when:

* Metadata: only what python-tuf's ``Updater`` verified (signatures, thresholds, expiry, version
  rollback, snapshot/targets consistency), starting from the embedded root. Nothing here checks a
  signature by hand.
* The rollout record ``rollouts/<model>.json`` and the archive ``models/<model>/<version>/bundle.tar``
  are TUF targets: their bytes are used only after ``TargetFile.verify_length_and_hashes`` passed.
  Every request has a total deadline, headers included (:mod:`.fetch`); the archive is fetched with
  a resumable ranged download bounded by the signed length; the bytes in ``staging/`` are never
  trusted before verification.
* The release's ``custom.fusionedge`` block must agree with the rollout record (model, version,
  release counter) — a mix of records from different releases is refused — and the release counter
  must be higher than the installed one (no downgrade, even to a validly signed older release).
  When the release pins the bundle's digest, the unpacked bundle's manifest must match it.
* Compatibility: device class, minimum SDK version, at least one required backend available here.
* Health check before commit (:mod:`.health`): hashes and digest, the preferred backend, the golden
  self-test, the latency budget.

A release that fails its health check (or whose hot swap fails after commit) is rolled back and
recorded in ``bad_releases.json``; it is never retried. The model in use is never deleted.

This module is part of the device runtime: no torch, no ``fusionedge.export``. It is a little
past 600 lines: it is only the orchestration of the steps above, whose work lives in ``fetch``,
``store``, ``recovery``, ``decision``, ``prebuilt`` and ``health``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fusionedge.sdk.bundle import Bundle, load_bundle
from fusionedge.sdk.errors import (
    BackendError,
    BundleError,
    InputError,
    UpdateError,
    VerificationError,
)
from fusionedge.sdk.fleet.decision import (
    ACTIONS,
    DEFAULT_JITTER,
    UpdateOutcome,
    check_newer,
    incompatibility,
    poll_intervals,
    screen,
)
from fusionedge.sdk.fleet.fetch import (
    DISK_FULL,
    Fetcher,
    expected_errors,
    fetch_ranged,
    fetch_small,
    target_url,
    wrap_error,
)
from fusionedge.sdk.fleet.health import health_check
from fusionedge.sdk.fleet.journal import Journal
from fusionedge.sdk.fleet.prebuilt import EngineStep
from fusionedge.sdk.fleet.protocol import (
    MAX_RECORD_BYTES,
    Release,
    Rollout,
    bucket,
    bundle_target_path,
    check_name,
    is_eligible,
    rollout_target_path,
)
from fusionedge.sdk.fleet.recovery import recover
from fusionedge.sdk.fleet.status import MqttSecurity, StatusReporter, status_topic
from fusionedge.sdk.fleet.store import Store

__all__ = ["ACTIONS", "HOOK_POINTS", "Agent", "Release", "Rollout", "UpdateOutcome", "bucket", "is_eligible"]

log = logging.getLogger(__name__)

#: Points where ``fault_hooks`` are called (fault-injection seams for tests: kill -9, ENOSPC, ...).
HOOK_POINTS = ("download:chunk", "verify", "install", "engine:chunk", "engine", "health", "commit",
               "commit:switched")


def _sdk_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("fusionedge")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0.0.0"


class Agent:
    """Keep one device's model up to date from a TUF fleet repository.

    Args:
        url: the repository base URL (metadata at ``URL/metadata/``, targets at ``URL/targets/``).
        device_id: this device's id (letters, digits, ``.``, ``_``, ``-``): its rollout bucket and
            MQTT topic.
        state_dir: the agent's folder (created if missing; see the module docs).
        device_class: e.g. ``jetson-orin`` or ``x86-cpu``; a release must list it.
        model: the fleet model name this device runs (``rollouts/<model>.json``).
        cohort: a named cohort (e.g. ``canary``) a rollout may include regardless of its percent.
        root: the embedded trusted ``root.json`` (a path or the bytes) shipped with the device; None
            reads ``STATE/root.json``.
        backends: backends in order of preference; the health check must load on the first one
            available here.
        backend_options: per-backend options, e.g. ``{"onnxruntime": {"intra_op_threads": 1}}``.
        mqtt: ``HOST:PORT`` of an MQTT broker for status messages (None: ``status.json`` only).
        mqtt_security: TLS files and this device's broker credentials (None: plain TCP, anonymous).
        on_commit: called with the new bundle folder after the commit (e.g.
            :meth:`HotSwapPerception.on_commit`); if it raises, the commit is rolled back.
        latency_budget_ms: the largest median golden-inference latency the health check accepts
            (None: no budget).
        health_runs: golden inferences timed by the health check.
        timeout_s: the longest silence tolerated from the server (connect and read), and the longest
            a response's status line and headers may take in total, seconds.
        min_rate_bps: the slowest overall transfer accepted; every request has a total deadline of
            ``timeout_s + length / min_rate_bps`` (10 MiB for metadata), headers included.
        max_bundle_bytes: the largest archive (and prebuilt engine plan) accepted even when signed.
        max_health_crashes: a release whose health check killed the process this many times is
            marked bad (a crash there may be the model's fault, e.g. an engine build running out of memory).
        sdk_version: the runtime version compared with a release's ``min_sdk`` (default: installed
            ``fusionedge``).
        fault_hooks: ``{point: callable}`` called at :data:`HOOK_POINTS` — a fault-injection seam for tests.
        progress: show a progress bar while downloading.
        engine_fingerprint: returns this device's engine fingerprint for an installed (verified,
            uncommitted) bundle, or None when it runs no prebuilt engines (e.g. no TensorRT here). When
            the release lists a plan for that fingerprint, it is downloaded through TUF into
            ``<bundle>/engines/<fingerprint>.plan`` before the health check. None (the default): no
            engine step at all. A :class:`FusionEdgeError` it raises (or a malformed return value) is
            logged and the update goes on without a prebuilt engine; the health check then decides.

    Raises:
        InputError: a bad device id, model name, URL or option.
        UpdateError: the state folder or the root metadata cannot be read.
    """

    def __init__(
        self,
        url: str,
        device_id: str,
        state_dir: str | os.PathLike,
        *,
        device_class: str,
        model: str,
        cohort: str | None = None,
        root: str | os.PathLike | bytes | None = None,
        backends: Sequence[str] = ("onnxruntime",),
        backend_options: Mapping[str, Mapping[str, Any]] | None = None,
        mqtt: str | tuple[str, int] | None = None,
        mqtt_security: MqttSecurity | None = None,
        on_commit: Callable[[Path], None] | None = None,
        latency_budget_ms: float | None = 2000.0,
        health_runs: int = 3,
        timeout_s: float = 30.0,
        min_rate_bps: float = 32 * 1024,
        max_bundle_bytes: int = 2 << 30,
        max_health_crashes: int = 2,
        sdk_version: str | None = None,
        fault_hooks: Mapping[str, Callable[[], None]] | None = None,
        progress: bool = False,
        engine_fingerprint: Callable[[Bundle], str | None] | None = None,
    ) -> None:
        if not isinstance(url, str) or not re.match(r"^https?://", url):
            raise InputError(f"url must start with http:// or https://, got {url!r}")
        status_topic(device_id)  # validates the device id
        check_name(model, "model", InputError)
        check_name(device_class, "device_class", InputError)
        if cohort is not None:
            check_name(cohort, "cohort", InputError)
        names = [backends] if isinstance(backends, str) else list(backends)
        if not names:
            raise InputError("backends must name at least one backend, e.g. ['onnxruntime']")
        if min(int(health_runs), float(timeout_s), float(min_rate_bps), int(max_bundle_bytes)) <= 0:
            raise InputError("health_runs, timeout_s, min_rate_bps and max_bundle_bytes must be positive")
        if engine_fingerprint is not None and not callable(engine_fingerprint):
            raise InputError(f"engine_fingerprint must be a callable or None, got {engine_fingerprint!r}")
        unknown = sorted(set(fault_hooks or {}) - set(HOOK_POINTS))
        if unknown:
            raise InputError(f"unknown fault hook point(s) {unknown}; known: {', '.join(HOOK_POINTS)}")
        self.url = url.rstrip("/")
        self.device_id = device_id
        self.device_class = device_class
        self.model = model
        self.cohort = cohort
        self.backends = tuple(names)
        self.backend_options = {k: dict(v) for k, v in (backend_options or {}).items()}
        self.on_commit = on_commit
        self.latency_budget_ms = None if latency_budget_ms is None else float(latency_budget_ms)
        self.health_runs = int(health_runs)
        self.timeout_s = float(timeout_s)
        self.min_rate_bps = float(min_rate_bps)
        self.max_bundle_bytes = int(max_bundle_bytes)
        self.max_health_crashes = int(max_health_crashes)
        self.sdk_version = sdk_version or _sdk_version()
        self.progress = progress
        self.engine_fingerprint = engine_fingerprint
        self._hooks = dict(fault_hooks or {})
        self._attempt: Release | None = None  # the release the running check is about

        self.store = Store(state_dir)
        self.state_dir = self.store.state_dir
        self.tuf_dir = self.store.tuf_dir
        self.staging_dir = self.store.staging_dir
        self.store_dir = self.store.store_dir
        self._root = self._read_root(root)
        self.journal = Journal(self.state_dir / "journal.jsonl")
        self.status = StatusReporter(device_id, self.state_dir / "status.json", mqtt=mqtt,
                                     security=mqtt_security)
        self._fetcher = Fetcher(self.timeout_s, self.min_rate_bps)
        self._engines = EngineStep(journal=self.journal, store=self.store, fetcher=self._fetcher, url=self.url,
                                   max_bytes=self.max_bundle_bytes, hook=self._hook, report=self._progress,
                                   progress=self.progress)

    # ------------------------------------------------------------------------------ public API

    def check_once(self) -> UpdateOutcome:
        """Run one check: recover if needed, refresh metadata, and install the rollout's release if due.

        Returns:
            The :class:`UpdateOutcome`. Failures are returned, not raised: ``action`` ``failed``
            (``error`` a :class:`DownloadError` or :class:`VerificationError`; nothing changed),
            ``rolled-back`` (the release failed its health check or hot swap; it is recorded as bad)
            or ``incompatible``. The model in use is untouched by every failure.

        Raises:
            UpdateError: another agent holds the state folder.
        """
        with self._exclusive():
            self._recover_locked()
            txn = self.journal.new_txn()
            self.journal.begin(txn, "check", model=self.model)
            timings: dict[str, float] = {}
            self._attempt = None
            try:
                outcome = self._check(txn, timings)
            except UpdateError as e:
                outcome = UpdateOutcome("failed", release=self._attempt, running=self._running(), error=e,
                                        timings=timings)
            self.journal.end(txn, "check", outcome=outcome.action,
                             error=None if outcome.error is None else str(outcome.error))
            self._report(outcome)
            self.journal.rotate_if_large()
            return outcome

    def recover(self) -> list[str]:
        """Bring the state folder to a consistent point after a crash; safe to call any time.

        An interrupted download keeps its partial file (it resumes, and is verified in full); other
        staging files are removed (a partial prebuilt-engine plan is kept too). An install, engine
        download or health check without a commit is rolled back (the store entry removed). A commit
        whose ``current`` link switched but whose end was not journaled is finished (``previous``
        set); one whose link did not switch is rolled back. A release whose health check was
        interrupted ``max_health_crashes`` times is marked bad. Store entries other than ``current``
        and ``previous`` are removed.

        Returns:
            What was done, one line per action (empty when the state was already consistent).

        Raises:
            UpdateError: another agent holds the state folder.
        """
        with self._exclusive():
            return self._recover_locked()

    def run(self, interval_s: float, *, max_checks: int | None = None, stop: Any = None,
            on_outcome: Callable[[UpdateOutcome], None] | None = None, jitter: float = DEFAULT_JITTER) -> None:
        """Check now, then every ``interval_s`` seconds ± ``jitter``, until ``stop`` (a ``threading.Event``) is set.

        The waits come from :func:`~.decision.poll_intervals`, seeded with the device id: devices
        that start together (a fleet rebooted at once) spread their later checks over
        ``interval_s * (1 ± jitter)`` instead of polling the server in step.

        Args:
            interval_s: the mean time between the starts of two checks, seconds (> 0).
            max_checks: stop after this many checks (None: run until stopped).
            stop: an object with ``is_set()`` and ``wait(seconds)``, e.g. ``threading.Event``.
            on_outcome: called with each outcome (e.g. to print it).
            jitter: the largest relative deviation of a wait, 0 to 0.9 (0: a fixed interval).

        Raises:
            InputError: ``interval_s`` <= 0 or ``jitter`` out of range.
        """
        import threading

        waits = poll_intervals(self.device_id, interval_s, jitter)
        stop = stop or threading.Event()
        done = 0
        while not stop.is_set() and (max_checks is None or done < max_checks):
            started = time.monotonic()
            outcome = self.check_once()
            done += 1
            if on_outcome is not None:
                on_outcome(outcome)
            if max_checks is not None and done >= max_checks:
                break
            stop.wait(max(0.0, next(waits) - (time.monotonic() - started)))

    @property
    def current_path(self) -> Path | None:
        """The bundle folder ``current`` points to, or None before the first install."""
        sha = self.store.link_sha("current")
        return None if sha is None else self.store_dir / sha

    def current_release(self) -> Release | None:
        """The release ``current`` points to (from its ``store/<sha>.release.json``), or None."""
        return self.store.current_release()

    def bad_releases(self) -> list[dict]:
        """Releases rolled back here (never retried): ``[{model, version, release, sha256, reason, ts}]``."""
        return self.store.bad_releases()

    def close(self) -> None:
        """Flush and close the status publisher."""
        self.status.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------- one check

    def _check(self, txn: str, timings: dict[str, float]) -> UpdateOutcome:
        t0 = time.perf_counter()
        updater = self._refresh(txn)
        rollout = self._read_rollout(updater)
        timings["refresh"] = (time.perf_counter() - t0) * 1e3
        running = self._running()
        if rollout is None:
            return UpdateOutcome("no-rollout", running=running, timings=timings)
        action = screen(rollout, device_id=self.device_id, cohort=self.cohort,
                        is_bad=self.store.is_bad(self.model, rollout.release))
        if action is not None:
            return UpdateOutcome(action, release=self._rollout_release(rollout), running=running, timings=timings)
        info, release = self._read_release_target(updater, rollout)
        self._attempt = release
        current = self.current_release()
        if current is not None and current.sha256 == release.sha256:
            return UpdateOutcome("up-to-date", release=release, running=running, timings=timings)
        check_newer(release, current)
        problem = incompatibility(release, device_class=self.device_class, sdk_version=self.sdk_version,
                                  device_backends=self._device_backends())
        if problem is not None:
            return UpdateOutcome("incompatible", release=release, running=running, timings=timings,
                                 error=VerificationError(f"{release.label}: {problem}"))

        def timed(step: str, fn: Callable[[], Any]) -> Any:
            t0 = time.perf_counter()
            try:
                return fn()
            finally:
                timings[step] = (time.perf_counter() - t0) * 1e3

        self._progress("downloading", release)
        part = timed("download", lambda: self._download(txn, release))
        self._progress("verifying", release)
        archive = timed("verify", lambda: self._verify(txn, info, release, part))
        self._progress("installing", release)
        path = timed("install", lambda: self._install(txn, release, archive))
        engine: dict | None = None
        if self.engine_fingerprint is not None:
            # a failure removed the uncommitted install and raised (-> "failed", not marked bad)
            engine = timed("engine", lambda: self._engines.run(txn, updater, release, path,
                                                               self.engine_fingerprint))
        self._progress("health-check", release)
        try:
            health = timed("health", lambda: self._health(txn, release, path))
        except VerificationError as e:
            self._reject(txn, release, str(e), committed_from=None)
            return UpdateOutcome("rolled-back", release=release, running=self._running(), error=e,
                                 health={} if engine is None else {"engine": engine}, timings=timings)
        if engine is not None:
            health["engine"] = engine
        self._progress("committing", release, health=health)
        previous_sha = current.sha256 if current is not None else None
        timed("commit", lambda: self._commit(txn, release, previous_sha))
        if self.on_commit is not None:
            t0 = time.perf_counter()
            try:
                self.on_commit(path)
            except Exception as e:  # the running application refused the new model: roll back
                error = VerificationError(f"{release.label}: activation after commit failed "
                                          f"({type(e).__name__}: {e}); rolled back")
                self._reject(txn, release, str(error), committed_from=previous_sha or "")
                return UpdateOutcome("rolled-back", release=release, running=self._running(), error=error,
                                     health=health, timings=timings)
            timings["activate"] = (time.perf_counter() - t0) * 1e3
        self.store.clean_store()
        return UpdateOutcome("updated", release=release, running=self._running(), health=health,
                             timings=timings)

    # ---------------------------------------------------------------------------------- steps

    def _refresh(self, txn: str) -> Any:
        from tuf.ngclient import Updater

        self.journal.begin(txn, "refresh")
        self._fetcher.last_url = None
        try:
            updater = Updater(str(self.tuf_dir), f"{self.url}/metadata/", str(self.staging_dir),
                              f"{self.url}/targets/", fetcher=self._fetcher.tuf_fetcher(),
                              bootstrap=self._root)
            updater.refresh()
        except expected_errors() as e:
            last = self._fetcher.last_url or ""
            error = wrap_error(e, f"refresh ({last.removeprefix(self.url + '/') or 'metadata'})")
            self.journal.fail(txn, "refresh", str(error))
            raise error from e
        self.journal.end(txn, "refresh")
        return updater

    def _read_rollout(self, updater: Any) -> Rollout | None:
        path = rollout_target_path(self.model)
        try:
            info = updater.get_targetinfo(path)
            if info is None:
                return None
            if info.length > MAX_RECORD_BYTES:
                raise VerificationError(f"{path}: signed length {info.length} is too large for a rollout "
                                        f"record")
            data = fetch_small(self._fetcher, target_url(self.url, info), info)
        except UpdateError:
            raise
        except expected_errors() as e:
            raise wrap_error(e, path) from e
        return Rollout.from_json(data, model=self.model)

    def _rollout_release(self, rollout: Rollout) -> Release:
        return Release(model=rollout.model, version=rollout.version, release=rollout.release, sha256="",
                       length=0, target=bundle_target_path(rollout.model, rollout.version))

    def _read_release_target(self, updater: Any, rollout: Rollout) -> tuple[Any, Release]:
        path = bundle_target_path(self.model, rollout.version)
        try:
            info = updater.get_targetinfo(path)
        except expected_errors() as e:
            raise wrap_error(e, path) from e
        if info is None:
            raise VerificationError(f"{path}: the rollout names a release that no signed targets metadata "
                                    f"lists")
        release = Release.from_target(path, info.custom, info.hashes.get("sha256"), int(info.length),
                                      model=self.model, version=rollout.version, release=rollout.release)
        if info.length > self.max_bundle_bytes:
            raise VerificationError(f"{path}: {info.length} bytes is more than this device accepts "
                                    f"({self.max_bundle_bytes})")
        return info, release

    def _device_backends(self) -> list[str]:
        from fusionedge.sdk.backends import available_backends

        available = set(available_backends())
        return [b for b in self.backends if b in available]

    def _download(self, txn: str, release: Release) -> Path:
        """Fetch the archive into ``staging/<sha>.part``, resuming with HTTP Range where possible."""
        part = self.staging_dir / f"{release.sha256}.part"
        self.journal.begin(txn, "download", sha256=release.sha256, release=release.release,
                           version=release.version, length=release.length)
        url = f"{self.url}/targets/{release.target.rpartition('/')[0]}/{release.sha256}.bundle.tar"
        try:
            got = fetch_ranged(self._fetcher, url, release.length, part, desc=release.label,
                               on_chunk=lambda: self._hook("download:chunk"), progress=self.progress)
        except expected_errors() as e:
            error = wrap_error(e, f"download of {release.label}")
            if isinstance(e, OSError) and e.errno in DISK_FULL:
                part.unlink(missing_ok=True)  # free the space; nothing was installed
            self.journal.fail(txn, "download", str(error))
            raise error from e
        self.journal.end(txn, "download", bytes=got)
        return part

    def _verify(self, txn: str, info: Any, release: Release, part: Path) -> Path:
        from tuf.api import exceptions as tuf_exc

        self.journal.begin(txn, "verify", sha256=release.sha256)
        self._hook("verify")
        try:
            with open(part, "rb") as f:
                info.verify_length_and_hashes(f)
        except tuf_exc.LengthOrHashMismatchError as e:
            part.unlink(missing_ok=True)  # never keep bytes that failed verification
            error = VerificationError(f"{release.target}: the downloaded archive does not match the signed "
                                      f"length and hashes ({e}); discarded")
            self.journal.fail(txn, "verify", str(error))
            raise error from e
        archive = self.staging_dir / f"{release.sha256}.tar"
        os.replace(part, archive)
        self.journal.end(txn, "verify")
        return archive

    def _install(self, txn: str, release: Release, archive: Path) -> Path:
        self.journal.begin(txn, "install", sha256=release.sha256, release=release.release)
        try:
            dest = self.store.install(release, archive, then=lambda: self._pinned(release))
        except UpdateError as e:  # a hostile or broken archive, or a manifest other than the pinned one
            self.journal.fail(txn, "install", str(e))
            raise
        except expected_errors() as e:
            error = wrap_error(e, f"install of {release.label}")  # disk full -> DownloadError
            self.journal.fail(txn, "install", str(error))
            raise error from e
        self.journal.end(txn, "install")
        return dest

    def _pinned(self, release: Release) -> None:
        """After unpacking: the manifest must be the one the release pinned (when it pins a digest)."""
        if release.digest:
            try:
                load_bundle(self.store_dir / release.sha256, verify=False, expected_digest=release.digest)
            except (BundleError, InputError) as e:
                raise VerificationError(f"{release.label}: the unpacked bundle is not the one the release pins "
                                        f"({e})") from e
        self._hook("install")

    def _health(self, txn: str, release: Release, path: Path) -> dict:
        """Verify, load on the preferred backend, self-test, latency budget; raise VerificationError."""
        self.journal.begin(txn, "health", sha256=release.sha256, release=release.release)
        try:
            backends = self._device_backends()
            if not backends:
                raise BackendError(f"none of the backends {list(self.backends)} is available on this device")
            health = health_check(path, backends=backends, backend_options=self.backend_options,
                                  runs=self.health_runs, latency_budget_ms=self.latency_budget_ms,
                                  expected_digest=release.digest, on_loaded=lambda: self._hook("health"))
        except (BundleError, BackendError, InputError) as e:
            error = VerificationError(f"health check of {release.label} failed: {e}")
            self.journal.fail(txn, "health", str(error))
            raise error from e
        self.journal.end(txn, "health", **{k: v for k, v in health.items() if k != "backend"})
        return health

    def _commit(self, txn: str, release: Release, previous_sha: str | None) -> None:
        self.journal.begin(txn, "commit", to_sha=release.sha256, from_sha=previous_sha,
                           release=release.release)
        self._hook("commit")
        self.store.point("current", release.sha256)
        self._hook("commit:switched")
        if previous_sha is not None:
            self.store.point("previous", previous_sha)
        self.journal.end(txn, "commit")

    def _reject(self, txn: str, release: Release, reason: str, *, committed_from: str | None) -> None:
        """Roll a release back and record it as bad. ``committed_from``: None before the commit, else the
        sha ``current`` pointed to before it ("" when there was none)."""
        self.journal.begin(txn, "rollback", sha256=release.sha256, release=release.release,
                           from_sha=committed_from)
        if committed_from is not None:
            self.store.point("current", committed_from or None)
        self.store.mark_bad(release.model, release.version, release.release, release.sha256, reason)
        self.store.clean_store()
        self.journal.end(txn, "rollback")

    # -------------------------------------------------------------------------------- helpers

    def _recover_locked(self) -> list[str]:
        return recover(self.journal, self.store, model=self.model, max_health_crashes=self.max_health_crashes)

    def _running(self) -> str | None:
        rel = self.current_release()
        return None if rel is None else f"{rel.model}@{rel.version}"

    def _hook(self, point: str) -> None:
        hook = self._hooks.get(point)
        if hook is not None:
            hook()

    def _read_root(self, root: str | os.PathLike | bytes | None) -> bytes:
        if isinstance(root, bytes):
            return root
        path = Path(root) if root is not None else self.state_dir / "root.json"
        try:
            return path.read_bytes()
        except OSError as e:
            raise UpdateError(f"{path}: cannot read the trusted root metadata ({e}); provision the device "
                              f"with the repository's root.json") from e

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self.store.exclusive():
            yield

    def _progress(self, state: str, release: Release, **fields: Any) -> None:
        self.status.report(state, model=release.model, version=release.version, release=release.release,
                           running=self._running(), **fields)

    def _report(self, outcome: UpdateOutcome) -> None:
        rel = outcome.release
        self.status.report(
            outcome.action, model=rel.model if rel else self.model, version=rel.version if rel else None,
            release=rel.release if rel else None, running=outcome.running, health=outcome.health,
            error=None if outcome.error is None else str(outcome.error),
            error_type=None if outcome.error is None else type(outcome.error).__name__,
            device_class=self.device_class, cohort=self.cohort,
        )
