"""Sensor supervision: a source that stops, errors or stalls is detected, reported and retried.

A :class:`SourceSupervisor` owns one modality's capture thread. It opens the source, hands every
frame or chunk to the pipeline, and when something goes wrong it moves the sensor's state and emits a
:class:`HealthEvent` (logged at WARNING, written to the event log, shown on every result):

``error``    opening or reading raised :class:`SensorError` (a camera unplugged, a stream refused);
``stopped``  a live sensor reported the end of its data;
``stalled``  no data for ``stall_timeout`` seconds (found by :meth:`SourceSupervisor.check`, which the
             pipeline calls a few times a second; the stuck source is closed to unblock its read);
``open_timeout`` opening has taken longer than ``open_timeout`` seconds (a stream that accepts the
             connection and never answers). Opening runs in a helper thread, so the supervisor reports
             on time even where the open call itself cannot be interrupted; a late success still counts.

It then retries with exponential backoff (``backoff_initial`` doubling up to ``backoff_max``) until the
sensor delivers again (state ``ok``, event ``recovered``) or the pipeline stops. A replayed file that
ends is ``ended``: that is the end of the stream, not a failure. The other modality keeps running
meanwhile: the pipeline passes the failed one with presence 0.

Only :class:`SensorError` is retried. Any other :class:`FusionEdgeError` from ``open()`` (a missing
file, a path that is not a regular file, a scheme this build cannot open) is a configuration error
that no retry fixes: the state becomes ``failed`` and the supervisor hands the error to ``on_fatal``,
which stops the pipeline.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from fusionedge.sdk.errors import FusionEdgeError, SensorError

__all__ = ["HealthEvent", "SourceSupervisor", "OK", "FAILED_STATES"]

log = logging.getLogger(__name__)

OK = "ok"
#: States in which a modality is passed to the model as absent.
FAILED_STATES: tuple[str, ...] = ("starting", "error", "stopped", "stalled", "open_timeout", "failed")


@dataclass(frozen=True)
class HealthEvent:
    """A change of one sensor's state."""

    modality: str  # "video" or "audio"
    uri: str
    state: str  # ok, error, stopped, stalled, open_timeout, failed, ended
    reason: str
    t: float = field(default_factory=time.monotonic)  # time.monotonic() of the change
    failures: int = 0  # failures so far
    camera: str | None = None  # the camera's pipeline in a multi-camera run (None: the one pipeline)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the event log (with ``camera`` when the event has one)."""
        out: dict[str, Any] = {"type": "health", "modality": self.modality, "uri": self.uri, "state": self.state,
                               "reason": self.reason, "failures": self.failures}
        if self.camera is not None:
            out["camera"] = self.camera
        return out


