"""Watch a rollout through the devices' MQTT status messages and pause it when too many fail.

Runs on the release server (it signs with the online ``rollouts`` key)::

    report = watch("broker:8883", "repo/", "student", min_devices=20, max_failure_rate=0.1, timeout_s=3600,
                   security=MqttSecurity(ca_file="ca.pem", username="fleet-watch", password=...))
    report.paused, report.failure_rate

Each device publishes a retained JSON status on ``fusionedge/devices/<device_id>/status``; the wire
format and its checks live in :mod:`fusionedge.sdk.fleet.status`, shared with the publisher.
:func:`watch` subscribes to ``fusionedge/devices/+/status`` and reads every message through
:func:`~fusionedge.sdk.fleet.status.parse_status`: a message that is oversized, too deeply nested, not
JSON, off the schema, or whose ``device_id`` is not its topic's is logged, counted in
``WatchReport.dropped`` and skipped — it never counts and never stops the watch. A device is its topic:
it counts once per release, with its latest verdict there, however many messages it sends. ``updated`` /
``up-to-date`` count as successes; ``rolled-back``, ``failed`` and ``skipped-bad`` as failures; progress
states and ``offline`` (a device's last will) do not replace a verdict. Once at least ``min_devices``
devices reached a verdict on the release the rollout names and the share of failures exceeds
``max_failure_rate``, it pauses the rollout with :func:`fusionedge.export.fleet.repo.set_rollout`
(``paused=True``): devices that have not updated yet stop taking the release at their next check;
devices that rolled back keep their old model. Topic binding is what makes a device's verdict its own
only when the broker lets each device write nothing but its own topic (see ``export/FLEET.md``).
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fusionedge.export.fleet.keys import RepositoryError
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.fleet.status import (
    OFFLINE,
    STATUS_SUBSCRIPTION,
    MqttSecurity,
    new_client,
    parse_broker,
    parse_status,
)

__all__ = ["SUCCESS_STATES", "VERDICT_FAILURES", "ReleaseTally", "WatchReport", "tally", "watch"]

log = logging.getLogger(__name__)

#: Device states that count as a success for the release they name.
SUCCESS_STATES = ("updated", "up-to-date")
#: Device states that count as a failure for the release they name.
VERDICT_FAILURES = ("rolled-back", "failed", "skipped-bad")
#: Dropped messages logged one by one before the log only counts them.
_LOGGED_DROPS = 20


@dataclass
class ReleaseTally:
    """Verdicts of devices on one release (each device counted once, by its latest status)."""

    release: int
    version: str | None
    succeeded: list[str] = field(default_factory=list)  # device ids
    failed: list[str] = field(default_factory=list)

    @property
    def devices(self) -> int:
        """Devices with a verdict on the release."""
        return len(self.succeeded) + len(self.failed)

    @property
    def failure_rate(self) -> float:
        """Share of those devices that failed (0 without any)."""
        return len(self.failed) / self.devices if self.devices else 0.0


@dataclass(frozen=True)
class WatchReport:
    """How a :func:`watch` ended."""

    model: str
    release: int | None  # the release the rollout named when watch ended
    version: str | None
    paused: bool  # True when watch paused the rollout
    reason: str  # why it ended
    tallies: dict[int, ReleaseTally]
    messages: int  # status messages accepted
    dropped: int = 0  # status messages refused (malformed, oversized, or naming another device)
    offline: list[str] = field(default_factory=list)  # devices whose latest status is their last will

    def to_dict(self) -> dict:
        """JSON-safe fields."""
        return {"model": self.model, "release": self.release, "version": self.version, "paused": self.paused,
                "reason": self.reason, "messages": self.messages, "dropped": self.dropped,
                "offline": list(self.offline),
                "tallies": {str(k): {**asdict(v), "devices": v.devices, "failure_rate": v.failure_rate}
                            for k, v in self.tallies.items()}}


def _is_verdict(status: Mapping[str, Any]) -> bool:
    return status.get("state") in SUCCESS_STATES or status.get("state") in VERDICT_FAILURES


def tally(statuses: Iterable[Mapping[str, Any]], model: str) -> dict[int, ReleaseTally]:
    """Each device's last verdict on each release, grouped into successes and failures.

    Args:
        statuses: status objects in the order they arrived, each already bound to its device (see
            :func:`~fusionedge.sdk.fleet.status.parse_status`); progress states (``downloading``, ...)
            and states without a verdict (``paused``, ``not-eligible``, ``offline``) do not erase an
            earlier verdict.
        model: only statuses about this fleet model count.

    Returns:
        ``{release: ReleaseTally}`` with device ids sorted.
    """
    verdicts: dict[tuple[str, int], Mapping[str, Any]] = {}
    for status in statuses:
        release, device = status.get("release"), status.get("device_id")
        if (status.get("model") != model or not isinstance(release, int) or isinstance(release, bool)
                or not isinstance(device, str)):
            continue
        if _is_verdict(status):
            verdicts[(device, release)] = status
    out: dict[int, ReleaseTally] = {}
    for (device, release), status in sorted(verdicts.items()):
        t = out.setdefault(release, ReleaseTally(release, status.get("version")))
        (t.succeeded if status["state"] in SUCCESS_STATES else t.failed).append(device)
    return dict(sorted(out.items()))


class _Ledger:
    """What a watch knows: each device's latest verdict per release, its latest state, the drops."""

    def __init__(self) -> None:
        self.verdicts: dict[tuple[str, int], dict] = {}  # (topic's device, release) -> latest verdict
        self.states: dict[str, str] = {}  # topic's device -> latest state
        self.messages = 0
        self.dropped = 0

    def add(self, topic: str, payload: bytes) -> None:
        """Take one message; a refused one is logged and counted, never raised."""
        try:
            status = parse_status(topic, payload)
        except InputError as e:
            self.dropped += 1
            if self.dropped <= _LOGGED_DROPS:
                log.warning("dropped a status message: %s", e)
            elif self.dropped % 1000 == 0:
                log.warning("%d status messages dropped so far", self.dropped)
            return
        self.messages += 1
        device = status["device_id"]  # the topic's device id (parse_status checked)
        self.states[device] = status["state"]
        if _is_verdict(status) and status.get("release") is not None:
            self.verdicts[(device, status["release"])] = status

    def tally(self, model: str) -> dict[int, ReleaseTally]:
        return tally(self.verdicts.values(), model)

    def offline(self) -> list[str]:
        return sorted(d for d, state in self.states.items() if state == OFFLINE)


