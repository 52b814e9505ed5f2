"""The on-device update agent: signed releases in, a health-checked model out, the old one kept.

Use it in this order (``fusionedge fleet agent`` does the same from the command line)::

    agent = Agent("https://updates.example.com/fleet", "cam-042", "/var/lib/fusionedge",
                  device_class="jetson-orin", model="student", root="/etc/fusionedge/root.json")
    agent.recover()              # after a restart: bring the state folder to a consistent point
    outcome = agent.check_once()  # one check: refresh -> rollout -> download -> verify -> install
                                  #   -> [prebuilt engine] -> health check -> commit (or roll back)
    print(outcome.action, outcome.release, outcome.error)

Every check is one transaction in the crash-safe journal (:mod:`.journal`); every step is idempotent,
so ``kill -9`` at any point followed by :meth:`Agent.recover` leaves either the old model or the new
one fully committed, never a mix. The state folder::

    STATE/ tuf/              TUF metadata cache (python-tuf's Updater; the trust anchor is the embedded root)
           staging/          downloads in progress (<sha256>.part) and verified archives (<sha256>.tar)
           store/<sha256>/   unpacked, verified bundles; store/<sha256>.release.json says which release
                             (+ engines/<fingerprint>.plan: a verified prebuilt TensorRT plan, if any)
           current -> store/<sha256>    the model the device runs (switched atomically)
           previous -> store/<sha256>   the one before it (kept for rollback)
           journal.jsonl  status.json  bad_releases.json  lock

What is trusted and when:

* Metadata: only what python-tuf's ``Updater`` verified (signatures, thresholds, expiry, version
  rollback, snapshot/targets consistency), starting from the embedded root. Nothing here checks a
  signature by hand.
* The rollout record ``rollouts/<model>.json`` and the archive ``models/<model>/<version>/bundle.tar``
  are TUF targets: their bytes are used only after ``TargetFile.verify_length_and_hashes`` passed.
  The archive is fetched with a resumable ranged download bounded by the signed length, a read
  timeout and an overall deadline; the bytes in ``staging/`` are never trusted before verification.
* A prebuilt engine (TensorRT plan) is fetched only when the agent has an ``engine_fingerprint``
  callable and the release's signed ``custom.fusionedge.engines`` map lists this device's fingerprint.
  The plan is a TUF target like the archive: a ranged download into ``staging/<sha256>.part`` bounded
  by its signed length, ``verify_length_and_hashes``, then a rename into
  ``store/<sha256>/engines/<fingerprint>.plan`` — after the install, before the health check (journal
  step ``engine``). A failed engine download is a failed update (``failed``, nothing committed, the
  uncommitted install removed) but does not mark the release bad: it is usually transient and the
  next check retries (the partial plan resumes; the archive is fetched again). No listed engine:
  the backend builds one on first load, as before.
* The release's ``custom.fusionedge`` block must agree with the rollout record (model, version,
  release counter) — a mix of records from different releases is refused — and the release counter
  must be higher than the installed one (no downgrade, even to a validly signed older release).
* Compatibility: device class, minimum SDK version, at least one required backend available here.
* Health check before commit: the bundle verifies (hashes), loads on the device's preferred backend
  (a fallback counts as a failure: a model that silently runs ten times slower is not healthy), passes
  its golden self-test within the manifest tolerance, and meets the latency budget.

A release that fails its health check (or whose hot swap fails after commit) is rolled back and
recorded in ``bad_releases.json``; it is never retried. The model in use is never deleted.

This module is part of the device runtime: no torch, no ``fusionedge.export``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from fusionedge.sdk.bundle import Bundle, fsync_dir, load_bundle, write_json_atomic
from fusionedge.sdk.bundle_archive import unpack_bundle
from fusionedge.sdk.errors import (
    BackendError,
    BundleError,
    DownloadError,
    FusionEdgeError,
    InputError,
    UpdateError,
    VerificationError,
)
from fusionedge.sdk.fleet.journal import Journal, Transaction, utc_now
from fusionedge.sdk.fleet.status import MqttSecurity, StatusReporter, status_topic

__all__ = ["Agent", "UpdateOutcome", "Release", "Rollout", "ACTIONS", "HOOK_POINTS", "bucket", "is_eligible"]

log = logging.getLogger(__name__)

#: What a check can end in (``UpdateOutcome.action``).
ACTIONS = ("updated", "up-to-date", "no-rollout", "paused", "not-eligible", "incompatible", "skipped-bad",
           "rolled-back", "failed")
#: Points where ``fault_hooks`` are called (fault-injection seams for tests: kill -9, ENOSPC, ...).
HOOK_POINTS = ("download:chunk", "verify", "install", "engine:chunk", "engine", "health", "commit",
               "commit:switched")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FINGERPRINT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # as fleet_repo.publish accepts
_CHUNK = 1 << 16
_MAX_SIDECAR_BYTES = 1 << 20  # an engine sidecar is a small JSON file
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


# ------------------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Rollout:
    """A verified rollout record (``rollouts/<model>.json``)."""

    model: str
    version: str
    release: int
    percent: float  # 0..100
    cohorts: tuple[str, ...]
    paused: bool
    salt: str
    seq: int
    issued: str


@dataclass(frozen=True)
class Release:
    """A release as the signed targets metadata describes it."""

    model: str
    version: str
    release: int  # the per-model counter, monotonically increasing
    sha256: str  # of bundle.tar: names the store entry
    length: int  # bytes of bundle.tar
    target: str  # TUF target path, e.g. models/student/0.2.0/bundle.tar
    compat: dict = field(default_factory=dict)
    engines: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``model@version (release N)`` for messages."""
        return f"{self.model}@{self.version} (release {self.release})"

    def to_dict(self) -> dict:
        """JSON-safe fields."""
        return asdict(self)


