"""``fusionedge export``: a training checkpoint to a verified ONNX bundle.

The export (ONNX, checker, parity, bundle) is :func:`fusionedge.export.export_checkpoint`; this
module parses the verb and prints where the bundle went. It needs the ``train`` extra (torch and
the ONNX tooling), checked when the verb runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fusionedge.cli.extras import needs
from fusionedge.cli.options import add_json_option
from fusionedge.cli.output import print_json

__all__ = ["add_export_parser"]


def _cmd_export(args: argparse.Namespace) -> int:
    from fusionedge.export import export_checkpoint
    from fusionedge.sdk.bundle import load_bundle

    bundle = export_checkpoint(args.checkpoint, args.out, name=args.name, version=args.version,
                               progress=not args.json, overwrite=args.overwrite)
    calibration = None
    if args.calibrate_on is not None:  # fusionedge calibrate on the fresh bundle
        from fusionedge.export.calibrate import calibrate_bundle
        from fusionedge.sdk.errors import FusionEdgeError

        try:
            calibration = calibrate_bundle(bundle, args.calibrate_on, progress=not args.json)
        except FusionEdgeError as e:
            raise FusionEdgeError(f"{bundle} was written but not calibrated: {e}") from e
    digest = load_bundle(bundle, verify=False).digest  # what a release record or a deployment pins
    if args.json:
        print_json({"bundle": str(bundle), "digest": digest, **({"calibration": calibration} if calibration else {})})
    else:
        print(f"bundle written to {bundle} (digest sha256:{digest})")
    return 0


def add_export_parser(verbs: Any) -> argparse.ArgumentParser:
    """Add ``fusionedge export`` to the ``fusionedge`` sub-parsers; returns its parser.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.
    """
    help = "export a checkpoint to a verified ONNX bundle"
    p = verbs.add_parser("export", help=help, description=help)
    add_json_option(p)
    p.add_argument("--checkpoint", required=True, type=Path, help="a training checkpoint (best.pt or last.pt)")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to create")
    p.add_argument("--name", default=None, help="model name in the manifest (default: the registry name)")
    p.add_argument("--version", default="0.1.0", help="the model's version in the manifest")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.add_argument("--calibrate-on", type=Path, default=None, metavar="VAL_DIR",
                   help="then calibrate the bundle on this validation set, as fusionedge calibrate does "
                        "(default: not calibrated)")
    p.set_defaults(func=needs("train", _cmd_export))
    return p
