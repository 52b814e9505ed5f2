"""``fusionedge compress``: prune, 2:4-sparsify and quantize a trained model, with a Pareto report.

The work is :func:`fusionedge.export.compress.compress`; this verb parses the options and prints the
stages. Every stage is a sibling bundle under ``--out`` (``fp32/``, ``pruned-<R>/``, ``sparse-2of4/``,
``int8/``) beside ``report.md``, ``report.json`` and ``pareto.png``. A bad value (a prune ratio outside
(0, 1), a pattern other than 2:4, a budget nothing meets) stops the verb with one line naming it
(exit status 2) and leaves no ``--out`` folder behind. Needs the ``compress`` extra (torch-pruning)
for ``--prune``, and the ``train`` extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fusionedge.cli.extras import needs, require_extra
from fusionedge.cli.options import add_json_option
from fusionedge.cli.output import print_json
from fusionedge.sdk.errors import InputError

__all__ = ["add_compress_parser"]


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--prune takes FLOPs ratios in (0, 1), comma-separated; got {text!r}") from None


def _ratio_scale(items: list[str] | None) -> tuple[tuple[str, float], ...]:
    out = []
    for text in items or ():
        prefix, _, factor = text.partition("=")
        try:
            out.append((prefix.strip(), float(factor)))
        except ValueError:
            raise InputError(f"--ratio-scale takes MODULE=FACTOR (e.g. det_head=1.5), got {text!r}") from None
    return tuple(out)


def _cmd_compress(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from fusionedge.export.compress import CompressConfig, compress, with_budget_points
    from fusionedge.export.quantize import QuantizeConfig
    from fusionedge.training.finetune import FinetuneConfig

    ratios = _ratios(args.prune) if args.prune else ()
    if ratios:
        require_extra("compress")
    cfg = CompressConfig(
        prune=ratios, criterion=args.criterion, global_pruning=args.global_pruning, rounds=args.rounds,
        round_to=args.round_to, keep_narrow=args.keep_narrow, ratio_scale=_ratio_scale(args.ratio_scale),
        sparsity=args.sparsity, int8=args.int8, int8_nodes=args.int8_nodes,
        finetune=FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                distill=replace(FinetuneConfig().distill, det_feature=args.w_det_feature)),
        quantize=QuantizeConfig(profile=args.profile), train_limit=args.train_samples,
        val_limit=args.val_samples, test_limit=args.test_samples, calibration_limit=args.calibration_samples,
        latency_runs=args.latency_runs,
    )
    cfg = with_budget_points(cfg, args.budget_event, args.budget_map)
    report = compress(args.checkpoint, args.data, args.out, cfg, overwrite=args.overwrite, progress=not args.json)
    if args.json:
        print_json({"out": str(args.out), **report})
        return 0
    base = report["stages"][0]
    for s in report["stages"]:
        speed = base["latency"]["median_ms"] / s["latency"]["median_ms"]
        print(f"{args.out / s['bundle']}: {s['kind']}, event {s['test']['event_accuracy']:.4f}, "
              f"mAP {s['test']['detection_map50']:.4f}, {s['latency']['median_ms']:.2f} ms ({speed:.2f}x), "
              f"{s['size'] / 1024:.0f} KB")
    print(f"chosen: {report['chosen']}; report: {args.out / 'report.md'}")
    return 0


def add_compress_parser(verbs: Any) -> None:
    """Add ``fusionedge compress`` to the ``fusionedge`` sub-parsers.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.
    """
    help = "prune, 2:4-sparsify and quantize a checkpoint into sibling bundles, with a Pareto report"
    p = verbs.add_parser("compress", help=help, description=help)
    p.add_argument("--checkpoint", required=True, type=Path, help="the trained checkpoint (RUN/best.pt)")
    p.add_argument("--data", required=True, type=Path, help="a folder with train/, val/ and test/ data sets")
    p.add_argument("--out", required=True, type=Path, help="the folder to create (one bundle per stage)")
    p.add_argument("--prune", default=None, metavar="R[,R...]",
                   help="fraction(s) of the FLOPs to remove by channel pruning, each in (0, 1)")
    p.add_argument("--criterion", choices=("taylor", "magnitude", "bn_scale"), default="taylor",
                   help="channel importance for pruning (taylor: |w·dL/dw| from the training loss)")
    p.add_argument("--global-pruning", action="store_true", help="rank channels across layers")
    p.add_argument("--rounds", type=int, default=1, help="prune -> fine-tune rounds per ratio")
    p.add_argument("--round-to", type=int, default=8,
                   help="pruned channel counts are multiples of this (16 for ONNX Runtime on AVX-512 CPUs)")
    p.add_argument("--keep-narrow", action="store_true",
                   help="convolutions of at most 2 x --round-to channels keep them all (a cut would halve them)")
    p.add_argument("--ratio-scale", action="append", default=None, metavar="MODULE=FACTOR",
                   help="the convolutions under MODULE lose channels FACTOR times as fast (e.g. det_head=1.5); "
                        "repeatable")
    p.add_argument("--sparsity", default=None, metavar="PATTERN", help="2:4 semi-structured weight sparsity")
    p.add_argument("--int8", choices=("ptq", "qat"), default=None,
                   help="quantize the last FP32 stage (post-training, or after quantization-aware fine-tuning)")
    p.add_argument("--profile", choices=("cpu", "tensorrt"), default="cpu", help="INT8 profile")
    p.add_argument("--int8-nodes", choices=("conv", "all"), default="conv",
                   help="conv: quantize only the convolutions that gain on a CPU (default); all: every operator")
    p.add_argument("--budget-event", type=float, default=1.0,
                   help="allowed event-accuracy drop from fp32, in points (validation split)")
    p.add_argument("--budget-map", type=float, default=1.0, help="allowed detection mAP@0.5 drop, in points")
    p.add_argument("--epochs", type=float, default=1.0, help="distillation fine-tune epochs per stage")
    p.add_argument("--lr", type=float, default=5e-4, help="fine-tune learning rate")
    p.add_argument("--batch-size", type=int, default=32, help="fine-tune batch size")
    p.add_argument("--w-det-feature", type=float, default=0.0,
                   help="weight of the detection-feature distillation term in the fine-tune (0: off)")
    p.add_argument("--train-samples", type=int, default=None, help="fine-tune on the first N training samples")
    p.add_argument("--val-samples", type=int, default=None, help="check the budget on the first N validation samples")
    p.add_argument("--test-samples", type=int, default=None, help="report on the first N test samples")
    p.add_argument("--calibration-samples", type=int, default=64, help="INT8 calibration samples")
    p.add_argument("--latency-runs", type=int, default=50, help="timed batch-1 runs per stage")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    add_json_option(p)
    p.set_defaults(func=needs("train", _cmd_compress))