def _current_rollout(repo: str | os.PathLike, model: str) -> dict | None:
    from fusionedge.export.fleet.repo import repository_status

    return repository_status(repo)["models"].get(model, {}).get("rollout")


def watch(
    broker: str | tuple[str, int],
    repo: str | os.PathLike,
    model: str,
    *,
    min_devices: int = 10,
    max_failure_rate: float = 0.2,
    timeout_s: float | None = None,
    online_keys: str | os.PathLike | None = None,
    stop: Any = None,
    on_tally: Callable[[ReleaseTally], None] | None = None,
    security: MqttSecurity | None = None,
) -> WatchReport:
    """Follow device statuses for ``model`` and pause its rollout when too many devices fail.

    Args:
        broker: ``HOST:PORT`` (or ``(host, port)``) of the MQTT broker the devices publish to.
        repo: the fleet repository folder.
        model: the fleet model whose rollout is watched.
        min_devices: devices that must have a verdict on the release before the rate is judged (>= 1).
        max_failure_rate: pause when the share of failed devices exceeds this (0 to 1).
        timeout_s: stop watching after this many seconds (None: until paused or ``stop`` is set).
        online_keys: folder of the online keys (default ``REPO/keys/online``).
        stop: an object with ``is_set()`` (e.g. ``threading.Event``) to end the watch early.
        on_tally: called with the rollout release's tally whenever it changes.
        security: TLS files and the watcher's credentials (None: plain TCP, anonymous).

    Returns:
        The :class:`WatchReport`; ``paused`` is True when this watch paused the rollout.

    Raises:
        RepositoryError: bad arguments, no repository, no rollout for ``model``, the broker cannot
            be reached or refuses the watcher, or the rollouts key is missing.
        InputError: unusable TLS files.
    """
    if not isinstance(min_devices, int) or isinstance(min_devices, bool) or min_devices < 1:
        raise RepositoryError(f"min_devices must be an integer >= 1, got {min_devices!r}")
    if not 0 <= float(max_failure_rate) < 1:
        raise RepositoryError(f"max_failure_rate must be in [0, 1), got {max_failure_rate!r}")
    host, port = parse_broker(broker)
    rollout = _current_rollout(repo, model)
    if rollout is None:
        raise RepositoryError(f"{model}: no rollout to watch; start one with `fusionedge fleet rollout`")

    inbox: queue.Queue = queue.Queue()
    connected: queue.Queue = queue.Queue()
    client = new_client(f"fusionedge-watch-{os.getpid()}-{time.monotonic_ns() % 10**6}", security)

    def on_connect(c: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not reason_code.is_failure:
            c.subscribe(STATUS_SUBSCRIPTION, qos=1)
        connected.put(reason_code)

    client.on_connect = on_connect
    client.on_message = lambda c, userdata, msg: inbox.put((msg.topic, msg.payload))
    try:
        client.connect(host, port, keepalive=30)
    except OSError as e:  # ssl.SSLError included: a broker certificate the CA did not sign
        raise RepositoryError(f"cannot reach the MQTT broker at {host}:{port} ({e})") from e
    client.loop_start()
    ledger = _Ledger()
    deadline = None if timeout_s is None else time.monotonic() + float(timeout_s)
    last_seen: tuple | None = None
    try:
        try:
            code = connected.get(timeout=10)
        except queue.Empty as e:
            raise RepositoryError(f"the MQTT broker at {host}:{port} did not answer the connection") from e
        if code.is_failure:
            raise RepositoryError(f"the MQTT broker at {host}:{port} refused the connection ({code})")
        next_rollout_read = 0.0
        while True:
            if stop is not None and stop.is_set():
                reason = "stopped"
                break
            if deadline is not None and time.monotonic() > deadline:
                reason = "timeout"
                break
            try:
                message = inbox.get(timeout=0.2)
            except queue.Empty:
                message = None
            if message is not None:
                ledger.add(*message)
                if not inbox.empty():
                    continue  # drain bursts before judging
            if time.monotonic() >= next_rollout_read:  # the operator may move the rollout meanwhile
                rollout = _current_rollout(repo, model) or rollout
                next_rollout_read = time.monotonic() + 1.0
            tallies = ledger.tally(model)
            current = tallies.get(rollout["release"], ReleaseTally(rollout["release"], rollout["version"]))
            seen = (rollout["release"], len(current.succeeded), len(current.failed))
            if seen != last_seen:
                last_seen = seen
                if on_tally is not None:
                    on_tally(current)
            if rollout.get("paused"):
                continue
            if current.devices >= min_devices and current.failure_rate > max_failure_rate:
                from fusionedge.export.fleet.repo import set_rollout

                set_rollout(repo, model=model, version=rollout["version"], paused=True,
                            online_keys=online_keys)
                reason = (f"paused release {rollout['release']} ({rollout['version']}): "
                          f"{len(current.failed)} of {current.devices} devices failed "
                          f"({current.failure_rate:.0%} > {max_failure_rate:.0%})")
                log.warning("%s: %s", model, reason)
                return WatchReport(model, rollout["release"], rollout["version"], True, reason,
                                   ledger.tally(model), ledger.messages, ledger.dropped, ledger.offline())
    finally:
        client.disconnect()
        client.loop_stop()
    return WatchReport(model, rollout["release"], rollout["version"], False, reason, ledger.tally(model),
                       ledger.messages, ledger.dropped, ledger.offline())
