"""Graceful stop on SIGINT and SIGTERM: a signal requests a stop instead of killing the process.

Ctrl-C sends SIGINT; systemd, Docker and Kubernetes stop a service with SIGTERM (and SIGKILL some
seconds later). Either way the pipeline must get the chance to close its sinks — an mp4 plays only
once its index is written — and to report its summary. :class:`StopSignals` installs handlers for
both that set an event the run loop watches; a second signal of the same kind restores the previous
handler and re-sends itself, so a stuck shutdown can still be forced.

::

    with StopSignals() as signals:
        while not signals.requested and work_left():
            step()
    sys.exit(signals.exit_status)   # 130 after SIGINT, 143 after SIGTERM, 0 otherwise
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["STOP_SIGNALS", "StopSignals"]

log = logging.getLogger(__name__)

#: The signals that request a graceful stop.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While entered, SIGINT and SIGTERM set :attr:`event` instead of ending the process.

    Handlers can only be installed from the main thread; entered from another thread this does
    nothing but offers the event (so code that uses it runs the same in a worker thread). The
    previous handlers are restored on exit. Nested use is fine: the innermost one receives.

    Args:
        signals: which signals request the stop.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.event = threading.Event()
        #: The signal received first, or None.
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived."""
        return self.event.is_set()

    @property
    def exit_status(self) -> int:
        """The conventional exit status for the signal received (128 + its number), 0 without one."""
        return 128 + int(self.received) if self.received is not None else 0

    @property
    def name(self) -> str | None:
        """``"SIGINT"`` / ``"SIGTERM"`` for the signal received, None without one."""
        return self.received.name if self.received is not None else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.event.is_set() and self.received == sig:  # the second one: force it
            log.warning("%s again: stopping at once", sig.name)
            signal.signal(sig, self._previous.get(sig, signal.SIG_DFL))
            os.kill(os.getpid(), sig)
            return
        if self.received is None:
            self.received = sig
        log.warning("%s received: stopping cleanly (send it again to stop at once)", sig.name)
        self.event.set()

    def __enter__(self) -> StopSignals:  # noqa: PYI034 - py3.10 has no typing.Self
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
