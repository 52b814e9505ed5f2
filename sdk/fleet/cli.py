"""``fusionedge fleet agent``: run the device update agent from the command line.

::

    fusionedge fleet agent --url https://updates.example.com/fleet --device-id cam-042 \\
        --state-dir /var/lib/fusionedge --device-class jetson-orin --model student \\
        --root /etc/fusionedge/root.json --mqtt broker.local:1883 --interval 300

``--once`` (the default) runs one check, prints its outcome and exits with status 0 when it ended
without an error, 1 when it failed or rolled back (the model in use is untouched), 2 for bad
arguments or an unusable state folder. ``--interval S`` checks every S seconds until interrupted.

:func:`add_agent_parsers` adds the verb to the ``fleet`` sub-parsers that
``fusionedge.export.fleet_cli.add_fleet_parser`` returns. The rollout monitor, ``fleet watch``, runs
on the release server and is added by ``fusionedge.export.fleet_watch.add_watch_parser`` (the device
runtime never imports ``fusionedge.export``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_agent_parsers"]


def _format(outcome: Any) -> str:
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

    agent = Agent(
        args.url, args.device_id, args.state_dir, device_class=args.device_class, model=args.model,
        cohort=args.cohort, root=args.root, backends=args.backends, mqtt=args.mqtt,
        latency_budget_ms=args.latency_budget_ms, timeout_s=args.timeout, progress=not args.json,
    )
    failed = False

    def show(outcome: Any) -> None:
        nonlocal failed
        failed = outcome.error is not None
        if args.json:
            json.dump(outcome.to_dict(), sys.stdout)
            sys.stdout.write("\n")
        else:
            print(_format(outcome))
        sys.stdout.flush()

    with agent:
        for line in agent.recover():
            print(f"recovered: {line}", file=sys.stderr)
        if args.interval is None:
            show(agent.check_once())
        else:
            try:
                agent.run(args.interval, max_checks=args.max_checks, on_outcome=show)
            except KeyboardInterrupt:
                pass
    return 1 if failed else 0


def add_agent_parsers(fleet_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``agent`` to the ``fleet`` sub-parsers.

    Args:
        fleet_subparsers: the object ``add_fleet_parser`` returns (``argparse`` sub-parsers).

    Returns:
        The ``agent`` parser (its handler is set as ``func``).
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
    p.add_argument("--backends", type=lambda s: [b for b in s.split(",") if b], default=["onnxruntime"],
                   help="ordered, comma-separated backends; the health check needs the first available one")
    p.add_argument("--mqtt", default=None, metavar="HOST:PORT", help="publish status to this MQTT broker")
    p.add_argument("--latency-budget-ms", type=float, default=2000.0,
                   help="largest median golden-inference latency the health check accepts")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds of server silence tolerated")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="run one check and exit (the default)")
    when.add_argument("--interval", type=float, default=None, metavar="S", help="check every S seconds")
    p.add_argument("--max-checks", type=int, default=None, help="with --interval: stop after N checks")
    p.add_argument("--json", action="store_true", help="print each outcome as one JSON object")
    p.set_defaults(func=_cmd_agent)
    return p
