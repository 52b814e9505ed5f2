"""``fusionedge distill``: train a student from a teacher checkpoint (``train`` with ``--teacher``).

    fusionedge distill --teacher runs/teacher/best.pt --data DIR --out runs/student [--val DIR]
                       [--model fusion_student] [--epochs N] [--temperature T] [--json] ...

The handler is ``fusionedge train``'s, with ``TrainConfig.teacher`` and ``TrainConfig.distill``
set; it runs under ``torchrun`` exactly like ``train``. This module imports nothing heavy: the
CLI registers the verb with ``add_distill_parser(verbs)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_distill_parser"]

#: DistillWeights fields settable from the command line: (flag, field, help).
_WEIGHT_FLAGS = (("--temperature", "temperature", "softmax temperature of the event KL (default 4)"),
                 ("--w-event-kl", "event_kl", "weight of the event KL (default 0: it costs detection mAP here)"),
                 ("--w-tags", "tags", "weight of the audio-tag distillation (default 0.5)"),
                 ("--w-heatmap", "heatmap", "weight of the heatmap distillation (default 0)"),
                 ("--w-feature", "feature", "weight of the fused-embedding distillation (default 0)"),
                 ("--w-box", "box", "weight of the size/offset distillation at the teacher's objects (default 1)"),
                 ("--w-det-feature", "det_feature", "weight of the detection-feature imitation (default 1; 0 skips "
                  "caching the teacher's feature maps)"),
                 ("--w-hard", "hard", "weight of the ordinary supervised loss (default 1)"))


def _cmd_distill(args: argparse.Namespace) -> int:
    from fusionedge.cli.main import _cmd_train  # the one training handler (train + distill)

    weights = {name: getattr(args, name) for _, name, _ in _WEIGHT_FLAGS if getattr(args, name) is not None}
    extra: dict = {"teacher": args.teacher}
    if weights:
        from fusionedge.training.distill import DistillWeights

        extra["distill"] = DistillWeights(**weights)
    return _cmd_train(args, extra)


def add_distill_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``fusionedge distill`` on the CLI's verb sub-parsers.

    Args:
        verbs: the ``add_subparsers()`` object of the ``fusionedge`` parser.

    Returns:
        The verb's parser.
    """
    from fusionedge.cli.main import add_training_arguments  # the same options as `train`

    desc = "train a (small) student model from a frozen teacher checkpoint (knowledge distillation)"
    p = verbs.add_parser("distill", help=desc, description=desc)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--teacher", required=True, type=Path, help="teacher checkpoint (from `fusionedge train`)")
    add_training_arguments(p, model_help="student registry name")
    for flag, name, help in _WEIGHT_FLAGS:
        p.add_argument(flag, dest=name, type=float, default=None, help=help)
    p.set_defaults(func=_cmd_distill)
    return p
