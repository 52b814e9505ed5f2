"""Device status: a local ``status.json``, and one MQTT wire format shared by devices and ``fleet watch``.

Every report is one JSON object::

    {"device_id": "cam-042", "state": "updated", "model": "student", "version": "0.2.0", "release": 7,
     "running": "student@0.2.0", "health": {"self_test_max_abs_err": 3e-7, "latency_ms_median": 1.9},
     "error": null, "ts": "2026-11-26T18:00:00.000Z"}

written atomically to ``status.json`` first, then published on ``fusionedge/devices/<device_id>/status``
with QoS 1 and ``retain=True`` (so a dashboard or ``fusionedge fleet watch`` that subscribes later still
gets each device's last word). The broker is a shared bus anyone with access may publish to, so the
format is defined here once and checked on the way in by :func:`parse_status`: at most
:data:`STATUS_MAX_BYTES` of strict JSON, nested at most :data:`STATUS_MAX_DEPTH` levels, typed fields,
and a ``device_id`` equal to the one in the topic. With a broker ACL that lets each device write only
its own topic (``pattern write fusionedge/devices/%u/status``, see ``export/FLEET.md``), that binding
makes a status impossible to forge without the device's credentials. :class:`MqttSecurity` carries the
TLS files and the username/password of a connection, for both ends. The publisher registers a retained
``offline`` status as its last will, so a device that dies without disconnecting shows ``offline``.

Publishing never breaks an update: the MQTT client (paho-mqtt 2.x, imported lazily) runs in its own
network thread, connects and reconnects in the background and queues messages while the broker is
away; any error is logged and counted in :attr:`StatusReporter.publish_errors`, never raised.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusionedge.sdk.errors import InputError
from fusionedge.sdk.fileio import dumps_json, json_safe, loads_json, write_json_atomic
from fusionedge.sdk.fleet.journal import utc_now

__all__ = [
    "OFFLINE",
    "PASSWORD_ENV",
    "STATUS_MAX_BYTES",
    "STATUS_MAX_DEPTH",
    "STATUS_SUBSCRIPTION",
    "TERMINAL_STATES",
    "TOPIC_PREFIX",
    "MqttSecurity",
    "StatusReporter",
    "device_id_from_topic",
    "encode_status",
    "new_client",
    "offline_status",
    "parse_broker",
    "parse_status",
    "status_topic",
    "validate_status",
]

log = logging.getLogger(__name__)

#: Status messages are published under ``<TOPIC_PREFIX>/<device_id>/status``.
TOPIC_PREFIX = "fusionedge/devices"
#: The subscription that receives every device's status.
STATUS_SUBSCRIPTION = f"{TOPIC_PREFIX}/+/status"
#: States that end a check (the others — downloading, verifying, ... — are progress).
TERMINAL_STATES = ("updated", "up-to-date", "rolled-back", "failed", "not-eligible", "paused", "no-rollout",
                   "incompatible", "skipped-bad")
#: The state of the last-will message: the device's connection ended without a goodbye.
OFFLINE = "offline"
#: Largest status message published or accepted, in bytes.
STATUS_MAX_BYTES = 4096
#: Deepest nesting accepted in a status message (the object itself is level 1, ``health`` level 2).
STATUS_MAX_DEPTH = 6
#: Environment variable read for the MQTT password when no password file is given.
PASSWORD_ENV = "FUSIONEDGE_MQTT_PASSWORD"

_DEVICE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_STATE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_TOPIC = re.compile(rf"^{re.escape(TOPIC_PREFIX)}/([^/]*)/status$")
#: Optional text fields of the schema and their longest accepted length.
_TEXT_FIELDS = {"model": 128, "version": 128, "running": 300, "error": STATUS_MAX_BYTES, "ts": 64}
_SCHEMA_FIELDS = ("device_id", "state", "model", "version", "release", "running", "health", "error", "ts")
_MAX_RELEASE = 2**63 - 1


def status_topic(device_id: str) -> str:
    """The MQTT topic a device publishes its status on.

    Raises:
        InputError: ``device_id`` holds characters other than letters, digits, ``.``, ``_``, ``-``
            (MQTT wildcards and ``/`` would change the topic's meaning).
    """
    if not isinstance(device_id, str) or not _DEVICE_ID.match(device_id):
        raise InputError(f"device id must be 1-128 letters, digits, '.', '_' or '-', got {device_id!r}")
    return f"{TOPIC_PREFIX}/{device_id}/status"


def device_id_from_topic(topic: str) -> str:
    """The device id a status topic names (the inverse of :func:`status_topic`).

    Raises:
        InputError: ``topic`` is not ``fusionedge/devices/<device_id>/status`` with a valid device id.
    """
    m = _TOPIC.match(topic) if isinstance(topic, str) else None
    if m is None or not _DEVICE_ID.match(m.group(1)):
        raise InputError(f"{topic!r} is not a device status topic ({TOPIC_PREFIX}/<device_id>/status)")
    return m.group(1)


def validate_status(obj: Any) -> dict:
    """Check a decoded status object against the schema.

    Required: ``device_id`` (see :func:`status_topic`) and ``state`` (lower-case letters, digits and
    ``-``, at most 32). Optional: ``model``, ``version``, ``running``, ``error``, ``ts`` (strings or
    null), ``release`` (an integer >= 0 or null), ``health`` (an object). Other fields (for example
    ``error_type``, ``device_class``) are kept as they are; their names must be short strings.

    Returns:
        The object, unchanged.

    Raises:
        InputError: the first field that does not fit, named.
    """
    if not isinstance(obj, dict):
        raise InputError(f"a status must be a JSON object, got {type(obj).__name__}")
    device = obj.get("device_id")
    if not isinstance(device, str) or not _DEVICE_ID.match(device):
        raise InputError(f"device_id must be 1-128 letters, digits, '.', '_' or '-', got {device!r:.80}")
    state = obj.get("state")
    if not isinstance(state, str) or not _STATE.match(state):
        raise InputError(f"state must be 1-32 lower-case letters, digits or '-', got {state!r:.80}")
    for name, longest in _TEXT_FIELDS.items():
        value = obj.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > longest):
            raise InputError(f"{name} must be a string of at most {longest} characters or null")
    release = obj.get("release")
    if release is not None and (not isinstance(release, int) or isinstance(release, bool)
                                or not 0 <= release <= _MAX_RELEASE):
        raise InputError(f"release must be an integer >= 0 or null, got {release!r:.80}")
    health = obj.get("health", {})
    if not isinstance(health, dict):
        raise InputError(f"health must be an object, got {type(health).__name__}")
    for key in obj:
        if len(key) > 64:
            raise InputError(f"field name {key[:64]!r}... is longer than 64 characters")
    return obj


def parse_status(topic: str, payload: bytes | str) -> dict:
    """Decode one status message received on ``topic``, refusing anything the schema does not allow.

    Args:
        topic: the topic the broker delivered the message on.
        payload: the message body.

    Returns:
        The status object (see :func:`validate_status`); its ``device_id`` is the topic's device id.

    Raises:
        InputError: a topic that is not a status topic; a body larger than :data:`STATUS_MAX_BYTES`,
            nested deeper than :data:`STATUS_MAX_DEPTH`, not strict JSON, off the schema, or naming
            another device than its topic.
    """
    device = device_id_from_topic(topic)
    status = validate_status(loads_json(payload, what=f"status on {topic}", max_bytes=STATUS_MAX_BYTES,
                                        max_depth=STATUS_MAX_DEPTH))
    if status["device_id"] != device:
        raise InputError(f"status on {topic} names device {status['device_id']!r}: a device may only "
                         f"report itself")
    return status


def encode_status(status: Mapping[str, Any]) -> bytes:
    """The wire form of a status: compact strict JSON of at most :data:`STATUS_MAX_BYTES`.

    A status that would be larger is shortened, in this order, until it fits: the ``error`` text is cut
    (ending in ``...``), fields outside the schema are dropped, ``health`` is emptied.

    Raises:
        InputError: the status is off the schema (see :func:`validate_status`).
    """
    status = dict(json_safe(dict(status)))
    error = status.get("error")
    if isinstance(error, str) and len(error) > STATUS_MAX_BYTES:
        status["error"] = error[:STATUS_MAX_BYTES - 3] + "..."
    validate_status(status)

    def encoded() -> bytes:
        return dumps_json(status, indent=None).encode("utf-8")

    data = encoded()
    error = status.get("error")
    while len(data) > STATUS_MAX_BYTES and isinstance(error, str) and len(error) > 3:
        # keep the share of the text that fits (escapes make a character up to 6 bytes long)
        wire = len(dumps_json(error, indent=None))
        keep = int(len(error) * max(0, wire - (len(data) - STATUS_MAX_BYTES)) / wire) - 4
        error = error[:max(0, keep)] + "..." if keep > 0 else None
        status["error"] = error
        data = encoded()
    if len(data) > STATUS_MAX_BYTES:
        status = {k: v for k, v in status.items() if k in _SCHEMA_FIELDS}
        data = encoded()
    if len(data) > STATUS_MAX_BYTES:
        status["health"] = {}
        data = encoded()
    if len(data) > STATUS_MAX_BYTES:  # the bounded schema fields alone cannot get here
        raise InputError(f"a status of {len(data)} bytes does not fit in {STATUS_MAX_BYTES}")
    return data


def offline_status(device_id: str) -> dict:
    """The last-will status of ``device_id``: state :data:`OFFLINE`, stamped with the connection time."""
    status_topic(device_id)
    return {"device_id": device_id, "state": OFFLINE, "model": None, "version": None, "release": None,
            "running": None, "health": {}, "error": None, "ts": utc_now()}


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


@dataclass(frozen=True)
class MqttSecurity:
    """TLS and credentials of one MQTT connection (a device's publisher or ``fleet watch``).

    Args:
        ca_file: PEM file of the CA(s) that signed the broker's certificate; setting it (or
            ``cert_file``) turns TLS on. With only ``cert_file``, the system's CAs are trusted.
        cert_file: PEM client certificate, for brokers that require one (``require_certificate``).
        key_file: the client certificate's private key (omit when ``cert_file`` holds it).
        username: the MQTT username; for a device, its device id (the broker ACL's ``%u``).
        password: the MQTT password (never shown in ``repr``).

    Raises:
        InputError: a key without a certificate, a password without a username, or a file that is
            not a readable regular file.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.key_file is not None and self.cert_file is None:
            raise InputError("an MQTT client key needs its certificate (--mqtt-cert)")
        if self.password is not None and self.username is None:
            raise InputError("an MQTT password needs a username (--mqtt-username)")
        if self.username is not None and (not isinstance(self.username, str) or not self.username):
            raise InputError(f"the MQTT username must be a non-empty string, got {self.username!r}")
        for label, path in (("CA", self.ca_file), ("certificate", self.cert_file), ("key", self.key_file)):
            if path is not None and not (os.path.isfile(path) and os.access(path, os.R_OK)):
                raise InputError(f"MQTT {label} file {path}: not a readable file")

    @property
    def tls(self) -> bool:
        """True when the connection uses TLS."""
        return self.ca_file is not None or self.cert_file is not None

    @classmethod
    def from_options(cls, *, ca: str | os.PathLike | None = None, cert: str | os.PathLike | None = None,
                     key: str | os.PathLike | None = None, username: str | None = None,
                     password_file: str | os.PathLike | None = None,
                     environ: Mapping[str, str] | None = None) -> MqttSecurity | None:
        """Build from command-line style options; the password comes from a file or :data:`PASSWORD_ENV`.

        Args:
            ca, cert, key: TLS files (see the class).
            username: the MQTT username.
            password_file: a file holding the password (one line; a trailing newline is ignored).
            environ: where :data:`PASSWORD_ENV` is looked up when there is no password file
                (default ``os.environ``); it is used only with a username.

        Returns:
            The settings, or None when no option is set (a plain, anonymous connection).

        Raises:
            InputError: a password file without a username, an unreadable or empty password file,
                or any check of the class.
        """
        env = os.environ if environ is None else environ
        password = None
        if password_file is not None:
            if username is None:
                raise InputError("--mqtt-password-file needs --mqtt-username")
            try:
                with open(password_file, "rb") as f:
                    raw = f.read(4097)
            except OSError as e:
                raise InputError(f"MQTT password file {password_file}: {e.strerror or e}") from e
            try:
                password = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise InputError(f"MQTT password file {password_file}: not UTF-8 text") from e
            if not password or len(raw) > 4096:
                raise InputError(f"MQTT password file {password_file}: empty or longer than 4096 bytes")
        elif username is not None and env.get(PASSWORD_ENV):
            password = env[PASSWORD_ENV]
        if all(v is None for v in (ca, cert, key, username)):
            return None
        return cls(ca_file=None if ca is None else os.fspath(ca), cert_file=None if cert is None else os.fspath(cert),
                   key_file=None if key is None else os.fspath(key), username=username, password=password)

    def apply(self, client: Any) -> None:
        """Configure a paho client (before it connects): TLS with hostname checks, then credentials.

        Raises:
            InputError: a TLS file that is not a usable PEM certificate or key.
        """
        if self.tls:
            try:
                client.tls_set(ca_certs=self.ca_file, certfile=self.cert_file, keyfile=self.key_file,
                               cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except (ssl.SSLError, OSError, ValueError) as e:
                raise InputError(f"MQTT TLS files (CA {self.ca_file}, certificate {self.cert_file}): {e}") from e
        if self.username is not None:
            client.username_pw_set(self.username, self.password)


def new_client(client_id: str, security: MqttSecurity | None = None) -> Any:
    """A paho-mqtt 2.x client (clean session, MQTT 3.1.1) configured with ``security``.

    Raises:
        InputError: unusable TLS files (see :meth:`MqttSecurity.apply`).
    """
    import paho.mqtt.client as mqtt  # the [fleet] extra; lazy so the runtime imports without it

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=True)
    if security is not None:
        security.apply(client)
    return client


class StatusReporter:
    """Write the device's status to ``status.json`` and publish it to an MQTT broker (optional).

    Args:
        device_id: the device's id (letters, digits, ``.``, ``_``, ``-``).
        path: the local status file, written atomically on every report.
        mqtt: ``"HOST:PORT"`` or ``(host, port)`` of a broker, or None for the local file only.
        client_id: the MQTT client id (default ``fusionedge-<device_id>``).
        security: TLS files and credentials for the broker (None: plain TCP, anonymous).

    Raises:
        InputError: a bad device id or broker address.
    """

    def __init__(self, device_id: str, path: str | os.PathLike, *, mqtt: str | tuple[str, int] | None = None,
                 client_id: str | None = None, security: MqttSecurity | None = None) -> None:
        self.device_id = device_id
        self.topic = status_topic(device_id)
        self.path = Path(path)
        self.broker = parse_broker(mqtt) if mqtt is not None else None
        self.client_id = client_id or f"fusionedge-{device_id}"
        self.security = security
        self.publish_errors = 0
        self.connect_refusals = 0
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
            The status object as written (the published message may carry a shortened ``error``, see
            :func:`encode_status`).

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
        """Deliver what is queued (up to ``timeout`` seconds), then disconnect. Safe to call twice.

        A clean disconnect discards the last will: the retained status stays the last one reported.
        """
        if self._client is None:
            return
        self.flush(timeout)
        with self._lock:
            client, self._client = self._client, None
        try:
            client.disconnect()
            client.loop_stop()
        except Exception as e:  # noqa: BLE001 - the broker may be gone; closing must not raise
            log.debug("closing the MQTT client of %s: %s", self.device_id, e)

    def __enter__(self) -> StatusReporter:  # noqa: PYI034 - py3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- internals

    def _connect(self) -> Any:
        host, port = self.broker or ("127.0.0.1", 1883)
        client = new_client(self.client_id, self.security)
        # the broker publishes this (retained) when the connection drops without a DISCONNECT
        client.will_set(self.topic, encode_status(offline_status(self.device_id)), qos=1, retain=True)
        client.max_queued_messages_set(256)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_publish = self._on_publish
        client.on_connect = self._on_connect
        client.connect_async(host, port, keepalive=30)  # connects (and reconnects) in the network thread
        client.loop_start()
        return client

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.connect_refusals += 1
            log.warning("the MQTT broker %s refused %s: %s", self.broker, self.device_id, reason_code)

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
            info = self._client.publish(self.topic, encode_status(status), qos=1, retain=True)
            if info.rc not in (0, 4):  # MQTT_ERR_SUCCESS, MQTT_ERR_NO_CONN
                raise RuntimeError(f"paho error code {info.rc}")
            with self._acks:
                if info.mid in self._early_acks:
                    self._early_acks.discard(info.mid)
                else:
                    self._unacked.add(info.mid)
        except Exception as e:  # noqa: BLE001 - a status message must never break an update
            self.publish_errors += 1
            log.warning("cannot publish the status of %s to %s: %s", self.device_id, self.broker, e)
