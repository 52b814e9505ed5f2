"""``fusionedge fleet ...``: signed model releases for device fleets, from the command line.

The repository side (``init``, ``publish``, ``rollout``, ``timestamp``, ``resign``, ``rotate-key``,
``status``, ``serve``) drives :mod:`fusionedge.export.fleet.repo`; ``agent`` runs the device update
agent (:mod:`fusionedge.sdk.fleet.agent`); ``watch`` follows device status over MQTT and pauses a
failing rollout (:func:`fusionedge.export.fleet.watch.watch`). Every verb takes ``--json``; a bad
repository, key or input is a :class:`~fusionedge.sdk.errors.FusionEdgeError` (one line, exit 2).
Every verb needs the ``fleet`` extra, checked when it runs; parsing imports nothing of it, nor
of :mod:`fusionedge.export` (a verb that only reads results must not load the export side).

``fleet agent`` exits with 0 when its check ended without an error, 1 when it failed or rolled back
(the model in use is untouched), 2 for bad arguments or an unusable state folder.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from fusionedge.cli.config import add_config_option
from fusionedge.cli.extras import needs
from fusionedge.cli.options import (
    add_backends_option,
    add_json_option,
    add_metrics_options,
    add_sub_verbs,
    start_metrics,
)
from fusionedge.cli.output import print_json

__all__ = ["add_agent_parsers", "add_fleet_parser", "add_watch_parser"]


def _print(args: argparse.Namespace, obj: dict, text: str) -> None:
    if args.json:
        print_json(obj)
    else:
        print(text, flush=True)


def _role_values(items: list[str] | None, what: str, cast: Callable[[str], Any]) -> dict:
    """Parse repeated ``ROLE=VALUE`` options."""
    from fusionedge.export.fleet.keys import ROLES, RepositoryError

    out = {}
    for item in items or []:
        role, sep, value = item.partition("=")
        if not sep or role not in ROLES:
            raise RepositoryError(
                f"--{what} {item!r}: expected ROLE=VALUE with ROLE one of {', '.join(ROLES)}")
        try:
            out[role] = cast(value)
        except ValueError as e:
            raise RepositoryError(f"--{what} {item!r}: {value!r} is not a valid value") from e
    return out


def _keys(args: argparse.Namespace) -> dict:
    return {"offline_keys": getattr(args, "offline_keys", None),
            "online_keys": getattr(args, "online_keys", None)}


# ------------------------------------------------------------------------------- repository verbs


def _cmd_init(args: argparse.Namespace) -> int:
    from fusionedge.export.fleet.repo import init_repository, repository_status

    root = init_repository(
        args.repo,
        thresholds=_role_values(args.threshold, "threshold", int),
        key_counts=_role_values(args.key_count, "key-count", int),
        expiry={r: timedelta(days=d) for r, d in _role_values(args.expiry, "expiry", float).items()},
        **_keys(args),
    )
    status = repository_status(args.repo)
    _print(args, {"root": str(root), **status},
           f"fleet repository created in {args.repo}\n"
           f"  trust anchor for devices: {root}\n"
           f"  move {Path(args.offline_keys or Path(args.repo) / 'keys' / 'offline')} off this machine "
           f"(root and targets keys); keep keys/online for `fleet timestamp` / `fleet rollout`")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from fusionedge.export.fleet.keys import RepositoryError
    from fusionedge.export.fleet.repo import bundle_target_path, publish

    engines = {}
    for item in args.engine or []:
        fp, sep, plan = item.partition("=")
        if not sep:
            raise RepositoryError(f"--engine {item!r}: expected FINGERPRINT=PLAN_FILE")
        engines[fp] = plan
    release = publish(args.repo, args.bundle, model=args.model, version=args.version,
                      device_classes=args.device_class or [], min_sdk=args.min_sdk, engines=engines,
                      **_keys(args))
    target = bundle_target_path(args.model, args.version)
    _print(args, {"model": args.model, "version": args.version, "release": release, "target": target},
           f"published {args.model} {args.version} as release {release} ({target}); "
           f"roll it out with `fusionedge fleet rollout`")
    return 0


def _cmd_rollout(args: argparse.Namespace) -> int:
    from fusionedge.export.fleet.repo import set_rollout

    paused = True if args.pause else False if args.resume else None
    record = set_rollout(args.repo, model=args.model, version=args.version, percent=args.percent,
                         cohorts=args.cohort, paused=paused, online_keys=args.online_keys)
    state = "paused" if record["paused"] else "active"
    cohorts = ", ".join(record["cohorts"]) or "none"
    _print(args, record, f"rollout of {record['model']} {record['version']} (release {record['release']}): "
                         f"{record['percent']}% + cohorts {cohorts}, {state} (seq {record['seq']})")
    return 0


def _cmd_timestamp(args: argparse.Namespace) -> int:
    from fusionedge.export.fleet.repo import refresh_timestamp

    report = refresh_timestamp(args.repo, online_keys=args.online_keys)
    lines = [f"timestamp version {report['timestamp']['version']}, expires {report['timestamp']['expires']}"]
    if report["renewed"]:
        lines.append("renewed: " + ", ".join(report["renewed"]))
    for role, expires in report["expiring"].items():
        lines.append(f"warning: {role} expires {expires}: run `fusionedge fleet resign REPO --role {role}` "
                     f"with the offline keys")
    _print(args, report, "\n".join(lines))
    return 0


def _cmd_resign(args: argparse.Namespace) -> int:
    from fusionedge.export.fleet.repo import resign

    version = resign(args.repo, args.role, **_keys(args))
    _print(args, {"role": args.role, "version": version}, f"{args.role} re-signed as version {version}")
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    from fusionedge.export.fleet.repo import rotate_key

    keyids = rotate_key(args.repo, args.role, **_keys(args))
    _print(args, {"role": args.role, "keyids": keyids},
           f"{args.role} now signed by {', '.join(k[:12] + '…' for k in keyids)}; old key files removed")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from fusionedge.export.fleet.repo import repository_status

    status = repository_status(args.repo)
    lines = [f"{role:<10} v{info['version']:<4} expires {info['expires']}  "
             f"threshold {info['threshold']}/{len(info['keyids'])}" for role, info in status["roles"].items()]
    for name, model in status["models"].items():
        releases = ", ".join(f"{v} (release {r})" for v, r in model["versions"].items())
        lines.append(f"model {name}: {releases}")
        if model["rollout"]:
            r = model["rollout"]
            lines.append(f"  rollout {r['version']} {r['percent']}% cohorts {r['cohorts']} "
                         f"{'paused' if r['paused'] else 'active'} seq {r['seq']}")
    _print(args, status, "\n".join(lines))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from fusionedge.export.fleet.server import serve

    server = serve(args.repo, host=args.host, port=args.port)
    _print(args, {"url": server.url, "metadata": server.url + "/metadata/",
                  "targets": server.url + "/targets/"},
           f"serving {args.repo} at {server.url} (metadata/ and targets/ only; Ctrl-C stops)")
    server.serve_until_interrupted()
    return 0


# ----------------------------------------------------------------------------- MQTT TLS and login


class _RefusePassword(argparse.Action):
    """``--mqtt-password``: refused without echoing the value (argparse would else take it as an
    abbreviation of ``--mqtt-password-file`` and print the password as a missing file's name)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None) -> None:
        parser.error("a password is never taken on the command line: use --mqtt-password-file FILE or "
                     "the FUSIONEDGE_MQTT_PASSWORD environment variable")


def _add_mqtt_security_options(p: argparse.ArgumentParser, who: str) -> None:
    """``--mqtt-ca/-cert/-key/-username/-password-file``; the password never goes on the command line."""
    p.add_argument("--mqtt-ca", type=Path, default=None, metavar="PEM",
                   help="CA certificate(s) of the broker; turns TLS on")
    p.add_argument("--mqtt-cert", type=Path, default=None, metavar="PEM",
                   help="client certificate, for a broker that requires one (turns TLS on)")
    p.add_argument("--mqtt-key", type=Path, default=None, metavar="PEM",
                   help="the client certificate's private key (omit when --mqtt-cert holds it)")
    p.add_argument("--mqtt-username", default=None, help=f"the broker username ({who})")
    p.add_argument("--mqtt-password-file", type=Path, default=None, metavar="FILE",
                   help="file holding the broker password (default: the FUSIONEDGE_MQTT_PASSWORD "
                        "environment variable)")
    p.add_argument("--mqtt-password", action=_RefusePassword, help=argparse.SUPPRESS)


def _mqtt_security(args: argparse.Namespace) -> Any:
    from fusionedge.sdk.fleet.status import MqttSecurity

    return MqttSecurity.from_options(ca=args.mqtt_ca, cert=args.mqtt_cert, key=args.mqtt_key,
                                     username=args.mqtt_username, password_file=args.mqtt_password_file)


# ------------------------------------------------------------------------------------ device agent


def _format_outcome(outcome: Any) -> str:
    rel = outcome.release
    about = f" {rel.label}" if rel is not None else ""
    text = f"{outcome.action}{about}; running {outcome.running or 'nothing'}"
    if outcome.error is not None:
        text += f"\n  {type(outcome.error).__name__}: {outcome.error}"
    if outcome.health:
        h = outcome.health
        text += (f"\n  health: self-test max |err| {h.get('self_test_max_abs_err', float('nan')):.3g}, "
                 f"median latency {h.get('latency_ms_median', float('nan')):.2f} ms on {h.get('backend')}")
    return text


def _cmd_agent(args: argparse.Namespace) -> int:
    from fusionedge.sdk.fleet.agent import Agent

    metrics = server = None
    if args.metrics_port is not None:
        from fusionedge.cli.extras import require_extra

        require_extra("telemetry")
        from fusionedge.sdk.telemetry import AgentMetrics

        metrics = AgentMetrics()
    agent = Agent(
        args.url, args.device_id, args.state_dir, device_class=args.device_class, model=args.model,
        cohort=args.cohort, root=args.root, backends=args.backends, mqtt=args.mqtt,
        mqtt_security=_mqtt_security(args),
        latency_budget_ms=args.latency_budget_ms, timeout_s=args.timeout, progress=not args.json,
    )
    failed = False

    def show(outcome: Any) -> None:
        nonlocal failed
        failed = outcome.error is not None
        if metrics is not None:
            metrics.observe(outcome, agent.current_release())
        if args.json:
            print_json(outcome.to_dict(), indent=None)  # one line per check (JSON Lines)
        else:
            print(_format_outcome(outcome), flush=True)

    with agent:
        for line in agent.recover():
            print(f"recovered: {line}", file=sys.stderr)
        if metrics is not None:
            metrics.set_release(agent.current_release())
            server = start_metrics(args, metrics.registry)
        try:
            if args.interval is None:
                show(agent.check_once())
            else:
                try:
                    agent.run(args.interval, max_checks=args.max_checks, on_outcome=show)
                except KeyboardInterrupt:
                    pass
        finally:
            if server is not None:
                server.close()
    return 1 if failed else 0


def add_agent_parsers(fleet_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``agent`` to the ``fleet`` sub-parsers.

    Args:
        fleet_subparsers: the ``argparse`` sub-parsers of ``fleet`` (what :func:`add_fleet_parser`
            creates; tests may pass their own).

    Returns:
        The ``agent`` parser (its guarded handler is set as ``func``).
    """
    p = fleet_subparsers.add_parser(
        "agent", help="check a fleet repository for updates and install them (device side)",
        description="Check a fleet repository for this device's model, install a due release after "
                    "verification and a health check, or roll it back.")
    p.add_argument("--url", required=True, help="repository base URL (serves metadata/ and targets/)")
    p.add_argument("--device-id", required=True, help="this device's id (letters, digits, . _ -)")
    p.add_argument("--state-dir", required=True, type=Path, help="the agent's state folder")
    p.add_argument("--device-class", required=True, help="e.g. jetson-orin or x86-cpu")
    p.add_argument("--model", required=True, help="the fleet model name this device runs")
    p.add_argument("--cohort", default=None, help="a named cohort, e.g. canary")
    p.add_argument("--root", type=Path, default=None,
                   help="the trusted root.json shipped with the device (default STATE/root.json)")
    add_backends_option(p, help="ordered, comma-separated backends; the health check needs the first "
                                "available one")
    p.add_argument("--mqtt", default=None, metavar="HOST:PORT", help="publish status to this MQTT broker")
    _add_mqtt_security_options(p, "this device's id, for a broker ACL with %%u")
    p.add_argument("--latency-budget-ms", type=float, default=2000.0,
                   help="largest median golden-inference latency the health check accepts")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds of server silence tolerated, and the most a response's headers may take")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="run one check and exit (the default)")
    when.add_argument("--interval", type=float, default=None, metavar="S",
                      help="check every S seconds ±20%% (jitter seeded by the device id)")
    p.add_argument("--max-checks", type=int, default=None, help="with --interval: stop after N checks")
    add_json_option(p, help="print each outcome as one JSON object (one line)")
    add_metrics_options(p, "the agent (release in use, last check, failures, rollbacks)")
    add_config_option(p, "FUSIONEDGE_AGENT_")
    p.set_defaults(func=needs("fleet", _cmd_agent))
    return p


# ---------------------------------------------------------------------------------- rollout watch


def _cmd_watch(args: argparse.Namespace) -> int:
    from fusionedge.export.fleet.watch import ReleaseTally, watch

    def show(t: ReleaseTally) -> None:
        if not args.json:
            print(f"release {t.release}: {len(t.succeeded)} updated, {len(t.failed)} failed "
                  f"({t.failure_rate:.0%} of {t.devices})", flush=True)

    try:
        report = watch(args.broker, args.repo, args.model, min_devices=args.min_devices,
                       max_failure_rate=args.max_failure_rate, timeout_s=args.timeout,
                       online_keys=args.online_keys, on_tally=show, security=_mqtt_security(args))
    except KeyboardInterrupt:
        return 130
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.reason)
        if report.dropped:
            print(f"{report.dropped} status message(s) dropped: malformed, oversized, or naming another "
                  f"device than their topic (see the log)")
        if report.offline:
            print(f"offline (last will): {', '.join(report.offline)}")
    return 0


def add_watch_parser(fleet_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``watch`` to the ``fleet`` sub-parsers.

    Args:
        fleet_subparsers: the ``argparse`` sub-parsers of ``fleet``.

    Returns:
        The ``watch`` parser (its guarded handler is set as ``func``).
    """
    p = fleet_subparsers.add_parser(
        "watch", help="follow device status over MQTT and pause a failing rollout",
        description="Subscribe to fusionedge/devices/+/status, tally the rollout release's successes and "
                    "failures, and pause the rollout when the failure rate exceeds the threshold.")
    p.add_argument("--broker", required=True, metavar="HOST:PORT", help="the MQTT broker devices publish to")
    p.add_argument("--repo", required=True, help="the fleet repository folder")
    p.add_argument("--model", required=True, help="the fleet model whose rollout is watched")
    p.add_argument("--min-devices", type=int, default=10, help="verdicts needed before judging (default 10)")
    p.add_argument("--max-failure-rate", type=float, default=0.2,
                   help="pause when more than this share of devices fail (default 0.2)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="stop watching after S seconds")
    p.add_argument("--online-keys", default=None, help="online keys folder (default REPO/keys/online)")
    _add_mqtt_security_options(p, "one with read access to every device's status topic")
    add_json_option(p, help="print the report as one JSON object")
    p.set_defaults(func=needs("fleet", _cmd_watch))
    return p


# ----------------------------------------------------------------------------------------- parser


def add_fleet_parser(verbs: Any) -> Any:
    """Register ``fleet`` and all its verbs (repository side, ``agent``, ``watch``).

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.

    Returns:
        The ``fleet`` sub-parsers object.
    """
    fleet = verbs.add_parser("fleet", help="signed model releases for device fleets (TUF repository)",
                             description="Publish signed model releases and roll them out to device fleets.")
    sub = add_sub_verbs(fleet, "fleet_verb")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str, *, offline: bool = False,
            online: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("repo", type=Path, metavar="REPO", help="the repository folder")
        add_json_option(p)
        if offline:
            p.add_argument("--offline-keys", type=Path, default=None,
                           help="folder with the root/ and targets/ keys (default REPO/keys/offline)")
        if online:
            p.add_argument("--online-keys", type=Path, default=None,
                           help="folder with the snapshot/, timestamp/, rollouts/ keys "
                                "(default REPO/keys/online)")
        p.set_defaults(func=needs("fleet", func))
        return p

    p = add("init", _cmd_init, "create a repository: keys and version-1 metadata", offline=True)
    p.add_argument("--threshold", action="append", metavar="ROLE=N",
                   help="signatures a role needs (repeatable; default 1 each)")
    p.add_argument("--key-count", action="append", metavar="ROLE=M",
                   help="keys generated for a role (repeatable; default: its threshold)")
    p.add_argument("--expiry", action="append", metavar="ROLE=DAYS",
                   help="validity of a role's metadata in days (defaults: root 365, targets 90, "
                        "rollouts 30, snapshot 7, timestamp 1)")

    p = add("publish", _cmd_publish, "publish a bundle folder as a new release", offline=True)
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="the bundle folder")
    p.add_argument("--model", required=True, help="the model's name in the fleet")
    p.add_argument("--version", required=True, help="the release version (semantic version)")
    p.add_argument("--device-class", action="append", required=True, metavar="CLASS",
                   help="a device class the release runs on (repeatable, at least one)")
    p.add_argument("--min-sdk", default=None, help="oldest fusionedge runtime that can run it")
    p.add_argument("--engine", action="append", metavar="FINGERPRINT=PLAN",
                   help="a prebuilt TensorRT plan for a device fingerprint (repeatable)")

    p = add("rollout", _cmd_rollout, "set the rollout of a published release (online keys)")
    p.add_argument("--model", required=True, help="the model's name in the fleet")
    p.add_argument("--version", required=True, help="the published version to roll out")
    p.add_argument("--percent", type=float, default=None,
                   help="share of devices 0-100 (default: keep the current rollout's percent)")
    p.add_argument("--cohort", action="append", default=None, metavar="NAME",
                   help="a cohort that gets it regardless of percent (repeatable; default: keep)")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--pause", action="store_true", help="pause the rollout")
    state.add_argument("--resume", action="store_true", help="resume a paused rollout")

    add("timestamp", _cmd_timestamp, "re-sign the timestamp (run from cron; online keys)")

    for name, func, help in (("resign", _cmd_resign, "re-sign a role with a new expiry"),
                             ("rotate-key", _cmd_rotate, "replace a role's keys (clients follow)")):
        p = add(name, func, help, offline=True)
        p.add_argument("--role", required=True, metavar="ROLE",
                       help="root, targets, snapshot, timestamp or rollouts (checked by the repository)")

    add("status", _cmd_status, "show versions, expiries, keys, releases and rollouts", online=False)

    p = add("serve", _cmd_serve, "serve metadata/ and targets/ on loopback (development)", online=False)
    p.add_argument("--host", default="127.0.0.1", help="a loopback address: 127.0.0.1, ::1 or localhost")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")

    add_agent_parsers(sub)
    add_watch_parser(sub)
    return sub