class SourceSupervisor:
    """Runs, watches and restarts one source in its own thread.

    Args:
        modality: ``"video"`` or ``"audio"``.
        source: the source (opened again after each failure).
        deliver: called with each frame/chunk on the capture thread; may block (offline policy).
        on_event: called with each :class:`HealthEvent`.
        on_end: called once when a replayed file ends.
        stop: the pipeline's stop event.
        stall_timeout: seconds without data that count as a stall.
        backoff_initial: first retry delay, seconds.
        backoff_max: longest retry delay, seconds.
        open_timeout: seconds one ``open()`` may take (default: ``stall_timeout``).
        on_fatal: called with an error no retry can fix (default: raise nothing, just stop retrying).
    """

    def __init__(self, modality: str, source: Any, deliver: Callable[[Any], None],
                 on_event: Callable[[HealthEvent], None], on_end: Callable[[], None],
                 stop: threading.Event, *, stall_timeout: float = 2.0, backoff_initial: float = 0.2,
                 backoff_max: float = 5.0, open_timeout: float | None = None,
                 on_fatal: Callable[[FusionEdgeError], None] | None = None) -> None:
        self.modality = modality
        self.source = source
        self._deliver = deliver
        self._on_event = on_event
        self._on_end = on_end
        self._stop = stop
        self.stall_timeout = float(stall_timeout)
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.open_timeout = float(open_timeout) if open_timeout is not None else self.stall_timeout
        self._on_fatal = on_fatal
        self.state = "starting"
        self.reason = ""
        self.failures = 0
        self.recoveries = 0
        self.opened = threading.Event()  # set once the source first opened (its fps/rate are known)
        self._last = time.monotonic()
        self._stalled = threading.Event()
        self._delivering = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"capture-{modality}", daemon=True)

    @property
    def healthy(self) -> bool:
        """True while the sensor delivers (state ``ok``)."""
        return self.state == OK

    @property
    def ended(self) -> bool:
        """True once a replayed file has ended."""
        return self.state == "ended"

    def start(self) -> None:
        """Start the capture thread."""
        self._last = time.monotonic()
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait for the capture thread; True when it has ended.

        An ``open()`` still blocked in a library call at shutdown is not waited for (it runs in a
        daemon thread, and the source drops what it opens after being closed).
        """
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def check(self, now: float | None = None) -> None:
        """Flag a stall when the sensor delivered nothing for ``stall_timeout`` s (call periodically)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = (self.state in (OK, "starting") and not self._delivering
                     and now - self._last > self.stall_timeout)
        if stale and not self._stop.is_set():
            self._stalled.set()
            self._set("stalled", f"no data for {now - self._last:.1f} s (limit {self.stall_timeout:g} s)")
            self.source.close()  # unblocks a read() stuck on the device

    def close(self) -> None:
        """Close the source now (used at shutdown to unblock the capture thread)."""
        try:
            self.source.close()
        except Exception as e:  # a broken device must not block shutdown
            log.debug("closing %s: %s", self.source.uri.text, e)

    # ------------------------------------------------------------------------------------- thread

    def _set(self, state: str, reason: str) -> None:
        with self._lock:
            if state == self.state and reason == self.reason:
                return
            if state in FAILED_STATES and state != "starting":
                self.failures += 1
            self.state, self.reason = state, reason
            event = HealthEvent(self.modality, self.source.uri.text, state, reason, failures=self.failures)
        if state == "failed":  # the error itself reaches the caller; no second report
            log.info("%s sensor %s: %s (%s)", self.modality, self.source.uri.text, state, reason)
        elif state in FAILED_STATES:
            log.warning("%s sensor %s: %s (%s)", self.modality, self.source.uri.text, state, reason)
        else:
            log.info("%s sensor %s: %s %s", self.modality, self.source.uri.text, state, reason)
        self._on_event(event)

    def _run(self) -> None:
        delay = self.backoff_initial
        while not self._stop.is_set():
            self._stalled.clear()
            self._delivering = True  # opening is timed by _open, not by the stall watchdog
            try:
                opened = self._open()
            except SensorError as e:
                self._delivering = False
                self._set("error", str(e))
                self.close()
            except FusionEdgeError as e:  # a configuration error: no retry will fix it
                self._delivering = False
                self._set("failed", str(e))
                self.close()
                if self._on_fatal is not None:
                    self._on_fatal(e)
                return
            else:
                if not opened:  # the pipeline stopped while the source opened
                    return
                with self._lock:
                    self._last = time.monotonic()
                    self._delivering = False
                self.opened.set()
                done, delivered = self._pump()
                if done:
                    return  # the file ended, or the pipeline stopped
                if delivered:
                    delay = self.backoff_initial  # it worked for a while: start the backoff over
            if self._stop.wait(delay):
                return
            delay = min(self.backoff_max, delay * 2)

    def _open(self) -> bool:
        """Open the source in a helper thread; report ``open_timeout`` once it takes too long.

        The open is not abandoned at the timeout (a CSI camera may need a few seconds to start, and
        a network stream has its own timeout in the source): the event is sent on time and the wait
        goes on. Returns True once open, False when the pipeline stopped meanwhile (the source is
        closed, so that a late success is dropped). Re-raises what ``open()`` raised.
        """
        outcome: list[BaseException | None] = []

        def work() -> None:
            try:
                self.source.open()
            except BaseException as e:  # noqa: BLE001 - handed to the supervisor thread below
                outcome.append(e)
            else:
                outcome.append(None)

        opener = threading.Thread(target=work, name=f"open-{self.modality}", daemon=True)
        started = time.monotonic()
        opener.start()
        reported = False
        while True:
            opener.join(0.02)
            if outcome:
                error = outcome[0]
                if error is not None:
                    raise error
                return True
            if self._stop.is_set():
                self.close()
                return False
            if not reported and time.monotonic() - started > self.open_timeout:
                reported = True
                self._set("open_timeout", f"opening took more than {self.open_timeout:g} s "
                                          f"(no answer from the sensor yet)")

    def _pump(self) -> tuple[bool, bool]:
        """Read until a failure or the end; returns (done: file ended or stopped, delivered anything)."""
        got_any = False
        try:
            while not self._stop.is_set():
                item = self.source.read()
                if self._stalled.is_set():
                    return False, got_any  # the watchdog closed it; state is already "stalled"
                if item is None:
                    if self._stop.is_set():
                        return True, got_any
                    if not self.source.live:
                        self._set("ended", "end of file")
                        self._on_end()
                        return True, got_any
                    self._set("stopped", "the sensor reported the end of its data")
                    return False, got_any
                with self._lock:
                    self._last = time.monotonic()
                if not got_any:
                    got_any = True
                    if self.state != OK:
                        if self.failures:
                            self.recoveries += 1
                        self._set(OK, "recovered" if self.failures else "delivering")
                self._delivering = True  # time blocked by the pipeline (back-pressure) is no stall
                try:
                    self._deliver(item)
                finally:
                    with self._lock:
                        self._delivering = False
                        self._last = time.monotonic()
            return True, got_any
        except SensorError as e:
            if self._stop.is_set():
                return True, got_any
            if not self._stalled.is_set():
                self._set("error", str(e))
            return False, got_any
        finally:
            self.source.close()
