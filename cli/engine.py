"""``fusionedge engine build|check``: TensorRT plans, cached per device inside a bundle.

``build`` writes this device's plan into ``<bundle>/engines/`` (:mod:`fusionedge.sdk.engine_build`);
``check`` says whether a plan matches this device and bundle
(:mod:`fusionedge.sdk.engine_fingerprint`). Building needs TensorRT, which the SDK reports as a
backend error when it is missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fusionedge.cli.options import add_json_option, add_sub_verbs
from fusionedge.cli.output import print_json

__all__ = ["add_engine_parser"]


def _cmd_build(args: argparse.Namespace) -> int:
    from fusionedge.sdk.engine_build import build_engine

    plan = build_engine(args.bundle, workspace_mib=args.workspace_mib, rebuild=args.rebuild,
                        progress=not args.json, verbose=args.trt_verbose)
    if args.json:
        print_json({"plan": str(plan)})
    else:
        print(plan)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from fusionedge.sdk.bundle import load_bundle
    from fusionedge.sdk.engine_fingerprint import check_fingerprint, device_fingerprint, plan_paths

    bundle = load_bundle(args.bundle)
    expected = device_fingerprint(bundle.manifest)
    plan = args.plan or plan_paths(bundle.engines_dir, expected)[0]
    fp = check_fingerprint(plan, expected)
    if args.json:
        print_json({"plan": str(plan), "fingerprint": fp.to_dict(), "ok": True})
    else:
        print(f"{plan}: matches this device ({fp.key})")
    return 0


def add_engine_parser(verbs: Any) -> None:
    """Add ``fusionedge engine build|check`` to the ``fusionedge`` sub-parsers.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.
    """
    help = "TensorRT plans (a per-device cache inside the bundle)"
    engine = verbs.add_parser("engine", help=help, description=help)
    sub = add_sub_verbs(engine, "engine_verb")
    help = "build the plan for this device into <bundle>/engines/"
    p = sub.add_parser("build", help=help, description=help)
    p.add_argument("--bundle", required=True, type=Path, help="the bundle folder")
    p.add_argument("--workspace-mib", type=int, default=1024, help="TensorRT builder workspace in MiB")
    p.add_argument("--rebuild", action="store_true", help="build even when a matching plan exists")
    p.add_argument("--trt-verbose", action="store_true", help="TensorRT INFO logging")
    add_json_option(p)
    p.set_defaults(func=_cmd_build)
    help = "check that a plan matches this device and bundle"
    p = sub.add_parser("check", help=help, description=help)
    p.add_argument("--bundle", required=True, type=Path, help="the bundle folder")
    p.add_argument("--plan", type=Path, default=None, help="a plan file (default: this device's key)")
    add_json_option(p)
    p.set_defaults(func=_cmd_check)
