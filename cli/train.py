"""``fusionedge train``, ``distill`` and ``pretrain``: the training verbs.

``train`` and ``distill`` share one handler and one option group
(:func:`fusionedge.cli.options.add_training_arguments`): ``distill`` is ``train`` with a teacher
checkpoint and distillation weights, and both run under ``torchrun`` alike (the process group is set
up here, from the environment, and only here). ``pretrain`` runs the self-supervised audio-visual
pretraining whose checkpoint ``train --init`` starts from. All three need the ``train`` extra
(torch), checked when the verb runs; parsing imports none of it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from fusionedge.cli.extras import needs
from fusionedge.cli.geometry_options import add_geometry_options, geometry_from_args, modalities_from_args
from fusionedge.cli.options import add_json_option, add_training_arguments, parse_overrides
from fusionedge.cli.output import print_json
from fusionedge.cli.predict import format_metrics
from fusionedge.sdk.errors import InputError

__all__ = ["add_distill_parser", "add_pretrain_parser", "add_train_parser", "add_train_parsers", "cmd_train"]

#: DistillWeights fields settable from the command line: (flag, field, help).
_WEIGHT_FLAGS = (("--temperature", "temperature", "softmax temperature of the event KL (default 4)"),
                 ("--w-event-kl", "event_kl", "weight of the event KL (default 0: it costs detection mAP here)"),
                 ("--w-tags", "tags", "weight of the audio-tag distillation (default 0.5)"),
                 ("--w-heatmap", "heatmap", "weight of the heatmap distillation (default 0)"),
                 ("--w-feature", "feature", "weight of the fused-embedding distillation (default 0)"),
                 ("--w-box", "box", "weight of the size/offset distillation at the teacher's objects (default 1)"),
                 ("--w-det-feature", "det_feature",
                  "weight of the detection-feature imitation (default 1; 0 skips caching the teacher's feature maps)"),
                 ("--w-hard", "hard", "weight of the ordinary supervised loss (default 1)"))


def cmd_train(args: argparse.Namespace, extra: dict | None = None) -> int:
    """Run ``fusionedge train`` for parsed arguments; returns the exit status.

    Args:
        args: the parsed ``train`` (or ``distill``) options.
        extra: further ``TrainConfig`` fields, e.g. ``teacher`` and ``distill`` for ``distill``.

    Raises:
        InputError: no run folder (neither ``--out`` nor ``--resume``), or a malformed ``--set``.
        FusionEdgeError: whatever the training run refuses (bad data, bad model fields, ...).
    """
    from fusionedge.training.distributed import DistContext, process_group, resolve_device
    from fusionedge.training.train import TrainConfig, train

    # Under torchrun this process is one of several: the environment is read here, and only here.
    dist = DistContext.from_env(os.environ)
    out = args.out if args.out is not None else (args.resume.parent if args.resume is not None else None)
    if out is None:
        raise InputError("--out is required (unless --resume gives the run folder)")
    # Options left unset keep TrainConfig's defaults.
    optional = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "val_data": args.val, "init": args.init, "resume": args.resume, "device": args.device,
                "task_weighting": args.task_weighting, "task_schedule": args.task_schedule,
                "max_train_samples": args.max_train_samples, "encoder_lr_scale": args.encoder_lr_scale,
                "frozen_encoder_epochs": args.frozen_encoder_epochs, "labels": args.labels,
                "siren_swap": getattr(args, "siren_swap", None), "clutter_swap": getattr(args, "clutter_swap", None),
                "sound_naming": getattr(args, "sound_naming", None),
                **(extra or {})}
    geometry = geometry_from_args(args)
    if geometry is not None:
        optional["geometry"] = geometry
    cfg = TrainConfig(data=args.data, out=out, model=args.model, seed=args.seed,
                      model_overrides=_overrides(args), progress=dist.is_main and not args.json,
                      **{k: v for k, v in optional.items() if v is not None})
    with process_group(dist, resolve_device(cfg.device, dist)):
        metrics = train(cfg, dist)
    if not dist.is_main:
        return 0
    if args.json:
        print_json(metrics)
    else:
        print(f"run written to {out}")
        print(format_metrics(metrics.get("best", metrics)))
    return 0


def _overrides(args: argparse.Namespace) -> dict:
    """``--set`` overrides with ``--modalities`` added as the ``modalities`` field.

    Raises:
        InputError: a malformed ``--set`` or ``--modalities``, or both naming the modalities.
    """
    overrides = parse_overrides(args.set)
    modalities = modalities_from_args(args)
    if modalities is not None:
        if "modalities" in overrides:
            raise InputError("--modalities and --set modalities=... together; give one")
        overrides["modalities"] = list(modalities)
    return overrides


def _cmd_distill(args: argparse.Namespace) -> int:
    weights = {name: getattr(args, name) for _, name, _ in _WEIGHT_FLAGS if getattr(args, name) is not None}
    extra: dict = {"teacher": args.teacher}
    if weights:
        from fusionedge.training.distill import DistillWeights

        extra["distill"] = DistillWeights(**weights)
    return cmd_train(args, extra)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from fusionedge.training.pretrain import PretrainConfig, pretrain

    # Options left unset keep PretrainConfig's defaults.
    optional = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "hard_negatives": args.hard_negatives, "match_weight": args.match_weight,
                "view_weight": args.view_weight, "val_data": args.val}
    geometry = geometry_from_args(args)
    if geometry is not None:
        optional["geometry"] = geometry
    cfg = PretrainConfig(data=args.data, out=args.out, model=args.model, seed=args.seed,
                         view_still=args.view_still, model_overrides=parse_overrides(args.set),
                         progress=not args.json, **{k: v for k, v in optional.items() if v is not None})
    result = pretrain(cfg)
    if args.json:
        print_json(result)
        return 0
    best, chance = result["best"], result["chance"]
    print(f"pretrained encoders written to {result['checkpoint']}")
    print(f"  best epoch {best['epoch']}: audio->video top-1 {best['a2v_top1']:.3f} "
          f"(chance {chance['a2v_top1']:.3f}), top-5 {best['a2v_top5']:.3f} (chance {chance['a2v_top5']:.3f}), "
          f"video->audio top-1 {best['v2a_top1']:.3f}, "
          f"shift discrimination {best['shift_discrimination']:.3f} (chance {chance['shift_discrimination']:.3f})"
          + (f", view top-1 {best['view_top1']:.3f} (chance {chance['view_top1']:.3f})"
             if "view_top1" in best else "")
          + (f", still discrimination {best['still_discrimination']:.3f} (chance 0.5)"
             if "still_discrimination" in best else "")
          + f" on {best['samples']} held-out clips")
    return 0


def _add_labels_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", type=Path, default=None, metavar="FILE",
                   help='the task\'s vocabularies, {"events": [...], "audio_tags": [...], "objects": [...]} '
                        "(default: labels.json beside the manifest, else the labels the manifest uses)")


def add_train_parser(verbs: Any) -> argparse.ArgumentParser:
    """Add ``train`` to the sub-parsers ``verbs``; returns its parser (guarded handler in ``func``)."""
    help = "train a model on a data-set manifest"
    p = verbs.add_parser("train", help=help, description=help)
    add_json_option(p)
    add_training_arguments(p)
    p.add_argument("--siren-swap", type=float, default=None, metavar="P",
                   help="with probability P a training draw hears its scene without its siren or with "
                        "another clip's, event and siren tag following (generator data only; the "
                        "quickstart uses 0.5; default 0)")
    p.add_argument("--clutter-swap", type=float, default=None, metavar="P",
                   help="with probability P a swapped draw also hears another clip's untagged sound (a tone, "
                        "a ringtone, music ...) or none in place of its own, no label following (needs "
                        "--siren-swap; default 0)")
    p.add_argument("--sound-naming", type=float, default=None, metavar="W",
                   help="weight W of an auxiliary loss that names each clip's untagged sound (a tone, a "
                        "ringtone, a melody ... or none) from the audio tokens; its head is not exported "
                        "(generator data only; default 0)")
    _add_labels_option(p)
    add_geometry_options(p)
    p.set_defaults(func=needs("train", cmd_train))
    return p


def add_distill_parser(verbs: Any) -> argparse.ArgumentParser:
    """Add ``distill`` to the sub-parsers ``verbs``; returns its parser (guarded handler in ``func``)."""
    help = "train a (small) student model from a frozen teacher checkpoint (knowledge distillation)"
    p = verbs.add_parser("distill", help=help, description=help)
    add_json_option(p)
    p.add_argument("--teacher", required=True, type=Path, help="teacher checkpoint (from `fusionedge train`)")
    add_training_arguments(p, model_help="student registry name")
    _add_labels_option(p)
    add_geometry_options(p)
    for flag, name, flag_help in _WEIGHT_FLAGS:
        p.add_argument(flag, dest=name, type=float, default=None, help=flag_help)
    p.set_defaults(func=needs("train", _cmd_distill))
    return p


def add_pretrain_parser(verbs: Any) -> argparse.ArgumentParser:
    """Add ``pretrain`` to the sub-parsers ``verbs``; returns its parser (guarded handler in ``func``)."""
    help = ("pretrain a model's video and audio encoders (and its fusion) on unlabelled clips "
            "(audio-visual correspondence)")
    p = verbs.add_parser("pretrain", help=help, description=help)
    p.add_argument("--data", required=True, type=Path, help="manifest or its folder (labels are not needed)")
    p.add_argument("--out", required=True, type=Path,
                   help="run folder (pretrain.pt, metrics.json, config.json)")
    p.add_argument("--val", type=Path, default=None, help="held-out manifest (default: 10%% of --data)")
    p.add_argument("--model", default="fusion_student", help="registry name; needs video and audio")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a ModelConfig field (JSON value), e.g. --set video_depth=0; repeatable")
    p.add_argument("--epochs", type=int, default=None, help="passes over the data (default: 10)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="clips per step; each clip's negatives are the others (default: 64)")
    p.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (default: 0.002)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialization, shuffling and views")
    p.add_argument("--hard-negatives", type=int, default=None,
                   help="time-shifted copies of each clip's audio used as extra negatives (default 2)")
    p.add_argument("--match-weight", type=float, default=None,
                   help="weight of the correspondence loss through the model's fusion, which then is "
                        "pretrained too (0: encoders only)")
    p.add_argument("--view-weight", type=float, default=None,
                   help="weight of the video-video loss between two views of each clip (crop, flip, "
                        "exposure; default 1, 0: off)")
    p.add_argument("--no-view-still", dest="view_still", action="store_false",
                   help="no still copies (each clip's frame repeated) as hard negatives of the view loss")
    add_geometry_options(p, modalities=False)
    add_json_option(p)
    p.set_defaults(func=needs("train", _cmd_pretrain))
    return p


def add_train_parsers(verbs: Any) -> None:
    """Add ``train``, ``pretrain`` and ``distill`` to the ``fusionedge`` sub-parsers.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser (tests may pass
            their own).
    """
    add_train_parser(verbs)
    add_pretrain_parser(verbs)
    add_distill_parser(verbs)
