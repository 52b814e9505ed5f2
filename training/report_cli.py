"""``fusionedge report``: the multimodal-learning comparison tables (see ``training/report.py``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_report_parser"]


def _cmd_report(args: argparse.Namespace) -> int:
    from fusionedge.sdk.errors import FusionEdgeError

    try:
        import torch  # noqa: F401  (only: is it installed?)
    except ImportError as e:
        raise FusionEdgeError("`fusionedge report` trains models: install torch and the training extra "
                              "(`pip install 'fusionedge[train]'`)") from e
    from fusionedge.training.report import ReportConfig, run_report

    kw: dict[str, Any] = dict(workdir=args.workdir, seed=args.seed, force=args.force, progress=not args.json)
    for name in ("train_samples", "val_samples", "test_samples", "epochs", "teacher_epochs", "pretrain_epochs",
                 "few_label_epochs", "few_label_seeds", "few_label_fraction", "batch_size"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.only:
        kw["only"] = tuple(x for x in args.only.split(",") if x)
    report = run_report(ReportConfig(**kw))
    if args.json:
        json.dump({"report": str(Path(args.workdir) / "report" / "report.md"), "checks": report["checks"],
                   "tables": report["tables"], "seconds": report["seconds"]}, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print((Path(args.workdir) / "report" / "report.md").read_text())
    return 0


def add_report_parser(verbs: Any) -> argparse.ArgumentParser:
    """Add ``fusionedge report`` to the CLI's sub-parsers.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` command.

    Returns:
        The new parser.
    """
    p = verbs.add_parser("report", help="train and compare fusion, pretraining, distillation and multi-task "
                                        "variants; write the tables",
                         description="Reproduce the multimodal-learning comparison tables (fusion gap, missing "
                                     "sensor, multi-task strategies, distillation, few-label pretraining). "
                                     "Finished runs in WORKDIR are reused.")
    p.add_argument("--workdir", required=True, type=Path, help="data, runs and report/ go here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None, help="comma-separated experiments (their dependencies are added)")
    p.add_argument("--force", action="store_true", help="retrain runs that are already finished")
    for name, kind in (("train-samples", int), ("val-samples", int), ("test-samples", int), ("epochs", int),
                       ("teacher-epochs", int), ("pretrain-epochs", int), ("few-label-epochs", int),
                       ("few-label-seeds", int), ("few-label-fraction", float), ("batch-size", int)):
        p.add_argument(f"--{name}", type=kind, default=None)
    p.add_argument("--json", action="store_true", help="print the checks and tables as JSON")
    p.set_defaults(func=_cmd_report)
    return p
