"""``fusionedge report``: train every comparison and write the multimodal-learning tables.

The experiments and the tables are :mod:`fusionedge.training.report`; this module parses the verb
and prints the report (``--json``: the checks and tables). It needs the ``train`` extra (torch),
checked when the verb runs.

``fusionedge report open-world --bundle OLD --bundle NEW --test DIR --outside DIR --out DIR`` is the
other report: bundles side by side on their test split and on outside media, with a reliability
diagram each (:mod:`fusionedge.training.open_world_report`; the runtime and matplotlib, no torch).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusionedge.cli.extras import needs
from fusionedge.cli.options import add_backends_option, add_json_option
from fusionedge.cli.output import print_json

__all__ = ["add_report_parser"]

#: ReportConfig fields settable from the command line: (flag, type, help with ReportConfig's default).
_SIZE_FLAGS = (("train-samples", int, "training scenes (default: 2000)"),
               ("val-samples", int, "validation scenes (default: 300)"),
               ("test-samples", int, "test scenes, from another seed (default: 400)"),
               ("epochs", int, "epochs of every supervised run (default: 10)"),
               ("teacher-epochs", int, "epochs of the distillation teacher (default: 6)"),
               ("pretrain-epochs", int, "epochs of audio-visual pretraining (default: 8)"),
               ("few-label-epochs", int, "epochs over the labelled subset in the few-label runs (default: 30)"),
               ("few-label-seeds", int, "seeds of the pretraining and few-label runs (default: 3)"),
               ("few-label-fraction", float, "labelled share of the training split (default: 0.1)"),
               ("batch-size", int, "samples per step (default: 32)"))


def _paths_as_text(value: Any) -> Any:
    """The report's tables may hold paths (run folders); JSON holds them as strings."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {k: _paths_as_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_paths_as_text(v) for v in value]
    return value


def _cmd_open_world(args: argparse.Namespace) -> int:
    from fusionedge.cli.extras import MissingExtraError

    try:
        import matplotlib  # noqa: F401 - the diagrams need it; say so before anything runs
    except ImportError as e:
        raise MissingExtraError("train", "matplotlib") from e
    from fusionedge.training.open_world_report import open_world_report

    report = open_world_report(args.bundle, args.test, args.outside, args.out, backends=args.backends,
                               progress=not args.json)
    if args.json:
        print_json({"markdown": report["markdown"], "bundles": {
            label: {k: r[k] for k in ("bundle", "model", "calibrated", "test", "outside", "diagram")}
            for label, r in report["bundles"].items()}})
    else:
        print(Path(report["markdown"]).read_text())
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from fusionedge.training.report import ReportConfig, run_report

    if args.workdir is None:
        args.parser.error("the following arguments are required: --workdir (or give a report: open-world)")

    kw: dict[str, Any] = {"workdir": args.workdir, "seed": args.seed, "force": args.force,
                          "progress": not args.json}
    for flag, _, _ in _SIZE_FLAGS:
        name = flag.replace("-", "_")
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.only:
        kw["only"] = tuple(x for x in args.only.split(",") if x)
    report = run_report(ReportConfig(**kw))
    path = Path(args.workdir) / "report" / "report.md"
    if args.json:
        print_json(_paths_as_text({"report": str(path), "checks": report["checks"],
                                   "tables": report["tables"], "seconds": report["seconds"]}))
    else:
        print(path.read_text())
    return 0


def add_report_parser(verbs: Any) -> argparse.ArgumentParser:
    """Add ``fusionedge report`` to the ``fusionedge`` sub-parsers.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.

    Returns:
        The verb's parser.
    """
    p = verbs.add_parser("report", help="train and compare fusion, pretraining, distillation and multi-task "
                                        "variants; write the tables",
                         description="Reproduce the multimodal-learning comparison tables (fusion gap, missing "
                                     "sensor, multi-task strategies, distillation, few-label pretraining). "
                                     "Finished runs in WORKDIR are reused.")
    p.add_argument("--workdir", type=Path, default=None, help="data, runs and report/ go here (required)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the data and of every run")
    p.add_argument("--only", default=None, help="comma-separated experiments (their dependencies are added)")
    p.add_argument("--force", action="store_true", help="retrain runs that are already finished")
    for flag, kind, flag_help in _SIZE_FLAGS:
        p.add_argument(f"--{flag}", type=kind, default=None, help=flag_help)
    add_json_option(p, help="print the checks and tables as JSON")
    p.set_defaults(func=needs("train", _cmd_report), parser=p)
    reports = p.add_subparsers(dest="report_verb", metavar="REPORT", title="other reports")
    help = "compare bundles on their test split and on outside media, with reliability diagrams"
    o = reports.add_parser("open-world", help=help,
                           description=help + ": event accuracy, macro-F1, tag mAP, detection mAP, ECE; false "
                                              "siren tags, false alarms, silence heard as a tag, siren recall, "
                                              "ECE and the OOD score's AUROC on the outside set")
    o.add_argument("--bundle", required=True, action="append", type=Path,
                   help="a bundle folder; repeat for each bundle to compare, in table order")
    o.add_argument("--test", required=True, type=Path, help="the labelled test manifest or its folder")
    o.add_argument("--outside", required=True, type=Path,
                   help="an outside-media manifest or its folder (fusionedge data outside)")
    o.add_argument("--out", required=True, type=Path, help="open_world.md, open_world.json and the PNGs go here")
    add_backends_option(o)
    add_json_option(o, help="print the numbers as JSON")
    o.set_defaults(func=_cmd_open_world)
    return p
