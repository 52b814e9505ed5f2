"""``fusionedge pretrain``: self-supervised audio-visual pretraining of a model's encoders and fusion.

Registered by the CLI with ``add_pretrain_parser(verbs)``; importing this module imports nothing
heavy (torch is imported when the verb runs).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_pretrain_parser"]


def add_pretrain_parser(verbs: Any) -> argparse.ArgumentParser:
    """Add ``fusionedge pretrain`` to the CLI's sub-parsers.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` command.

    Returns:
        The verb's parser.
    """
    help = ("pretrain a model's video and audio encoders (and its fusion) on unlabelled clips "
            "(audio-visual correspondence)")
    p = verbs.add_parser("pretrain", help=help, description=help)
    p.add_argument("--data", required=True, type=Path, help="manifest or its folder (labels are not needed)")
    p.add_argument("--out", required=True, type=Path, help="run folder (pretrain.pt, metrics.json, config.json)")
    p.add_argument("--val", type=Path, default=None, help="held-out manifest (default: 10%% of --data)")
    p.add_argument("--model", default="fusion_student", help="registry name; needs video and audio")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a ModelConfig field (JSON value), e.g. --set video_depth=0; repeatable")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard-negatives", type=int, default=None,
                   help="time-shifted copies of each clip's audio used as extra negatives (default 2)")
    p.add_argument("--match-weight", type=float, default=None,
                   help="weight of the correspondence loss through the model's fusion, which then is pretrained "
                        "too (0: encoders only)")
    p.add_argument("--view-weight", type=float, default=None,
                   help="weight of the video-video loss between two views of each clip (crop, flip, exposure; "
                        "default 1, 0: off)")
    p.add_argument("--no-view-still", dest="view_still", action="store_false",
                   help="no still copies (each clip's frame repeated) as hard negatives of the view loss")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=_cmd_pretrain)
    return p


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from fusionedge.cli.main import _parse_overrides, _print_json, _require_training

    _require_training()
    from fusionedge.training.pretrain import PretrainConfig, pretrain

    # Options left unset keep PretrainConfig's defaults.
    optional = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "hard_negatives": args.hard_negatives, "match_weight": args.match_weight,
                "view_weight": args.view_weight, "val_data": args.val}
    cfg = PretrainConfig(data=args.data, out=args.out, model=args.model, seed=args.seed, view_still=args.view_still,
                         model_overrides=_parse_overrides(args.set), progress=not args.json,
                         **{k: v for k, v in optional.items() if v is not None})
    result = pretrain(cfg)
    if args.json:
        _print_json(result)
        return 0
    best, chance = result["best"], result["chance"]
    print(f"pretrained encoders written to {result['checkpoint']}")
    print(f"  best epoch {best['epoch']}: audio->video top-1 {best['a2v_top1']:.3f} (chance {chance['a2v_top1']:.3f}), "
          f"top-5 {best['a2v_top5']:.3f} (chance {chance['a2v_top5']:.3f}), "
          f"video->audio top-1 {best['v2a_top1']:.3f}, "
          f"shift discrimination {best['shift_discrimination']:.3f} (chance {chance['shift_discrimination']:.3f})"
          + (f", view top-1 {best['view_top1']:.3f} (chance {chance['view_top1']:.3f})" if "view_top1" in best else "")
          + (f", still discrimination {best['still_discrimination']:.3f} (chance 0.5)"
             if "still_discrimination" in best else "")
          + f" on {best['samples']} held-out clips")
    return 0
