"""``fusionedge doctor``: say what this machine can run, and fail when something required is missing.

The checks are :func:`fusionedge.sdk.doctor.run_checks` (ONNX Runtime and its providers, the NVIDIA
driver, TensorRT, OpenCV's video I/O, the native extension, the installed extras, an MQTT broker,
the clock source); this module prints them, one line each (``--json``: one object). The exit
status is 0, or 1 when something named with ``--need`` is not usable here, so a provisioning
script or a container's start can stop early with the reason.
"""

from __future__ import annotations

import argparse
from typing import Any

from fusionedge.cli.options import add_json_option
from fusionedge.cli.output import print_json

__all__ = ["EXIT_MISSING", "add_doctor_parser"]

#: Exit status when a ``--need`` is missing.
EXIT_MISSING = 1

#: ``--need`` choices (kept equal to fusionedge.sdk.doctor.NEEDS by a test; parsing imports no sdk module).
_NEEDS = ("onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt", "cuda", "gstreamer", "ffmpeg",
          "native", "native-cuda", "train", "fleet", "bench", "telemetry", "mqtt")


def _cmd_doctor(args: argparse.Namespace) -> int:
    from fusionedge.sdk.doctor import run_checks

    report = run_checks(mqtt=args.mqtt, timeout_s=args.timeout)
    missing = report.missing(args.need or [])
    if args.json:
        print_json({**report.to_dict(), "needs": args.need or [], "missing": [c.name for c in missing],
                    "ok": not missing})
    else:
        width = max(len(c.name) for c in report.checks)
        for c in report.checks:
            mark = "ok " if c.ok else "-- "
            text = c.detail if c.ok else (c.reason or "not usable")
            print(f"{mark}{c.name:<{width}}  {text}")
        if missing:
            print(f"missing: {', '.join(c.name for c in missing)}")
    return EXIT_MISSING if missing else 0


def add_doctor_parser(verbs: Any) -> argparse.ArgumentParser:
    """Add ``fusionedge doctor`` to the ``fusionedge`` sub-parsers; returns its parser.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.
    """
    help = "say what this machine can run (ONNX Runtime, CUDA, TensorRT, GStreamer, native code, extras)"
    p = verbs.add_parser("doctor", help=help,
                         description=help + "; exit 1 when something given with --need is missing")
    p.add_argument("--need", action="append", choices=_NEEDS, metavar="NAME",
                   help=f"exit 1 unless NAME is usable here (repeatable): {', '.join(_NEEDS)}")
    p.add_argument("--mqtt", default=None, metavar="HOST:PORT",
                   help="also check that an MQTT broker answers there (default: no broker check)")
    p.add_argument("--timeout", type=float, default=3.0, metavar="S",
                   help="seconds each probe (nvidia-smi, the broker) may take")
    add_json_option(p)
    p.set_defaults(func=_cmd_doctor)
    return p
