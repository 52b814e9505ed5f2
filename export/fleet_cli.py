"""``fusionedge fleet ...``: the repository-side verbs (init, publish, rollout, timestamp, ...).

:func:`add_fleet_parser` registers the ``fleet`` verb on the main parser's sub-parsers and returns
the fleet sub-parsers, so the device side can add its own verbs (``agent``, ``watch``) beside these.
Every verb takes ``--json`` (one JSON object on stdout) and reports a bad repository, a missing key
or bad input as a :class:`~fusionedge.export.fleet_repo.RepositoryError` (one line, exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from fusionedge.export.fleet_keys import ROLES, RepositoryError

__all__ = ["add_fleet_parser"]


def _print(args: argparse.Namespace, obj: dict, text: str) -> None:
    if args.json:
        json.dump(obj, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(text)
    sys.stdout.flush()


def _role_values(items: list[str] | None, what: str, cast: Any) -> dict:
    """Parse repeated ``ROLE=VALUE`` options."""
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


# ------------------------------------------------------------------------------------------ verbs


def _cmd_init(args: argparse.Namespace) -> int:
    from fusionedge.export.fleet_repo import init_repository, repository_status

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
    from fusionedge.export.fleet_repo import bundle_target_path, publish

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
    from fusionedge.export.fleet_repo import set_rollout

    paused = True if args.pause else False if args.resume else None
    record = set_rollout(args.repo, model=args.model, version=args.version, percent=args.percent,
                         cohorts=args.cohort, paused=paused, online_keys=args.online_keys)
    state = "paused" if record["paused"] else "active"
    cohorts = ", ".join(record["cohorts"]) or "none"
    _print(args, record, f"rollout of {record['model']} {record['version']} (release {record['release']}): "
                         f"{record['percent']}% + cohorts {cohorts}, {state} (seq {record['seq']})")
    return 0


def _cmd_timestamp(args: argparse.Namespace) -> int:
    from fusionedge.export.fleet_repo import refresh_timestamp

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
    from fusionedge.export.fleet_repo import resign

    version = resign(args.repo, args.role, **_keys(args))
    _print(args, {"role": args.role, "version": version}, f"{args.role} re-signed as version {version}")
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    from fusionedge.export.fleet_repo import rotate_key

    keyids = rotate_key(args.repo, args.role, **_keys(args))
    _print(args, {"role": args.role, "keyids": keyids},
           f"{args.role} now signed by {', '.join(k[:12] + '…' for k in keyids)}; old key files removed")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from fusionedge.export.fleet_repo import repository_status

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
    from fusionedge.export.fleet_server import serve

    server = serve(args.repo, host=args.host, port=args.port)
    _print(args, {"url": server.url, "metadata": server.url + "/metadata/",
                  "targets": server.url + "/targets/"},
           f"serving {args.repo} at {server.url} (metadata/ and targets/ only; Ctrl-C stops)")
    server.serve_until_interrupted()
    return 0


# ----------------------------------------------------------------------------------------- parser


def add_fleet_parser(verbs: Any) -> Any:
    """Register ``fleet`` and its repository verbs on the main parser's sub-parsers.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.

    Returns:
        The ``fleet`` sub-parsers object, for the device side's ``add_agent_parsers``.
    """
    fleet = verbs.add_parser("fleet", help="signed model releases for device fleets (TUF repository)",
                             description="Publish signed model releases and roll them out to device fleets.")
    sub = fleet.add_subparsers(dest="fleet_verb", required=True, metavar="FLEET_VERB")

    def add(name: str, func: Any, help: str, *, offline: bool = False,
            online: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("repo", type=Path, metavar="REPO", help="the repository folder")
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        if offline:
            p.add_argument("--offline-keys", type=Path, default=None,
                           help="folder with the root/ and targets/ keys (default REPO/keys/offline)")
        if online:
            p.add_argument("--online-keys", type=Path, default=None,
                           help="folder with the snapshot/, timestamp/, rollouts/ keys "
                                "(default REPO/keys/online)")
        p.set_defaults(func=func)
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
    p.add_argument("--model", required=True)
    p.add_argument("--version", required=True)
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
        p.add_argument("--role", required=True, choices=ROLES)

    add("status", _cmd_status, "show versions, expiries, keys, releases and rollouts", online=False)

    p = add("serve", _cmd_serve, "serve metadata/ and targets/ on loopback (development)", online=False)
    p.add_argument("--host", default="127.0.0.1", help="a loopback address")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    return sub
