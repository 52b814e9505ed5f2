"""The fleet's MQTT status channel against a real mosquitto: forged, hostile and lost device statuses.

Anyone who can publish to the broker can try to decide ``fleet watch``'s pause. These tests start
Debian's mosquitto on 127.0.0.1 (plain, or with TLS, a password file and the shipped ACL example),
publish real statuses with :class:`~fusionedge.sdk.fleet.status.StatusReporter` (and with a real
``fusionedge fleet agent`` process, killed with SIGKILL), forge others with a bare MQTT client, and
check what :func:`~fusionedge.export.fleet.watch.watch` counts.
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _fleet import FleetEnv, Mosquitto, release_bundle
from _toy_model import shared_toy_bundle

ACL_EXAMPLE = Path(__file__).resolve().parents[1] / "export" / "fleet" / "mosquitto.acl.example"
WATCHER = "fleet-watch"


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture
def env(tmp_path, toy):
    """A served repository whose model ``student`` has release 1 (0.1.0) rolled out to 100 %."""
    e = FleetEnv(tmp_path)
    e.publish(release_bundle(toy, tmp_path / "v1", "0.1.0"), "0.1.0")
    e.rollout("0.1.0")
    yield e
    e.close()


def _status(device: str, state: str, release: int = 1, **kw: Any) -> dict:
    return {"device_id": device, "state": state, "model": "student", "version": "0.1.0", "release": release,
            "running": None, "health": {}, "error": None, "ts": "2026-12-06T00:00:00.000Z", **kw}


def _topic(device: str) -> str:
    return f"fusionedge/devices/{device}/status"


def _report(address: str, folder: Path, device: str, state: str, security: Any = None,
            release: int = 1) -> None:
    """One real status from ``device``'s publisher, acknowledged by the broker, then a clean disconnect."""
    from fusionedge.sdk.fleet.status import StatusReporter

    kw = {} if security is None else {"security": security}
    with StatusReporter(device, folder / f"{device}.status.json", mqtt=address, **kw) as reporter:
        reporter.report(state, model="student", version="0.1.0", release=release)
        assert reporter.flush(10.0) and reporter.publish_errors == 0, device


