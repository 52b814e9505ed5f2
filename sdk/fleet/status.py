"""Device status: a local ``status.json`` and, when a broker is configured, a retained MQTT message.

Every report is one JSON object::

    {"device_id": "cam-042", "state": "updated", "model": "student", "version": "0.2.0", "release": 7,
     "running": "student@0.2.0", "health": {"self_test_max_abs_err": 3e-7, "latency_ms_median": 1.9},
     "error": null, "ts": "2026-11-26T18:00:00.000Z"}

written atomically to ``status.json`` first, then published on
``fusionedge/devices/<device_id>/status`` with QoS 1 and ``retain=True`` (so a dashboard or
``fusionedge fleet watch`` that subscribes later still gets each device's last word).

Publishing never breaks an update: the MQTT client (paho-mqtt 2.x, imported lazily) runs in its own
network thread, connects and reconnects in the background and queues messages while the broker is
away; any error is logged and counted in :attr:`StatusReporter.publish_errors`, never raised.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from fusionedge.sdk.bundle import json_safe, write_json_atomic
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.fleet.journal import utc_now

__all__ = ["StatusReporter", "status_topic", "parse_broker", "TOPIC_PREFIX", "TERMINAL_STATES"]

log = logging.getLogger(__name__)

#: Status messages are published under ``<TOPIC_PREFIX>/<device_id>/status``.
TOPIC_PREFIX = "fusionedge/devices"
#: States that end a check (the others — downloading, verifying, ... — are progress).
TERMINAL_STATES = ("updated", "up-to-date", "rolled-back", "failed", "not-eligible", "paused", "no-rollout",
                   "incompatible", "skipped-bad")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def status_topic(device_id: str) -> str:
    """The MQTT topic a device publishes its status on.

    Raises:
        InputError: ``device_id`` holds characters other than letters, digits, ``.``, ``_``, ``-``
            (MQTT wildcards and ``/`` would change the topic's meaning).
    """
    if not isinstance(device_id, str) or not _DEVICE_ID.match(device_id):
        raise InputError(f"device id must be 1-128 letters, digits, '.', '_' or '-', got {device_id!r}")
    return f"{TOPIC_PREFIX}/{device_id}/status"


def parse_broker(broker: str | tuple[str, int]) -> tuple[str, int]:
    """Turn ``"HOST:PORT"`` (or ``"HOST"``, port 1883) or ``(host, port)`` into ``(host, port)``.

    Raises:
        InputError: an empty host or a port that is not an integer in 1..65535.
    """
    if isinstance(broker, tuple):
        host, port = broker
    else:
        host, sep, port_text = str(broker).rpartition(":")
        if not sep:
            host, port_text = port_text, "1883"
        try:
            port = int(port_text)
        except ValueError as e:
            raise InputError(f"broker {broker!r}: port {port_text!r} is not an integer") from e
    if not host or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InputError(f"broker must be HOST:PORT with a port in 1..65535, got {broker!r}")
    return str(host), port


class StatusReporter:
    """Write the device's status to ``status.json`` and publish it to an MQTT broker (optional).

    Args:
        device_id: the device's id (letters, digits, ``.``, ``_``, ``-``).
        path: the local status file, written atomically on every report.
        mqtt: ``"HOST:PORT"`` or ``(host, port)`` of a broker, or None for the local file only.
        client_id: the MQTT client id (default ``fusionedge-<device_id>``).

    Raises:
        InputError: a bad device id or broker address.
    """

    def __init__(self, device_id: str, path: str | os.PathLike, *, mqtt: str | tuple[str, int] | None = None,
                 client_id: str | None = None) -> None:
        self.device_id = device_id
        self.topic = status_topic(device_id)
        self.path = Path(path)
        self.broker = parse_broker(mqtt) if mqtt is not None else None
        self.client_id = client_id or f"fusionedge-{device_id}"
        self.publish_errors = 0
        self.last: dict[str, Any] | None = None
        self._client: Any = None
        self._lock = threading.Lock()  # one report at a time
        self._acks = threading.Condition()  # guards the two sets below
        self._unacked: set[int] = set()  # message ids the broker has not acknowledged yet
        self._early_acks: set[int] = set()

    def report(self, state: str, *, model: str | None = None, version: str | None = None,
               release: int | None = None, running: str | None = None,
               health: Mapping[str, Any] | None = None, error: str | None = None, **extra: Any) -> dict:
        """Record a state: write ``status.json``, then publish (never raising for the publish).

        Args:
            state: e.g. ``downloading``, ``health-check``, ``updated``, ``rolled-back`` (see
                :data:`TERMINAL_STATES`).
            model: the fleet model name the state is about.
            version: the release version the state is about.
            release: the release counter the state is about.
            running: ``name@version`` of the bundle the device runs now.
            health: health-check numbers.
            error: the error message, for failures.
            **extra: more JSON-safe fields.

        Returns:
            The status object as written.

        Raises:
            OSError: ``status.json`` cannot be written (a publish failure is never raised).
        """
        status = json_safe({"device_id": self.device_id, "state": state, "model": model, "version": version,
                            "release": release, "running": running, "health": dict(health or {}),
                            "error": error, "ts": utc_now(), **extra})
        with self._lock:
            write_json_atomic(self.path, status)
            self.last = status
            if self.broker is not None:
                self._publish(status)
        return status

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every published status was acknowledged by the broker (QoS 1 PUBACK).

        Args:
            timeout: seconds to wait at most.

        Returns:
            True when nothing is left unacknowledged (always True without a broker).
        """
        deadline = time.monotonic() + timeout
        with self._acks:
            while self._unacked and time.monotonic() < deadline:
                self._acks.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            return not self._unacked

    def close(self, timeout: float = 2.0) -> None:
        """Deliver what is queued (up to ``timeout`` seconds), then disconnect. Safe to call twice."""
        if self._client is None:
            return
        self.flush(timeout)
        with self._lock:
            client, self._client = self._client, None
        try:
            client.disconnect()
            client.loop_stop()
        except Exception as e:  # the broker may be gone; closing must not raise
            log.debug("closing the MQTT client of %s: %s", self.device_id, e)

    def __enter__(self) -> "StatusReporter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- internals

    def _connect(self) -> Any:
        import paho.mqtt.client as mqtt  # the [fleet] extra; lazy so the runtime imports without it

        host, port = self.broker or ("127.0.0.1", 1883)
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=True)
        client.max_queued_messages_set(256)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_publish = self._on_publish
        client.connect_async(host, port, keepalive=30)  # connects (and reconnects) in the network thread
        client.loop_start()
        return client

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._acks:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:  # acknowledged before _publish recorded it
                self._early_acks.add(mid)
            self._acks.notify_all()

    def _publish(self, status: dict) -> None:
        try:
            if self._client is None:
                self._client = self._connect()
            # QoS 1: while the broker is away paho queues the message (rc NO_CONN) and sends it on connect
            info = self._client.publish(self.topic, json.dumps(status), qos=1, retain=True)
            if info.rc not in (0, 4):  # MQTT_ERR_SUCCESS, MQTT_ERR_NO_CONN
                raise RuntimeError(f"paho error code {info.rc}")
            with self._acks:
                if info.mid in self._early_acks:
                    self._early_acks.discard(info.mid)
                else:
                    self._unacked.add(info.mid)
        except Exception as e:  # a status message must never break an update
            self.publish_errors += 1
            log.warning("cannot publish the status of %s to %s: %s", self.device_id, self.broker, e)
