"""Watch a rollout through the devices' MQTT status messages and pause it when too many fail.

Runs on the release server (it signs with the online ``rollouts`` key)::

    report = watch("broker:1883", "repo/", "student", min_devices=20, max_failure_rate=0.1, timeout_s=3600)
    report.paused, report.failure_rate

Each device publishes a retained JSON status on ``fusionedge/devices/<device_id>/status``
(:mod:`fusionedge.sdk.fleet.status`). :func:`watch` subscribes to ``fusionedge/devices/+/status``,
keeps every device's latest status, and tallies per release: ``updated`` / ``up-to-date`` count as
successes; ``rolled-back``, ``failed`` and ``skipped-bad`` as failures (progress states are ignored).
Once at least ``min_devices`` devices reached a verdict on the release the rollout names and the share
of failures exceeds ``max_failure_rate``, it pauses the rollout with
:func:`fusionedge.export.fleet_repo.set_rollout` (``paused=True``): devices that have not updated
yet stop taking the release at their next check; devices that rolled back keep their old model.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping

from fusionedge.export.fleet_keys import RepositoryError
from fusionedge.sdk.fleet.status import TOPIC_PREFIX, parse_broker

__all__ = ["watch", "tally", "ReleaseTally", "WatchReport", "SUCCESS_STATES", "VERDICT_FAILURES"]

log = logging.getLogger(__name__)

#: Device states that count as a success for the release they name.
SUCCESS_STATES = ("updated", "up-to-date")
#: Device states that count as a failure for the release they name.
VERDICT_FAILURES = ("rolled-back", "failed", "skipped-bad")


@dataclass
class ReleaseTally:
    """Verdicts of devices on one release (each device counted once, by its latest status)."""

    release: int
    version: str | None
    succeeded: list[str] = field(default_factory=list)  # device ids
    failed: list[str] = field(default_factory=list)

    @property
    def devices(self) -> int:
        return len(self.succeeded) + len(self.failed)

    @property
    def failure_rate(self) -> float:
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
    messages: int  # status messages received

    def to_dict(self) -> dict:
        """JSON-safe fields."""
        return {"model": self.model, "release": self.release, "version": self.version, "paused": self.paused,
                "reason": self.reason, "messages": self.messages,
                "tallies": {str(k): {**asdict(v), "devices": v.devices, "failure_rate": v.failure_rate}
                            for k, v in self.tallies.items()}}


def tally(statuses: Iterable[Mapping[str, Any]], model: str) -> dict[int, ReleaseTally]:
    """Each device's last verdict on each release, grouped into successes and failures.

    Args:
        statuses: status objects in the order they arrived; progress states (``downloading``, ...)
            and states without a verdict (``paused``, ``not-eligible``) do not erase an earlier verdict.
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
        if status.get("state") in SUCCESS_STATES or status.get("state") in VERDICT_FAILURES:
            verdicts[(device, release)] = status
    out: dict[int, ReleaseTally] = {}
    for (device, release), status in sorted(verdicts.items()):
        t = out.setdefault(release, ReleaseTally(release, status.get("version")))
        (t.succeeded if status["state"] in SUCCESS_STATES else t.failed).append(device)
    return dict(sorted(out.items()))


def _current_rollout(repo: str | os.PathLike, model: str) -> dict | None:
    from fusionedge.export.fleet_repo import repository_status

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

    Returns:
        The :class:`WatchReport`; ``paused`` is True when this watch paused the rollout.

    Raises:
        RepositoryError: bad arguments, no repository, no rollout for ``model``, the broker cannot
            be reached, or the rollouts key is missing.
    """
    if not isinstance(min_devices, int) or isinstance(min_devices, bool) or min_devices < 1:
        raise RepositoryError(f"min_devices must be an integer >= 1, got {min_devices!r}")
    if not 0 <= float(max_failure_rate) < 1:
        raise RepositoryError(f"max_failure_rate must be in [0, 1), got {max_failure_rate!r}")
    host, port = parse_broker(broker)
    rollout = _current_rollout(repo, model)
    if rollout is None:
        raise RepositoryError(f"{model}: no rollout to watch; start one with `fusionedge fleet rollout`")

    import paho.mqtt.client as mqtt

    inbox: queue.Queue = queue.Queue()
    connected = queue.Queue()
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"fusionedge-watch-{os.getpid()}-{time.monotonic_ns() % 10**6}")

    def on_connect(c: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not reason_code.is_failure:
            c.subscribe(f"{TOPIC_PREFIX}/+/status", qos=1)
        connected.put(reason_code)

    client.on_connect = on_connect
    client.on_message = lambda c, userdata, msg: inbox.put(msg.payload)
    try:
        client.connect(host, port, keepalive=30)
    except OSError as e:
        raise RepositoryError(f"cannot reach the MQTT broker at {host}:{port} ({e})") from e
    client.loop_start()
    verdicts: dict[tuple[str, Any], dict] = {}  # (device, release) -> its last verdict status
    messages = 0
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
                payload = inbox.get(timeout=0.2)
            except queue.Empty:
                payload = None
            if payload is not None:
                try:
                    status = json.loads(payload)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    log.warning("ignoring a status message that is not JSON")
                    status = None
                if isinstance(status, dict) and isinstance(status.get("device_id"), str):
                    messages += 1
                    if status.get("state") in SUCCESS_STATES or status.get("state") in VERDICT_FAILURES:
                        verdicts[(status["device_id"], status.get("release"))] = status
                if not inbox.empty():
                    continue  # drain bursts before judging
            if time.monotonic() >= next_rollout_read:  # the operator may move the rollout meanwhile
                rollout = _current_rollout(repo, model) or rollout
                next_rollout_read = time.monotonic() + 1.0
            tallies = tally(verdicts.values(), model)
            current = tallies.get(rollout["release"], ReleaseTally(rollout["release"], rollout["version"]))
            seen = (rollout["release"], len(current.succeeded), len(current.failed))
            if seen != last_seen:
                last_seen = seen
                if on_tally is not None:
                    on_tally(current)
            if rollout.get("paused"):
                continue
            if current.devices >= min_devices and current.failure_rate > max_failure_rate:
                from fusionedge.export.fleet_repo import set_rollout

                set_rollout(repo, model=model, version=rollout["version"], paused=True,
                            online_keys=online_keys)
                reason = (f"paused release {rollout['release']} ({rollout['version']}): "
                          f"{len(current.failed)} of {current.devices} devices failed "
                          f"({current.failure_rate:.0%} > {max_failure_rate:.0%})")
                log.warning("%s: %s", model, reason)
                return WatchReport(model, rollout["release"], rollout["version"], True, reason,
                                   tally(verdicts.values(), model), messages)
    finally:
        client.disconnect()
        client.loop_stop()
    return WatchReport(model, rollout["release"], rollout["version"], False, reason,
                       tally(verdicts.values(), model), messages)