def _forge(address: str, topic: str, payloads: list[bytes], *, retain: bool = False,
           security: Any = None) -> str:
    """Publish raw payloads with a bare client; returns how it went: ``published``, or why not."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"forger-{time.time_ns()}")
    if security is not None:
        security.apply(client)
    refused: list[Any] = []
    connected = threading.Event()

    def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        if rc.is_failure:
            refused.append(rc)
        connected.set()

    client.on_connect = on_connect
    host, port = address.rsplit(":", 1)
    try:
        client.connect(host, int(port))
    except OSError as e:  # TLS handshake refused, or TLS expected
        return f"no connection: {type(e).__name__}"
    client.loop_start()
    try:
        if not connected.wait(5):
            return "no connection: no CONNACK"
        if refused:
            return f"refused: {refused[0]}"
        infos = [client.publish(topic, p, qos=1, retain=retain) for p in payloads]
        for info in infos:
            info.wait_for_publish(10)
        return "published"
    finally:
        client.disconnect()
        client.loop_stop()


class _Watch:
    """``watch`` in a thread; records each tally it reports."""

    def __init__(self, address: str, env: FleetEnv, **kw: Any) -> None:
        from fusionedge.export.fleet.watch import watch

        self.tallies: list[Any] = []
        self.stop = threading.Event()
        self.result: list[Any] = []
        self.error: list[BaseException] = []
        kw.setdefault("stop", self.stop)

        def run() -> None:
            try:
                self.result.append(watch(address, env.repo, "student", on_tally=self.tallies.append, **kw))
            except BaseException as e:  # noqa: BLE001 - re-raised by wait() and report()
                self.error.append(e)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait(self, pred: Callable[[Any], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error:
                raise self.error[0]
            if self.tallies and pred(self.tallies[-1]):
                return
            if not self.thread.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"the watch never reported the expected tally; last: "
                             f"{self.tallies[-1] if self.tallies else None}")

    def report(self, timeout: float = 30.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "watch did not end"
        if self.error:
            raise self.error[0]
        return self.result[0]


# ------------------------------------------------------------------- forged statuses, plain broker


def test_three_forged_failures_on_one_topic_do_not_pause_a_healthy_rollout(tmp_path, env):
    broker = Mosquitto(tmp_path)
    try:
        real = [f"dev-{i}" for i in range(1, 6)]
        for d in real:
            _report(broker.address, tmp_path, d, "updated")
        w = _Watch(broker.address, env, min_devices=3, max_failure_rate=0.2, timeout_s=8)
        w.wait(lambda t: len(t.succeeded) == 5)
        # one publisher, one topic: two bodies speak for real devices, one for itself
        forged = [_status("dev-1", "failed"), _status("dev-2", "failed"), _status("mallory", "failed"),
                  _status("mallory", "failed"), _status("mallory", "rolled-back")]
        assert _forge(broker.address, _topic("mallory"), [json.dumps(s).encode() for s in forged]) == \
            "published"
        time.sleep(1.0)
        w.stop.set()
        report = w.report()
        assert not report.paused, report.reason
        assert report.tallies[1].succeeded == real and report.tallies[1].failed == ["mallory"]
        assert report.dropped == 2 and report.messages == 5 + 3
    finally:
        broker.close()


def test_a_hundred_forged_updates_do_not_hide_ten_rollbacks(tmp_path, env):
    from fusionedge.export.fleet.repo import repository_status

    broker = Mosquitto(tmp_path)
    try:
        _report(broker.address, tmp_path, "dev-canary", "updated")
        w = _Watch(broker.address, env, min_devices=11, max_failure_rate=0.2, timeout_s=30)
        w.wait(lambda t: t.succeeded == ["dev-canary"])  # subscribed
        forged = [json.dumps(_status(f"fake-{i:03d}", "updated")).encode() for i in range(100)]
        assert _forge(broker.address, _topic("mallory"), forged) == "published"
        time.sleep(1.0)  # the forgeries reach the watch before the real rollbacks
        rolled_back = [f"dev-{i:02d}" for i in range(10)]
        for d in rolled_back:
            _report(broker.address, tmp_path, d, "rolled-back")
        report = w.report()
        assert report.paused, report.reason
        assert report.tallies[1].failed == rolled_back and report.tallies[1].succeeded == ["dev-canary"]
        assert report.dropped == 100
        assert repository_status(env.repo)["models"]["student"]["rollout"]["paused"] is True
    finally:
        broker.close()


HOSTILE = {  # device id in the topic -> retained payload
    "nest-deep": b"[" * 100_000 + b"]" * 100_000,
    "nest-small": (b'{"device_id": "nest-small", "state": "failed", "model": "student", "release": 1, '
                   b'"health": ' + b"[" * 1800 + b"]" * 1800 + b"}"),
    "list-release": json.dumps(_status("list-release", "failed", release=[1])).encode(),
    "bool-release": json.dumps(_status("bool-release", "failed", release=True)).encode(),
    "dict-model": json.dumps({**_status("dict-model", "failed"), "model": {"a": 1}}).encode(),
    "nan-health": json.dumps(_status("nan-health", "failed", health={"x": float("nan")})).encode(),
    "long-int": (b'{"device_id": "long-int", "state": "failed", "model": "student", "release": 1'
                 + b"0" * 60 + b"}"),
    "not-utf8": b"\xff\xfe\x00failed",
    "not-json": b"failed",
    "array": b"[]",
    "null": b"null",
    "no-id": json.dumps({k: v for k, v in _status("x", "failed").items() if k != "device_id"}).encode(),
    "bad-state": json.dumps(_status("bad-state", "FAILED; DROP")).encode(),
    "too-big": json.dumps(_status("too-big", "failed", error="x" * 5000)).encode(),
    "other-id": json.dumps(_status("dev-1", "failed")).encode(),
}


def test_hostile_retained_payloads_are_dropped_and_the_watch_keeps_running(tmp_path, env, capsys):
    broker = Mosquitto(tmp_path)
    try:
        for device, payload in HOSTILE.items():
            assert _forge(broker.address, _topic(device), [payload], retain=True) == "published"
        assert _forge(broker.address, "fusionedge/devices/a b/status",
                      [json.dumps(_status("a b", "failed")).encode()], retain=True) == "published"
        _report(broker.address, tmp_path, "dev-1", "updated")
        _report(broker.address, tmp_path, "dev-2", "updated")
        # any counted failure would pause: min 1 device, no failure tolerated
        w = _Watch(broker.address, env, min_devices=1, max_failure_rate=0.0, timeout_s=4)
        report = w.report()
        assert not report.paused and report.reason == "timeout"
        assert report.tallies[1].succeeded == ["dev-1", "dev-2"] and report.tallies[1].failed == []
        assert report.dropped == len(HOSTILE) + 1 and report.messages == 2
        from fusionedge.cli.main import main  # the verb says so too

        assert main(["fleet", "watch", "--broker", broker.address, "--repo", str(env.repo), "--model", "student",
                     "--timeout", "2"]) == 0
        assert f"{len(HOSTILE) + 1} status message(s) dropped" in capsys.readouterr().out
    finally:
        broker.close()


# ------------------------------------------------------------------------- the status wire format


def test_status_wire_format_round_trips_and_fits_the_cap():
    from fusionedge.sdk.fleet.status import (
        STATUS_MAX_BYTES,
        encode_status,
        offline_status,
        parse_status,
        status_topic,
    )

    status = _status("cam-7", "updated", health={"latency_ms_median": 1.5, "engine": {"plan": "abc"}},
                     device_class="x86-cpu")
    assert parse_status(status_topic("cam-7"), encode_status(status)) == status
    long = _status("cam-7", "failed", error="é" * 10_000, error_type="UpdateError")
    wire = encode_status(long)
    back = parse_status(status_topic("cam-7"), wire)
    assert len(wire) <= STATUS_MAX_BYTES < len(json.dumps(long).encode())
    assert back["error"].endswith("...") and back["error_type"] == "UpdateError" and back["state"] == "failed"
    will = parse_status(status_topic("cam-7"), encode_status(offline_status("cam-7")))
    assert will["state"] == "offline" and will["release"] is None and will["ts"]


@pytest.mark.parametrize("device", sorted(HOSTILE))
def test_parse_status_refuses_each_hostile_payload(device):
    from fusionedge.sdk.errors import InputError
    from fusionedge.sdk.fleet.status import parse_status

    with pytest.raises(InputError):
        parse_status(_topic(device), HOSTILE[device])


@pytest.mark.parametrize("topic", ["fusionedge/devices/a+b/status", "fusionedge/devices//status",
                                   "fusionedge/devices/x/y/status", "other/x/status", "fusionedge/devices/x"])
def test_parse_status_refuses_topics_that_name_no_device(topic):
    from fusionedge.sdk.errors import InputError
    from fusionedge.sdk.fleet.status import parse_status

    with pytest.raises(InputError, match="not a device status topic"):
        parse_status(topic, json.dumps(_status("x", "updated")).encode())


def test_mqtt_security_reads_the_password_from_a_file_or_the_environment(tmp_path):
    from fusionedge.sdk.errors import InputError
    from fusionedge.sdk.fleet.status import PASSWORD_ENV, MqttSecurity

    ca = tmp_path / "ca.pem"
    ca.write_text("not checked until connecting")
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    sec = MqttSecurity.from_options(ca=ca, username="cam-7", password_file=secret, environ={})
    assert sec.tls and sec.password == "s3cret" and "s3cret" not in repr(sec)
    assert MqttSecurity.from_options(username="cam-7", environ={PASSWORD_ENV: "e"}).password == "e"
    assert MqttSecurity.from_options(environ={PASSWORD_ENV: "e"}) is None
    with pytest.raises(InputError, match="needs --mqtt-username"):
        MqttSecurity.from_options(password_file=secret, environ={})
    with pytest.raises(InputError, match="not a readable file"):
        MqttSecurity.from_options(ca=tmp_path / "missing.pem", environ={})
    with pytest.raises(InputError, match="needs its certificate"):
        MqttSecurity.from_options(ca=ca, key=ca, environ={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InputError, match="empty"):
        MqttSecurity.from_options(username="cam-7", password_file=tmp_path / "empty", environ={})


def test_the_cli_takes_no_password_on_the_command_line_and_reports_a_bad_ca_in_one_line(tmp_path, capsys):
    from fusionedge.cli.main import main

    base = ["fleet", "watch", "--broker", "127.0.0.1:1", "--repo", str(tmp_path), "--model", "student"]
    for option in ("--mqtt-password", "--mqtt-pass"):  # not even as an abbreviation of --mqtt-password-file
        with pytest.raises(SystemExit) as exit_:
            main([*base, "--mqtt-username", "w", option, "s3cret"])
        assert exit_.value.code == 2 and "s3cret" not in capsys.readouterr().err
    assert main([*base, "--mqtt-ca", str(tmp_path / "missing.pem")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MQTT CA file" in err[0] and "missing.pem" in err[0]


# --------------------------------------------------- TLS, per-device credentials and the ACL example


def _pki(folder: Path, clients: list[str]) -> None:
    """A CA, a server certificate for 127.0.0.1, and a client certificate per name (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save(stem: str, key: Any, cert: Any) -> None:
        (folder / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def builder(subject: str, issuer: x509.Name, key: Any) -> Any:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (builder("fleet test CA", name("fleet test CA"), ca_key)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    save("ca", ca_key, ca)
    for cn in ["server", *clients]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (builder(cn, ca.subject, key)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                            critical=False))
        if cn == "server":
            b = (b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                              x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                 critical=False)
                 .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        else:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        save(cn, key, b.sign(ca_key, hashes.SHA256()))


class _Secure:
    """mosquitto with TLS (client certificates required), a password file and the shipped ACL."""

    def __init__(self, workdir: Path, devices: list[str]) -> None:
        self.pki = workdir / "pki"
        _pki(self.pki, [*devices, WATCHER])
        self.passwords = {user: f"pw-{user}-{os.getpid()}" for user in [*devices, WATCHER]}
        passwd = workdir / "passwd"
        tool = shutil.which("mosquitto_passwd")
        if tool is None:
            pytest.skip("mosquitto_passwd is not installed (Debian package mosquitto)")
        for i, (user, password) in enumerate(self.passwords.items()):
            subprocess.run([tool, *(["-c"] if i == 0 else []), "-b", str(passwd), user, password],
                           check=True, capture_output=True, timeout=30)
        acl = workdir / "acl"
        shutil.copyfile(ACL_EXAMPLE, acl)
        self.broker = Mosquitto(workdir, settings=(
            f"user {getpass.getuser()}\n"  # read the files below as the test's user (root would switch)
            f"cafile {self.pki / 'ca.pem'}\ncertfile {self.pki / 'server.pem'}\n"
            f"keyfile {self.pki / 'server.key'}\nrequire_certificate true\nallow_anonymous false\n"
            f"password_file {passwd}\nacl_file {acl}\n"))
        self.address = self.broker.address

    def security(self, user: str, *, cert: str | None = None, password: str | None = None,
                 with_cert: bool = True) -> Any:
        from fusionedge.sdk.fleet.status import MqttSecurity

        cert = cert or user
        return MqttSecurity(ca_file=str(self.pki / "ca.pem"),
                            cert_file=str(self.pki / f"{cert}.pem") if with_cert else None,
                            key_file=str(self.pki / f"{cert}.key") if with_cert else None,
                            username=user, password=password or self.passwords[user])

    def retained(self, device: str, timeout: float = 10.0) -> dict:
        """The retained status of ``device``, read with the watcher's credentials."""
        from fusionedge.sdk.fleet.status import new_client, parse_status

        seen: dict[str, dict] = {}
        client = new_client(f"probe-{time.time_ns()}", self.security(WATCHER))
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(_topic(device), qos=1)
        client.on_message = lambda c, u, msg: seen.update({device: parse_status(msg.topic, msg.payload)})
        host, port = self.address.rsplit(":", 1)
        client.connect(host, int(port))
        client.loop_start()
        deadline = time.monotonic() + timeout
        while device not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        client.disconnect()
        client.loop_stop()
        assert device in seen, f"no retained status for {device}"
        return seen[device]

    def close(self) -> None:
        self.broker.close()


def test_a_status_forged_without_the_devices_credentials_never_reaches_watch(tmp_path, env):
    devices = ["dev-1", "dev-2", "dev-3"]
    secure = _Secure(tmp_path, devices)
    try:
        for d in devices:
            _report(secure.address, tmp_path, d, "updated", security=secure.security(d))
        w = _Watch(secure.address, env, min_devices=1, max_failure_rate=0.0, timeout_s=60,
                   security=secure.security(WATCHER))
        w.wait(lambda t: len(t.succeeded) == 3)
        failed = [json.dumps(_status("dev-1", "failed")).encode()]
        attempts = {
            "another device's credentials": _forge(secure.address, _topic("dev-1"), failed,
                                                   security=secure.security("dev-2")),
            "the watcher's credentials": _forge(secure.address, _topic("dev-1"), failed,
                                                security=secure.security(WATCHER)),
            "the watcher, on its own name": _forge(
                secure.address, _topic(WATCHER), [json.dumps(_status(WATCHER, "failed")).encode()],
                security=secure.security(WATCHER)),
            "a wrong password": _forge(secure.address, _topic("dev-1"), failed,
                                       security=secure.security("dev-1", password="guess")),
            "no client certificate": _forge(secure.address, _topic("dev-1"), failed,
                                            security=secure.security("dev-1", with_cert=False)),
            "no TLS": _forge(secure.address, _topic("dev-1"), failed),
        }
        # the broker drops what the ACL forbids (MQTT 3.1.1 acknowledges it all the same) ...
        assert attempts["another device's credentials"] == "published"
        assert attempts["the watcher's credentials"] == "published"
        assert attempts["the watcher, on its own name"] == "published"
        # ... and turns away a client without the device's password, certificate, or TLS
        assert attempts["a wrong password"].startswith("refused"), attempts
        assert attempts["no client certificate"].startswith("no connection"), attempts
        assert attempts["no TLS"].startswith("no connection"), attempts
        # a device with credentials can write its own topic, but cannot speak for another device there
        assert _forge(secure.address, _topic("dev-2"), failed, security=secure.security("dev-2")) == "published"
        time.sleep(1.0)
        w.stop.set()
        report = w.report()
        assert not report.paused, report.reason
        assert report.tallies[1].succeeded == devices and report.tallies[1].failed == []
        assert report.messages == 3 and report.dropped == 1  # only dev-2's own-topic lie reached it
        assert secure.retained("dev-1")["state"] == "updated"  # a clean disconnect sends no last will
    finally:
        secure.close()


def test_watch_reports_a_broker_that_refuses_it_or_a_certificate_it_cannot_trust(tmp_path, env):
    from fusionedge.export.fleet.keys import RepositoryError
    from fusionedge.export.fleet.watch import watch
    from fusionedge.sdk.fleet.status import MqttSecurity

    secure = _Secure(tmp_path, ["dev-1"])
    try:
        with pytest.raises(RepositoryError, match="refused"):
            watch(secure.address, env.repo, "student", timeout_s=1,
                  security=secure.security(WATCHER, password="guess"))
        _pki(tmp_path / "other", [])
        with pytest.raises(RepositoryError, match="cannot reach"):
            watch(secure.address, env.repo, "student", timeout_s=1,
                  security=MqttSecurity(ca_file=str(tmp_path / "other" / "ca.pem"), username=WATCHER,
                                        password=secure.passwords[WATCHER]))
    finally:
        secure.close()


def test_a_killed_agent_shows_offline_and_keeps_its_verdict(tmp_path, env):
    device = "dev-k"
    secure = _Secure(tmp_path, [device])
    password_file = tmp_path / "dev-k.password"
    password_file.write_text(secure.passwords[device] + "\n")
    password_file.chmod(0o600)
    pki = secure.pki
    w = _Watch(secure.address, env, min_devices=1, max_failure_rate=0.5, timeout_s=240,
               security=secure.security(WATCHER))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusionedge.cli.main", "fleet", "agent", "--url", env.url, "--device-id", device,
         "--state-dir", str(tmp_path / "devices" / device), "--device-class", "x86-cpu", "--model", "student",
         "--root", str(env.trusted_root), "--mqtt", secure.address, "--mqtt-ca", str(pki / "ca.pem"),
         "--mqtt-cert", str(pki / f"{device}.pem"), "--mqtt-key", str(pki / f"{device}.key"),
         "--mqtt-username", device, "--mqtt-password-file", str(password_file), "--interval", "600", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        w.wait(lambda t: t.succeeded == [device], timeout=180)  # the agent updated and said so over TLS
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 15
        while secure.retained(device)["state"] != "offline":
            assert time.monotonic() < deadline, "the broker never published the agent's last will"
            time.sleep(0.2)
        time.sleep(0.5)
        w.stop.set()
        report = w.report()
        assert report.offline == [device]
        assert report.tallies[1].succeeded == [device] and not report.paused  # offline is not a verdict
        assert json.loads(proc.stdout.readline())["action"] == "updated"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        w.stop.set()
        secure.close()
