"""The bounded queues between pipeline stages, with a live or offline policy, and latency percentiles.

Policy ``live`` never blocks a producer: a full queue drops its oldest item and counts the drop, so
the newest frame always gets through and latency stays bounded. Policy ``offline`` blocks the
producer instead (back-pressure): nothing is dropped. The end-of-stream marker :data:`END` is never
dropped and never blocks.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import numpy as np
from fusionedge.sdk.errors import InputError

__all__ = ["END", "POLICIES", "BoundedQueue", "Latencies"]

POLICIES: tuple[str, ...] = ("live", "offline")
END = object()  # the end-of-stream marker that flows through the queues


class BoundedQueue:
    """A bounded FIFO with a policy: ``live`` drops the oldest when full, ``offline`` blocks.

    Args:
        maxsize: capacity, >= 1.
        policy: ``"live"`` or ``"offline"``.
        stop: an event that ends any blocking wait.
    """

    def __init__(self, maxsize: int, policy: str, stop: threading.Event) -> None:
        if policy not in POLICIES:
            raise InputError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.maxsize = int(maxsize)
        self.policy = policy
        self._stop = stop
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self.dropped = 0  # items discarded to make room (live policy only)
        self.put_count = 0

    def put(self, item: Any) -> bool:
        """Add an item; returns False when it was not added because the pipeline stopped.

        The end marker is never dropped and never blocks.
        """
        with self._cond:
            if item is not END:
                if self.policy == "offline":
                    while len(self._items) >= self.maxsize and not self._stop.is_set():
                        self._cond.wait(0.1)
                    if self._stop.is_set():
                        return False
                else:
                    while len(self._items) >= self.maxsize:
                        victim = self._items.popleft()
                        if victim is END:  # keep the end marker; nothing comes after it anyway
                            self._items.appendleft(victim)
                            return False
                        self.dropped += 1
            self._items.append(item)
            self.put_count += 1
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> Any:
        """The oldest item, or None after ``timeout`` seconds (or at a stop) with nothing in."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(min(left, 0.1))
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class Latencies:
    """Recent durations per stage (ms) and their percentiles."""

    def __init__(self, window: int) -> None:
        self._data: dict[str, collections.deque] = {}
        self._window = window
        self._lock = threading.Lock()

    def add(self, name: str, ms: float) -> None:
        with self._lock:
            self._data.setdefault(name, collections.deque(maxlen=self._window)).append(ms)

    def summary(self) -> dict[str, dict[str, float]]:
        with self._lock:
            data = {k: np.fromiter(v, float) for k, v in self._data.items()}
        return {k: {"p50": round(float(np.percentile(v, 50)), 3), "p90": round(float(np.percentile(v, 90)), 3),
                    "p99": round(float(np.percentile(v, 99)), 3), "max": round(float(v.max()), 3),
                    "n": int(v.size)}
                for k, v in data.items() if v.size}
