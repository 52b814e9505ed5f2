"""``fusionedge quantize`` (INT8, optionally gated) and ``fusionedge fp16``: precision variants.

Each writes a sibling bundle (``precision: int8`` / ``fp16``) that ``Perception.load`` and
``fusionedge eval`` run unchanged; the work is :mod:`fusionedge.export.quantize`,
:mod:`fusionedge.export.precision_gate` and :mod:`fusionedge.export.fp16`. Both verbs need the
``train`` extra (the ONNX tooling comes with it), checked when they run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fusionedge.cli.extras import needs
from fusionedge.cli.options import add_json_option
from fusionedge.cli.output import print_json

__all__ = ["add_quantize_parsers"]


def _print(args: argparse.Namespace, obj: dict, text: str) -> None:
    if args.json:
        print_json(obj)
    else:
        print(text)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from fusionedge.export.quantize import QuantizeConfig, quantize_bundle

    config = QuantizeConfig(profile=args.profile, calibration=args.calibration, per_channel=not args.per_tensor,
                            exclude_frontend=not args.quantize_frontend, weight_bits=args.weight_bits)
    if args.validation is not None:
        from fusionedge.export.precision_gate import Budget, gate_bundle

        out, report = gate_bundle(
            args.bundle, args.out, args.data, args.validation, config=config,
            budget=Budget(args.budget_event, args.budget_det, args.budget_tags),
            calibration_limit=args.calibration_samples,
            overwrite=args.overwrite, progress=not args.json,
        )
        chosen = report.chosen
        _print(args, {"bundle": str(out), "gate": report.to_dict()},
               f"{out}: int8 ({args.profile}); kept {len(chosen.keep_float) if chosen else 0} layer(s) in "
               f"float; drop {chosen.drop if chosen else '-'}")
        return 0
    out = quantize_bundle(args.bundle, args.out, args.data, config=config,
                          calibration_limit=args.calibration_samples, overwrite=args.overwrite)
    _print(args, {"bundle": str(out)}, f"{out}: int8 ({args.profile}, {args.calibration})")
    return 0


def _cmd_fp16(args: argparse.Namespace) -> int:
    from fusionedge.export.fp16 import fp16_bundle

    out = fp16_bundle(args.bundle, args.out, overwrite=args.overwrite)
    _print(args, {"bundle": str(out)}, f"{out}: fp16 (float32 inputs/outputs)")
    return 0


def add_quantize_parsers(verbs: Any) -> None:
    """Add ``fusionedge quantize`` and ``fusionedge fp16`` to the ``fusionedge`` sub-parsers.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.
    """
    p = verbs.add_parser("quantize", help="INT8 Q/DQ variant of a bundle (post-training quantization)",
                         description="Write an INT8 sibling bundle; with --validation, run the precision gate.")
    p.add_argument("--bundle", required=True, type=Path, help="the FP32 bundle")
    p.add_argument("--out", required=True, type=Path, help="the INT8 bundle folder to create")
    p.add_argument("--data", required=True, type=Path, help="calibration data-set manifest (or its folder)")
    p.add_argument("--profile", choices=("cpu", "tensorrt"), default="cpu",
                   help="cpu: uint8 activations, 7-bit weights (no 16-bit overflow on CPUs without VNNI); "
                        "tensorrt: symmetric int8 (zero-point 0)")
    p.add_argument("--calibration", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="how activation ranges are chosen from the calibration samples")
    p.add_argument("--calibration-samples", type=int, default=64, help="samples of --data to calibrate on")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default: per channel)")
    p.add_argument("--weight-bits", type=int, default=8,
                   help="symmetric weight grid in bits, stored as int8 (e.g. 4: W4A8); default 8")
    p.add_argument("--quantize-frontend", action="store_true", help="also quantize the audio front end")
    p.add_argument("--validation", type=Path, default=None,
                   help="labelled data-set manifest: run the precision gate against it")
    p.add_argument("--budget-event", type=float, default=0.01,
                   help="allowed event (an imported classifier's class) accuracy drop (0.01 = 1 pt)")
    p.add_argument("--budget-det", type=float, default=0.01, help="allowed detection mAP@0.5 drop")
    p.add_argument("--budget-tags", type=float, default=0.01,
                   help="allowed audio-tag mAP drop (gated for an imported audio tagger)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    add_json_option(p)
    p.set_defaults(func=needs("train", _cmd_quantize))

    help = "FP16 variant of a bundle (float32 inputs/outputs)"
    p = verbs.add_parser("fp16", help=help, description=help)
    p.add_argument("--bundle", required=True, type=Path, help="the FP32 bundle")
    p.add_argument("--out", required=True, type=Path, help="the FP16 bundle folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    add_json_option(p)
    p.set_defaults(func=needs("train", _cmd_fp16))