@dataclass(frozen=True)
class UpdateOutcome:
    """What one :meth:`Agent.check_once` did.

    ``action`` is one of :data:`ACTIONS`; ``error`` holds the typed error for ``failed``,
    ``rolled-back`` and ``incompatible`` (a :class:`DownloadError` or :class:`VerificationError`);
    ``running`` is ``model@version`` of the release ``current`` points to after the check.
    With an ``engine_fingerprint`` callable, ``health["engine"]`` says what the engine step did:
    ``{"fingerprint": str | None, "prebuilt": bool}`` (+ ``"error"`` when no fingerprint could be had).
    """

    action: str
    release: Release | None = None
    running: str | None = None
    error: UpdateError | None = None
    health: dict = field(default_factory=dict)  # self-test error, latencies (ms), backend
    timings: dict = field(default_factory=dict)  # ms per step

    @property
    def ok(self) -> bool:
        """True when the check ended without an error."""
        return self.error is None

    def to_dict(self) -> dict:
        """A JSON-safe dict (the error as ``{type, message}``)."""
        return {
            "action": self.action,
            "release": self.release.to_dict() if self.release else None,
            "running": self.running,
            "error": None if self.error is None else {"type": type(self.error).__name__,
                                                      "message": str(self.error)},
            "health": dict(self.health),
            "timings": {k: round(float(v), 3) for k, v in self.timings.items()},
        }


# ------------------------------------------------------------------------------------- eligibility


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


# ------------------------------------------------------------------------------------------ HTTP


class _Fetcher:
    """Bounded HTTP for metadata (through python-tuf) and ranged bundle downloads (urllib3).

    Every request has a connect/read timeout (the longest silence tolerated) and an overall deadline;
    nothing is retried after bytes started flowing. Used by tuf through :meth:`tuf_fetcher`.
    """

    def __init__(self, timeout_s: float, deadline_s: float) -> None:
        import urllib3

        self.timeout_s = float(timeout_s)
        self.deadline_s = float(deadline_s)
        self.last_url: str | None = None  # names the file in error messages
        self._urllib3 = urllib3
        retries = urllib3.Retry(total=2, connect=2, read=0, status=0, other=0, redirect=3,
                                raise_on_redirect=True, raise_on_status=False)
        self.pool = urllib3.PoolManager(retries=retries,
                                        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
                                        headers={"User-Agent": "fusionedge-agent"})

    def request(self, url: str, headers: Mapping[str, str] | None = None) -> Any:
        """Start a GET; return the streaming response (raise tuf download errors on failure)."""
        from tuf.api import exceptions as tuf_exc

        self.last_url = url
        try:
            return self.pool.request("GET", url, headers=dict(headers or {}), preload_content=False)
        except self._urllib3.exceptions.MaxRetryError as e:
            if isinstance(e.reason, self._urllib3.exceptions.TimeoutError):
                raise tuf_exc.SlowRetrievalError(f"{url}: no response within {self.timeout_s:g} s") from e
            raise tuf_exc.DownloadError(f"{url}: {e.reason}") from e
        except self._urllib3.exceptions.TimeoutError as e:
            raise tuf_exc.SlowRetrievalError(f"{url}: no response within {self.timeout_s:g} s") from e
        except self._urllib3.exceptions.HTTPError as e:
            raise tuf_exc.DownloadError(f"{url}: {e}") from e

    def chunks(self, response: Any, url: str, deadline: float) -> Iterator[bytes]:
        """Yield the body in chunks; a silence longer than the timeout or the deadline raises."""
        from tuf.api import exceptions as tuf_exc

        try:
            while True:
                # read1 returns what has arrived (up to a chunk), so the bytes before a dropped
                # connection are kept for resuming, where read(n) would discard a short last read
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                if time.monotonic() > deadline:
                    raise tuf_exc.SlowRetrievalError(f"{url}: not finished within {self.deadline_s:g} s")
                yield chunk
        except self._urllib3.exceptions.TimeoutError as e:
            raise tuf_exc.SlowRetrievalError(f"{url}: stalled (no data for {self.timeout_s:g} s)") from e
        except self._urllib3.exceptions.HTTPError as e:
            raise tuf_exc.DownloadError(f"{url}: connection failed mid-transfer ({e})") from e
        finally:
            response.release_conn()

    def tuf_fetcher(self) -> Any:
        """A python-tuf ``FetcherInterface`` using this fetcher's timeouts and deadline."""
        from tuf.api import exceptions as tuf_exc
        from tuf.ngclient.fetcher import FetcherInterface

        outer = self

        class _TufFetcher(FetcherInterface):
            def _fetch(self, url: str) -> Iterator[bytes]:
                response = outer.request(url)
                if response.status >= 400:
                    response.release_conn()
                    raise tuf_exc.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
                return outer.chunks(response, url, time.monotonic() + outer.deadline_s)

        return _TufFetcher()


# --------------------------------------------------------------------------------------- helpers


def _switch_link(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically: a temp symlink beside it, ``os.replace``, fsync the folder."""
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}.tmp")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


def _version_tuple(text: str, what: str) -> tuple[int, ...]:
    parts = re.match(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(text))
    if parts is None:
        raise VerificationError(f"{what}: {text!r} is not a version (expected e.g. 0.2.0)")
    return tuple(int(p or 0) for p in parts.groups())


def _sdk_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("fusionedge")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0.0.0"


def _expected_errors() -> tuple[type[BaseException], ...]:
    """What the network, python-tuf and the disk raise for a failed step (other exceptions are bugs)."""
    from tuf.api import exceptions as tuf_exc

    return (tuf_exc.RepositoryError, tuf_exc.DownloadError, OSError)


def _wrap_tuf(e: Exception, what: str) -> UpdateError:
    """Map python-tuf / OS errors to the FusionEdge tree (the caller chains ``from e``)."""
    from tuf.api import exceptions as tuf_exc

    if isinstance(e, tuf_exc.ExpiredMetadataError):
        return VerificationError(f"{what}: expired metadata ({e}); the repository must refresh it (a freeze "
                                 f"attack or a stalled release server)")
    if isinstance(e, tuf_exc.UnsignedMetadataError):
        return VerificationError(f"{what}: metadata not signed by enough trusted keys ({e})")
    if isinstance(e, tuf_exc.BadVersionNumberError):
        return VerificationError(f"{what}: metadata version rollback or mix-and-match ({e})")
    if isinstance(e, tuf_exc.LengthOrHashMismatchError):
        return VerificationError(f"{what}: length or hash mismatch ({e})")
    if isinstance(e, tuf_exc.RepositoryError):
        return VerificationError(f"{what}: metadata failed verification ({type(e).__name__}: {e})")
    if isinstance(e, tuf_exc.DownloadLengthMismatchError):
        return DownloadError(f"{what}: the server sent more bytes than allowed ({e})")
    if isinstance(e, tuf_exc.SlowRetrievalError):
        return DownloadError(f"{what}: download too slow or stalled ({e})")
    if isinstance(e, tuf_exc.DownloadError):
        return DownloadError(f"{what}: download failed ({e})")
    if isinstance(e, OSError) and e.errno in _DISK_FULL:
        return DownloadError(f"{what}: disk full ({e})")
    return UpdateError(f"{what}: local file error ({e})")


def _require(obj: Mapping, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key) if isinstance(obj, Mapping) else None
    if value is None or not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise VerificationError(f"{where}: field {key!r} missing or of the wrong type (got {value!r})")
    return value


def _parse_rollout(data: bytes, model: str) -> Rollout:
    where = f"rollouts/{model}.json"
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VerificationError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise VerificationError(f"{where}: expected a JSON object")
    if _require(obj, "model", str, where) != model:
        raise VerificationError(f"{where}: names model {obj['model']!r}, expected {model!r}")
    version = _require(obj, "version", str, where)
    if not _VERSION.match(version) or ".." in version:
        raise VerificationError(f"{where}: invalid version {version!r} (path traversal in target names "
                                f"refused)")
    release = _require(obj, "release", int, where)
    percent = _require(obj, "percent", (int, float), where)
    if isinstance(percent, bool) or not 0 <= percent <= 100 or release < 1:
        raise VerificationError(f"{where}: percent must be in [0, 100] and release >= 1")
    cohorts = obj.get("cohorts", [])
    if not isinstance(cohorts, list) or not all(isinstance(c, str) for c in cohorts):
        raise VerificationError(f"{where}: field 'cohorts' must be a list of strings")
    paused = obj.get("paused", False)
    if not isinstance(paused, bool):
        raise VerificationError(f"{where}: field 'paused' must be true or false")
    salt = _require(obj, "salt", str, where)
    if not salt:
        raise VerificationError(f"{where}: empty salt")
    seq = obj.get("seq", 0)
    return Rollout(model=model, version=version, release=release, percent=float(percent),
                   cohorts=tuple(cohorts), paused=paused, salt=salt,
                   seq=int(seq) if isinstance(seq, int) else 0, issued=str(obj.get("issued", "")))


# ------------------------------------------------------------------------------------------ Agent


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
        timeout_s: the longest silence tolerated from the server (connect and read), seconds.
        min_rate_bps: the slowest overall download accepted; the deadline of a download is
            ``timeout_s + length / min_rate_bps``.
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
        for label, value in (("model", model), ("device_class", device_class)):
            if not isinstance(value, str) or not _NAME.match(value):
                raise InputError(f"{label} must be letters, digits, '.', '_' or '-', got {value!r}")
        if cohort is not None and (not isinstance(cohort, str) or not cohort):
            raise InputError(f"cohort must be a non-empty string or None, got {cohort!r}")
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

        self.state_dir = Path(state_dir)
        self.tuf_dir = self.state_dir / "tuf"
        self.staging_dir = self.state_dir / "staging"
        self.store_dir = self.state_dir / "store"
        try:
            for d in (self.tuf_dir, self.staging_dir, self.store_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UpdateError(f"{self.state_dir}: cannot create the state folder ({e})") from e
        self._root = self._read_root(root)
        self.journal = Journal(self.state_dir / "journal.jsonl")
        self.status = StatusReporter(device_id, self.state_dir / "status.json", mqtt=mqtt,
                                     security=mqtt_security)
        self._fetcher = _Fetcher(self.timeout_s, self.timeout_s + 10 * 2**20 / self.min_rate_bps)

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
            on_outcome: Callable[[UpdateOutcome], None] | None = None) -> None:
        """Check every ``interval_s`` seconds until ``stop`` (a ``threading.Event``) is set.

        Args:
            interval_s: seconds between the start of two checks (> 0).
            max_checks: stop after this many checks (None: run until stopped).
            stop: an object with ``is_set()`` and ``wait(seconds)``, e.g. ``threading.Event``.
            on_outcome: called with each outcome (e.g. to print it).

        Raises:
            InputError: ``interval_s`` <= 0.
        """
        import threading

        if not interval_s > 0:
            raise InputError(f"interval_s must be > 0, got {interval_s!r}")
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
            stop.wait(max(0.0, interval_s - (time.monotonic() - started)))

    @property
    def current_path(self) -> Path | None:
        """The bundle folder ``current`` points to, or None before the first install."""
        sha = self._link_sha("current")
        return None if sha is None else self.store_dir / sha

    def current_release(self) -> Release | None:
        """The release ``current`` points to (from its ``store/<sha>.release.json``), or None."""
        sha = self._link_sha("current")
        return None if sha is None else self._read_release(sha)

    def bad_releases(self) -> list[dict]:
        """Releases rolled back here (never retried): ``[{model, version, release, sha256, reason, ts}]``."""
        path = self.state_dir / "bad_releases.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, json.JSONDecodeError) as e:
            log.warning("%s is unreadable (%s); treating it as empty", path, e)
            return []
        return list(data.get("releases", [])) if isinstance(data, dict) else []

    def close(self) -> None:
        """Flush and close the status publisher."""
        self.status.close()

    def __enter__(self) -> "Agent":
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
        if self._is_bad(rollout.release):  # said before "paused": the device's verdict on this release
            return UpdateOutcome("skipped-bad", release=self._rollout_release(rollout), running=running,
                                 timings=timings)
        if rollout.paused:
            return UpdateOutcome("paused", release=self._rollout_release(rollout), running=running,
                                 timings=timings)
        if not is_eligible(rollout, self.device_id, self.cohort):
            return UpdateOutcome("not-eligible", release=self._rollout_release(rollout), running=running,
                                 timings=timings)
        info, release = self._read_release_target(updater, rollout)
        self._attempt = release
        current = self.current_release()
        if current is not None and current.sha256 == release.sha256:
            return UpdateOutcome("up-to-date", release=release, running=running, timings=timings)
        if current is not None and release.release <= current.release:
            raise VerificationError(
                f"{release.label} is not newer than the installed {current.label}: rollback to an older "
                f"release refused"
            )
        problem = self._incompatibility(release)
        if problem is not None:
            return UpdateOutcome("incompatible", release=release, running=running, timings=timings,
                                 error=VerificationError(f"{release.label}: {problem}"))

        self._progress("downloading", release)
        t0 = time.perf_counter()
        part = self._download(txn, release)
        timings["download"] = (time.perf_counter() - t0) * 1e3
        self._progress("verifying", release)
        t0 = time.perf_counter()
        archive = self._verify(txn, info, release, part)
        timings["verify"] = (time.perf_counter() - t0) * 1e3
        self._progress("installing", release)
        t0 = time.perf_counter()
        path = self._install(txn, release, archive)
        timings["install"] = (time.perf_counter() - t0) * 1e3
        engine: dict | None = None
        if self.engine_fingerprint is not None:
            t0 = time.perf_counter()
            # a failure removed the uncommitted install and raised (-> "failed", not marked bad)
            engine = self._engine(txn, updater, release, path, self.engine_fingerprint)
            timings["engine"] = (time.perf_counter() - t0) * 1e3
        self._progress("health-check", release)
        t0 = time.perf_counter()
        try:
            health = self._health(txn, release, path)
        except VerificationError as e:
            self._reject(txn, release, str(e), committed_from=None)
            timings["health"] = (time.perf_counter() - t0) * 1e3
            return UpdateOutcome("rolled-back", release=release, running=self._running(), error=e,
                                 health={} if engine is None else {"engine": engine}, timings=timings)
        timings["health"] = (time.perf_counter() - t0) * 1e3
        if engine is not None:
            health["engine"] = engine
        self._progress("committing", release, health=health)
        t0 = time.perf_counter()
        previous_sha = current.sha256 if current is not None else None
        self._commit(txn, release, previous_sha)
        timings["commit"] = (time.perf_counter() - t0) * 1e3
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
        self._clean_store()
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
        except _expected_errors() as e:
            last = self._fetcher.last_url or ""
            error = _wrap_tuf(e, f"refresh ({last.removeprefix(self.url + '/') or 'metadata'})")
            self.journal.fail(txn, "refresh", str(error))
            raise error from e
        self.journal.end(txn, "refresh")
        return updater

    def _read_rollout(self, updater: Any) -> Rollout | None:
        path = f"rollouts/{self.model}.json"
        try:
            info = updater.get_targetinfo(path)
            if info is None:
                return None
            if info.length > 1 << 20:
                raise VerificationError(f"{path}: signed length {info.length} is too large for a rollout "
                                        f"record")
            data = self._fetch_small_target(info)
        except UpdateError:
            raise
        except _expected_errors() as e:
            raise _wrap_tuf(e, path) from e
        return _parse_rollout(data, self.model)

    def _fetch_small_target(self, info: Any) -> bytes:
        """Download a small target into memory (bounded by its signed length) and verify it."""
        from tuf.api import exceptions as tuf_exc

        url = self._target_url(info)
        response = self._fetcher.request(url)
        if response.status >= 400:
            response.release_conn()
            raise tuf_exc.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        data = bytearray()
        for chunk in self._fetcher.chunks(response, url, time.monotonic() + self._fetcher.deadline_s):
            data += chunk
            if len(data) > info.length:
                raise tuf_exc.DownloadLengthMismatchError(f"{url}: more than the signed {info.length} bytes")
        info.verify_length_and_hashes(bytes(data))
        return bytes(data)

    def _target_url(self, info: Any) -> str:
        sha = info.hashes.get("sha256")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise VerificationError(f"{info.path}: the signed metadata gives no sha256 hash")
        folder, sep, name = info.path.rpartition("/")
        return f"{self.url}/targets/{folder}{sep}{sha}.{name}"

    def _rollout_release(self, rollout: Rollout) -> Release:
        return Release(model=rollout.model, version=rollout.version, release=rollout.release, sha256="",
                       length=0, target=f"models/{rollout.model}/{rollout.version}/bundle.tar")

    def _read_release_target(self, updater: Any, rollout: Rollout) -> tuple[Any, Release]:
        path = f"models/{self.model}/{rollout.version}/bundle.tar"
        try:
            info = updater.get_targetinfo(path)
        except _expected_errors() as e:
            raise _wrap_tuf(e, path) from e
        if info is None:
            raise VerificationError(f"{path}: the rollout names a release that no signed targets metadata "
                                    f"lists")
        where = f"{path}: custom.fusionedge"
        custom = info.custom if isinstance(info.custom, dict) else {}
        fe = custom.get("fusionedge")
        if not isinstance(fe, dict):
            raise VerificationError(f"{where}: missing; not a FusionEdge release")
        sha = info.hashes.get("sha256")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise VerificationError(f"{path}: the signed metadata gives no sha256 hash")
        named = (_require(fe, "model", str, where), _require(fe, "version", str, where))
        if named != (self.model, rollout.version):
            raise VerificationError(f"{where}: names {fe['model']}@{fe['version']}, but the rollout names "
                                    f"{self.model}@{rollout.version} (mix-and-match refused)")
        release_no = _require(fe, "release", int, where)
        if release_no != rollout.release:
            raise VerificationError(f"{where}: release {release_no}, but the rollout record says release "
                                    f"{rollout.release} (mix-and-match refused)")
        if fe.get("bundle_sha256") != sha:
            raise VerificationError(f"{where}: bundle_sha256 does not match the signed hash of {path}")
        compat = _require(fe, "compat", dict, where)
        if info.length > self.max_bundle_bytes:
            raise VerificationError(f"{path}: {info.length} bytes is more than this device accepts "
                                    f"({self.max_bundle_bytes})")
        engines = fe.get("engines") or {}
        if not isinstance(engines, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in engines.items()):
            raise VerificationError(f"{where}: 'engines' must map device fingerprints to target paths")
        release = Release(model=self.model, version=rollout.version, release=release_no, sha256=sha,
                          length=int(info.length), target=path, compat=dict(compat), engines=dict(engines))
        return info, release

    def _incompatibility(self, release: Release) -> str | None:
        compat = release.compat
        classes = compat.get("device_classes")
        if not isinstance(classes, list) or self.device_class not in classes:
            return f"built for device classes {classes!r}, not {self.device_class!r}"
        min_sdk = compat.get("min_sdk")
        if min_sdk is not None and (_version_tuple(self.sdk_version, "sdk version")
                                    < _version_tuple(min_sdk, "min_sdk")):
            return f"needs fusionedge >= {min_sdk}, this device runs {self.sdk_version}"
        wanted = compat.get("backends") or []
        if not isinstance(wanted, list):
            return f"compat.backends must be a list, got {wanted!r}"
        if wanted and not set(wanted) & set(self._device_backends()):
            have = self._device_backends() or "none"
            return f"needs one of the backends {wanted}, this device has {have} available"
        return None

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
            got = self._fetch_ranged(url, release.length, part, release.label, "download:chunk")
        except _expected_errors() as e:
            error = _wrap_tuf(e, f"download of {release.label}")
            if isinstance(e, OSError) and e.errno in _DISK_FULL:
                part.unlink(missing_ok=True)  # free the space; nothing was installed
            self.journal.fail(txn, "download", str(error))
            raise error from e
        self.journal.end(txn, "download", bytes=got)
        return part

    def _fetch_ranged(self, url: str, length: int, part: Path, desc: str, hook: str) -> int:
        """Download ``url`` into ``part`` (resuming what it holds), never beyond the signed ``length``.

        The bytes are unverified: the caller checks them against the signed hashes before any use.
        """
        from tuf.api import exceptions as tuf_exc

        have = part.stat().st_size if part.exists() else 0
        if have > length:
            part.unlink()
            have = 0
        if have == length:
            return have
        response = self._fetcher.request(url, {"Range": f"bytes={have}-"} if have else None)
        if response.status == 416 and have:  # our partial file is not a prefix the server knows: restart
            response.release_conn()
            part.unlink()
            return self._fetch_ranged(url, length, part, desc, hook)
        if response.status >= 400:
            response.release_conn()
            raise tuf_exc.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        if response.status == 206:
            start = re.match(r"^bytes (\d+)-", response.headers.get("Content-Range", ""))
            if start is None or int(start.group(1)) != have:
                response.release_conn()
                raise tuf_exc.DownloadError(f"{url}: the server answered a range request with an unexpected "
                                            f"Content-Range {response.headers.get('Content-Range')!r}")
            mode = "ab"
        else:  # 200: the server ignores Range, start over
            have, mode = 0, "wb"
        deadline = time.monotonic() + self.timeout_s + length / self.min_rate_bps
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=length, initial=have, unit="B", unit_scale=True, desc=desc, file=None,
                       leave=False)
        try:
            with open(part, mode) as f:
                for chunk in self._fetcher.chunks(response, url, deadline):
                    if have + len(chunk) > length:
                        f.close()
                        part.unlink(missing_ok=True)
                        raise tuf_exc.DownloadLengthMismatchError(
                            f"{url}: the server sent more than the signed {length} bytes"
                        )
                    f.write(chunk)
                    have += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                    self._hook(hook)
                f.flush()
                os.fsync(f.fileno())
        finally:
            if bar is not None:
                bar.close()
        if have < length:
            raise tuf_exc.DownloadError(f"{url}: the connection ended after {have} of {length} bytes "
                                        f"(the partial download is kept and resumes next time)")
        return have

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
        dest = self.store_dir / release.sha256
        self.journal.begin(txn, "install", sha256=release.sha256, release=release.release)
        try:
            if dest.exists() and release.sha256 not in self._kept():
                shutil.rmtree(dest)  # a leftover of an interrupted attempt: redo it from the verified archive
            unpack_bundle(archive, dest, max_bytes=release.length)
            write_json_atomic(self.store_dir / f"{release.sha256}.release.json",
                              {**release.to_dict(), "installed": utc_now()})
            self._hook("install")
        except (UpdateError, *_expected_errors()) as e:
            if release.sha256 not in self._kept():
                shutil.rmtree(dest, ignore_errors=True)
            (self.store_dir / f"{release.sha256}.release.json").unlink(missing_ok=True)
            if isinstance(e, UpdateError):  # a hostile or broken archive (unpack_bundle's checks)
                self.journal.fail(txn, "install", str(e))
                raise
            error = _wrap_tuf(e, f"install of {release.label}")  # disk full -> DownloadError
            self.journal.fail(txn, "install", str(error))
            raise error from e
        finally:
            archive.unlink(missing_ok=True)
        self.journal.end(txn, "install")
        return dest

    def _device_engine_fingerprint(self, fingerprint_of: Callable[[Bundle], str | None],
                                   path: Path) -> tuple[str | None, str | None]:
        """``(fingerprint, problem)`` of this device for the installed bundle at ``path``."""
        try:
            fingerprint = fingerprint_of(load_bundle(path, verify=False))  # the install verified it
        except FusionEdgeError as e:
            problem = f"no engine fingerprint for this device ({type(e).__name__}: {e})"
            log.warning("%s; going on without a prebuilt engine", problem)
            return None, problem
        if fingerprint is not None and not (isinstance(fingerprint, str) and _FINGERPRINT.match(fingerprint)):
            problem = (f"engine_fingerprint returned {fingerprint!r}, expected None or letters, digits, '.', "
                       f"'_' or '-'")
            log.warning("%s; going on without a prebuilt engine", problem)
            return None, problem
        return fingerprint, None

    def _engine_target(self, updater: Any, release: Release, fingerprint: str, path: str) -> Any:
        """The signed TargetFile of the release's plan for ``fingerprint``; raise VerificationError."""
        expected = f"models/{release.model}/{release.version}/engines/{fingerprint}.plan"
        if path != expected:
            raise VerificationError(f"{release.target}: custom.fusionedge.engines names {path!r} for "
                                    f"fingerprint {fingerprint!r}, expected {expected!r}")
        try:
            info = updater.get_targetinfo(path)
        except _expected_errors() as e:
            raise _wrap_tuf(e, path) from e
        if info is None:
            raise VerificationError(f"{path}: the release lists this engine but no signed targets metadata "
                                    f"does")
        if not isinstance(info.hashes.get("sha256"), str) or not _SHA256.match(info.hashes["sha256"]):
            raise VerificationError(f"{path}: the signed metadata gives no sha256 hash")
        if info.length > self.max_bundle_bytes:
            raise VerificationError(f"{path}: {info.length} bytes is more than this device accepts "
                                    f"({self.max_bundle_bytes})")
        return info

    def _engine(self, txn: str, updater: Any, release: Release, path: Path,
                fingerprint_of: Callable[[Bundle], str | None]) -> dict:
        """Put the release's prebuilt plan for this device into ``<bundle>/engines/<fingerprint>.plan``.

        Runs after the install and before the health check. Without a matching engine nothing is
        fetched or journaled. A failure removes the uncommitted install and raises (DownloadError or
        VerificationError); the release is not marked bad, so the next check tries again.
        """
        from tuf.api import exceptions as tuf_exc

        fingerprint, problem = self._device_engine_fingerprint(fingerprint_of, path)
        target = release.engines.get(fingerprint) if fingerprint is not None else None
        if target is None:
            if fingerprint is not None:
                log.info("%s lists no prebuilt engine for fingerprint %s; the backend builds one on first "
                         "load", release.label, fingerprint)
            return {"fingerprint": fingerprint, "prebuilt": False, **({"error": problem} if problem else {})}
        try:
            info = self._engine_target(updater, release, fingerprint, target)
        except UpdateError as e:
            self.journal.begin(txn, "engine", sha256=release.sha256, release=release.release,
                               fingerprint=fingerprint, target=target)
            self.journal.fail(txn, "engine", str(e))
            self._discard_install(release)
            raise
        engine_sha, length = info.hashes["sha256"], int(info.length)
        part = self.staging_dir / f"{engine_sha}.part"
        final = path / "engines" / f"{fingerprint}.plan"
        self.journal.begin(txn, "engine", sha256=release.sha256, release=release.release,
                           fingerprint=fingerprint, target=target, engine_sha256=engine_sha, length=length)
        self._progress("downloading-engine", release, fingerprint=fingerprint)
        try:
            got = self._fetch_ranged(self._target_url(info), length, part, f"engine {fingerprint}",
                                     "engine:chunk")
            try:
                with open(part, "rb") as f:
                    info.verify_length_and_hashes(f)
            except tuf_exc.LengthOrHashMismatchError as e:
                part.unlink(missing_ok=True)  # never keep bytes that failed verification
                raise VerificationError(f"{target}: the downloaded plan does not match the signed length and "
                                        f"hashes ({e}); discarded") from e
            self._hook("engine")
            self._place(part, final)
            sidecar = self._engine_sidecar(updater, target, final)
        except UpdateError as e:
            self.journal.fail(txn, "engine", str(e))
            self._discard_install(release)
            raise
        except _expected_errors() as e:
            error = _wrap_tuf(e, f"engine {fingerprint} of {release.label}")
            if isinstance(e, OSError) and e.errno in _DISK_FULL:
                part.unlink(missing_ok=True)  # free the space
            self.journal.fail(txn, "engine", str(error))
            self._discard_install(release)
            raise error from e
        self.journal.end(txn, "engine", bytes=got, path=f"engines/{final.name}", sidecar=sidecar)
        return {"fingerprint": fingerprint, "prebuilt": True, "sidecar": sidecar}

    def _engine_sidecar(self, updater: Any, plan_target: str, plan: Path) -> bool:
        """Fetch the plan's signed sidecar (``engines/<fingerprint>.json``) next to it, when published.

        The TensorRT backend loads a plan only through its sidecar (full fingerprint + plan sha256).
        tuf's download_target verifies length and hashes; it is written to staging, then moved.

        Returns:
            Whether a sidecar was placed.
        """
        side_target = plan_target[: -len(".plan")] + ".json"
        info = updater.get_targetinfo(side_target)
        if info is None:
            log.warning("%s has no signed sidecar: a TensorRT backend will not load it", plan_target)
            return False
        if info.length > _MAX_SIDECAR_BYTES:
            raise VerificationError(f"{side_target}: {info.length} bytes is too large for an engine sidecar")
        staged = Path(updater.download_target(info, str(self.staging_dir / f".{plan.stem}.json.part")))
        self._place(staged, plan.with_suffix(".json"))
        return True

    @staticmethod
    def _place(src: Path, dest: Path) -> None:
        """Move a verified file into the store atomically (a copy when staging is another filesystem)."""
        dest.parent.mkdir(exist_ok=True)
        try:
            os.replace(src, dest)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                with open(src, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout, _CHUNK * 16)
                    fout.flush()
                    os.fsync(fout.fileno())
                os.replace(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            src.unlink()
        fsync_dir(dest.parent)
        fsync_dir(dest.parent.parent)

    def _discard_install(self, release: Release) -> None:
        """Remove an uncommitted store entry (never one that ``current`` or ``previous`` points to)."""
        if release.sha256 not in self._kept():
            shutil.rmtree(self.store_dir / release.sha256, ignore_errors=True)
            (self.store_dir / f"{release.sha256}.release.json").unlink(missing_ok=True)

    def _health(self, txn: str, release: Release, path: Path) -> dict:
        """Verify, load on the preferred backend, self-test, latency budget; raise VerificationError."""
        from fusionedge.sdk.perception import Perception

        self.journal.begin(txn, "health", sha256=release.sha256, release=release.release)
        try:
            backends = self._device_backends()
            if not backends:
                raise BackendError(f"none of the backends {list(self.backends)} is available on this device")
            t0 = time.perf_counter()
            perception = Perception.load(path, backends, verify=True, backend_options=self.backend_options)
            load_ms = (time.perf_counter() - t0) * 1e3
            try:
                self._hook("health")
                if perception.fallbacks:
                    first = perception.fallbacks[0]
                    raise BackendError(f"the preferred backend {first.backend!r} failed to load "
                                       f"({first.reason}); the model would run on "
                                       f"{perception.backend_name!r} instead")
                err = perception.self_test()
                inputs, _ = perception.bundle.golden()
                latencies = []
                for _ in range(self.health_runs):
                    t0 = time.perf_counter()
                    perception.backend.infer(inputs)
                    latencies.append((time.perf_counter() - t0) * 1e3)
            finally:
                perception.close()
            health = {"backend": perception.backend_name, "self_test_max_abs_err": err, "load_ms": load_ms,
                      "latency_ms_median": statistics.median(latencies), "latency_ms_max": max(latencies),
                      "golden_batch": int(next(iter(inputs.values())).shape[0]), "runs": self.health_runs}
            if self.latency_budget_ms is not None and health["latency_ms_median"] > self.latency_budget_ms:
                raise BackendError(f"median golden-inference latency {health['latency_ms_median']:.1f} ms "
                                   f"exceeds the budget of {self.latency_budget_ms:g} ms")
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
        _switch_link(self.state_dir / "current", f"store/{release.sha256}")
        self._hook("commit:switched")
        if previous_sha is not None:
            _switch_link(self.state_dir / "previous", f"store/{previous_sha}")
        self.journal.end(txn, "commit")

    def _reject(self, txn: str, release: Release, reason: str, *, committed_from: str | None) -> None:
        """Roll a release back and record it as bad. ``committed_from``: None before the commit, else the
        sha ``current`` pointed to before it ("" when there was none)."""
        self.journal.begin(txn, "rollback", sha256=release.sha256, release=release.release,
                           from_sha=committed_from)
        if committed_from is not None:
            if committed_from:
                _switch_link(self.state_dir / "current", f"store/{committed_from}")
            else:
                (self.state_dir / "current").unlink(missing_ok=True)
                fsync_dir(self.state_dir)
        self._mark_bad(release.model, release.version, release.release, release.sha256, reason)
        self._clean_store()
        self.journal.end(txn, "rollback")

    # ------------------------------------------------------------------------------ recovery

    def _recover_locked(self) -> list[str]:
        actions: list[str] = []
        txn = self.journal.open_transaction()
        if txn is not None:
            actions += self._recover_transaction(txn)
        actions += self._clean_staging()
        actions += self._clean_store()
        return actions

    def _recover_transaction(self, txn: Transaction) -> list[str]:
        actions: list[str] = []
        step = txn.interrupted_step
        if txn.began("engine") is not None and not txn.ended("engine"):
            step = "engine"  # after the install (which ended), so rolled back below like an install
        sha = txn.value("sha256") or txn.value("to_sha")
        self.journal.begin(txn.txn, "recover", interrupted=step, sha256=sha)
        outcome = "interrupted"
        commit = txn.began("commit")
        rollback = txn.began("rollback")
        if rollback is not None and not txn.ended("rollback"):
            from_sha = rollback.get("from_sha")
            if from_sha is not None:  # the commit had happened: put the old model back
                if from_sha:
                    _switch_link(self.state_dir / "current", f"store/{from_sha}")
                else:
                    (self.state_dir / "current").unlink(missing_ok=True)
            rel = self._read_release(rollback["sha256"])
            self._mark_bad(rel.model if rel else self.model, rel.version if rel else "?",
                           int(rollback.get("release", 0)), rollback["sha256"],
                           "rollback interrupted by a crash")
            self.journal.end(txn.txn, "rollback", recovered=True)
            outcome = "rolled-back"
            actions.append(f"finished the rollback of {rollback['sha256'][:12]}")
        elif commit is not None and not txn.ended("commit"):
            to_sha, from_sha = commit["to_sha"], commit.get("from_sha")
            if self._link_sha("current") == to_sha:
                if from_sha:
                    _switch_link(self.state_dir / "previous", f"store/{from_sha}")
                self.journal.end(txn.txn, "commit", recovered=True)
                outcome = "updated"
                actions.append(f"finished the commit of {to_sha[:12]} (current had switched)")
            else:
                outcome = "rolled-back"
                actions.append(f"rolled back the uncommitted install of {to_sha[:12]}")
        elif step in ("install", "health") or (txn.ended("install") and not txn.began("commit")):
            if step == "health" and sha:
                crashes = self._health_crashes(sha)
                if crashes >= self.max_health_crashes:
                    rel = self._read_release(sha)
                    self._mark_bad(rel.model if rel else self.model, rel.version if rel else "?",
                                   rel.release if rel else int(txn.value("release") or 0), sha,
                                   f"the health check was interrupted by a crash {crashes} times")
                    actions.append(f"marked {sha[:12]} bad after {crashes} crashes in its health check")
            outcome = "rolled-back"
            actions.append(f"rolled back the uncommitted install of {str(sha)[:12]} (interrupted at {step})")
        elif txn.ended("commit"):
            outcome = "updated"  # the crash came after the commit: nothing to undo
        elif step is not None:
            actions.append(f"abandoned the interrupted {step} step")
        self.journal.end(txn.txn, "recover", interrupted=step, sha256=sha, actions=actions)
        self.journal.end(txn.txn, "check", outcome=outcome, recovered=True)
        return actions

    def _health_crashes(self, sha: str) -> int:
        return sum(1 for r in self.journal.records()
                   if r["step"] == "recover" and r["phase"] == "begin" and r.get("interrupted") == "health"
                   and r.get("sha256") == sha)  # including the recovery being recorded now

    def _resumable_parts(self) -> set[str]:
        """The ``.part`` files of the last transaction that downloaded something (kept so they resume).

        That is the archive's part when it was not verified yet, and the prebuilt engine's part when
        that transaction began an engine download (a verified plan was moved away, so at most a
        partial one is left). Keeping them is safe: a partial file is only ever used after the whole
        file passed ``verify_length_and_hashes``; a file that failed verification was deleted at once.
        """
        for txn in reversed(self.journal.transactions()):
            begin = txn.began("download")
            if begin is None:
                continue
            keep = set() if txn.ended("verify") else {f"{begin['sha256']}.part"}
            engine = txn.began("engine")
            if engine is not None and engine.get("engine_sha256"):
                keep.add(f"{engine['engine_sha256']}.part")
            return keep
        return set()

    def _clean_staging(self) -> list[str]:
        keep = self._resumable_parts()
        actions = []
        for entry in sorted(self.staging_dir.iterdir()):
            if entry.name in keep:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            actions.append(f"removed staging/{entry.name}")
        return actions

    def _kept(self) -> set[str]:
        return {s for s in (self._link_sha("current"), self._link_sha("previous")) if s}

    def _clean_store(self) -> list[str]:
        """Remove store entries other than current / previous (the model in use is never touched)."""
        keep = self._kept()
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

    # -------------------------------------------------------------------------------- helpers

    def _link_sha(self, name: str) -> str | None:
        link = self.state_dir / name
        try:
            target = os.readlink(link)
        except OSError:
            return None
        sha = Path(target).name
        return sha if _SHA256.match(sha) else None

    def _read_release(self, sha: str) -> Release | None:
        try:
            data = json.loads((self.store_dir / f"{sha}.release.json").read_text(encoding="utf-8"))
            return Release(**{k: data[k] for k in Release.__dataclass_fields__})
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            log.warning("store/%s.release.json is unreadable: %s", sha[:12], e)
            return None

    def _running(self) -> str | None:
        rel = self.current_release()
        return None if rel is None else f"{rel.model}@{rel.version}"

    def _is_bad(self, release: int) -> bool:
        return any(b.get("model") == self.model and b.get("release") == release for b in self.bad_releases())

    def _mark_bad(self, model: str, version: str, release: int, sha: str, reason: str) -> None:
        releases = [b for b in self.bad_releases()
                    if not (b.get("model") == model and b.get("release") == release)]
        releases.append({"model": model, "version": version, "release": release, "sha256": sha,
                         "reason": reason, "ts": utc_now()})
        write_json_atomic(self.state_dir / "bad_releases.json", {"releases": releases})

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
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise UpdateError(f"{self.state_dir}: another agent is running on this state folder") from e
            yield
        finally:
            os.close(fd)

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
