"""The ``fusionedge`` command line: one command, one verb per job.

Verbs that only run a bundle (``eval``, ``predict``) work with the runtime install; verbs that train
or export import torch lazily and say which extra to install when it is missing. A
``FusionEdgeError`` (bad input, bad bundle, missing file) is printed as one line and exits with
status 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from fusionedge.sdk.errors import FusionEdgeError

__all__ = ["main", "build_parser", "add_training_arguments"]

EXIT_USER_ERROR = 2


def _json_safe(obj: Any) -> Any:
    """NaN/Inf (an undefined metric, e.g. mAP on a split without boxes) become null: strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _print_json(obj: Any) -> None:
    json.dump(_json_safe(obj), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
    sys.stdout.flush()


def _require_training() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise FusionEdgeError(
            "this verb needs PyTorch: install the training extra "
            "(`pip install torch==2.13.0` for the CPU build, then `pip install 'fusionedge[train]'`)"
        ) from e


# ---------------------------------------------------------------------------------------------- verbs


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from fusionedge.training.synth.generate import generate_dataset

    manifest = generate_dataset(
        args.out, args.samples, args.seed, workers=args.workers, progress=not args.json,
        cue_agreement=args.cue_agreement, overwrite=args.overwrite,
    )
    if args.json:
        _print_json({"manifest": str(manifest), "samples": args.samples, "seed": args.seed,
                     "cue_agreement": args.cue_agreement})
    else:
        print(f"wrote {args.samples} samples to {manifest}")
    return 0


def _cmd_train(args: argparse.Namespace, extra: dict | None = None) -> int:
    """``fusionedge train`` (and, with ``extra`` TrainConfig fields such as ``teacher``, ``fusionedge distill``)."""
    _require_training()
    import os

    from fusionedge.training.distributed import DistContext, process_group, resolve_device
    from fusionedge.training.train import TrainConfig, train

    # Under torchrun this process is one of several: the environment is read here, and only here.
    dist = DistContext.from_env(os.environ)
    out = args.out if args.out is not None else (args.resume.parent if args.resume is not None else None)
    if out is None:
        raise FusionEdgeError("--out is required (unless --resume gives the run folder)")
    # Options left unset keep TrainConfig's defaults.
    optional = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "val_data": args.val, "init": args.init, "resume": args.resume, "device": args.device,
                "task_weighting": args.task_weighting, "task_schedule": args.task_schedule,
                "max_train_samples": args.max_train_samples, "encoder_lr_scale": args.encoder_lr_scale,
                "frozen_encoder_epochs": args.frozen_encoder_epochs, **(extra or {})}
    cfg = TrainConfig(data=args.data, out=out, model=args.model, seed=args.seed,
                      model_overrides=_parse_overrides(args.set), progress=dist.is_main and not args.json,
                      **{k: v for k, v in optional.items() if v is not None})
    with process_group(dist, resolve_device(cfg.device, dist)):
        metrics = train(cfg, dist)
    if not dist.is_main:
        return 0
    if args.json:
        _print_json(metrics)
    else:
        print(f"run written to {out}")
        print(_format_metrics(metrics.get("best", metrics)))
    return 0


def _parse_overrides(items: Sequence[str] | None) -> dict:
    """``["video_depth=0", "audio_channels=[8,8,16]"]`` → ModelConfig overrides (values parsed as JSON)."""
    overrides = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FusionEdgeError(f"--set {item!r}: expected FIELD=VALUE")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value  # a bare string, e.g. fusion=concat
    return overrides


def _cmd_export(args: argparse.Namespace) -> int:
    _require_training()
    from fusionedge.export import export_checkpoint

    bundle = export_checkpoint(args.checkpoint, args.out, name=args.name, version=args.version,
                               progress=not args.json, overwrite=args.overwrite)
    if args.json:
        _print_json({"bundle": str(bundle)})
    else:
        print(f"bundle written to {bundle}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from fusionedge.sdk import Perception
    from fusionedge.sdk.bundle import update_bundle_metrics
    from fusionedge.sdk.evaluate import evaluate

    with Perception.load(args.bundle, backends=args.backends) as p:
        metrics = evaluate(p, args.data, batch_size=args.batch_size, progress=not args.json,
                           limit=args.limit)
    if args.record:
        update_bundle_metrics(args.bundle, metrics)
    if args.json:
        _print_json(metrics)
    else:
        print(_format_metrics(metrics))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from fusionedge.sdk import Perception

    with Perception.load(args.bundle, backends=args.backends) as p:
        result = p.infer(video_path=args.video, audio_path=args.audio, start_seconds=args.start)
        if args.out:
            from fusionedge.sdk.annotate import write_annotated_clip

            write_annotated_clip(args.video, result, args.out, p.geometry, start_seconds=args.start)
    if args.json:
        _print_json(result.to_dict())
    else:
        print(format_result(result))
        if args.out:
            print(f"annotated clip written to {args.out}")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    _require_training()
    from fusionedge.cli.quickstart import QuickstartConfig, run_quickstart

    summary = run_quickstart(QuickstartConfig(workdir=Path(args.workdir), seed=args.seed,
                                              overwrite=args.overwrite))
    if args.json:
        _print_json(summary)
    return 0


# --------------------------------------------------------------------------------------- formatting


def _format_metrics(metrics: dict) -> str:
    keys = ("event_accuracy", "event_macro_f1", "audio_tag_map", "detection_map50", "samples")
    rows = [f"  {k:<18} {metrics[k]:.4f}" if isinstance(metrics.get(k), float) else f"  {k:<18} {metrics[k]}"
            for k in keys if k in metrics]
    return "\n".join(rows) if rows else json.dumps(metrics, indent=2)


def format_result(result: Any) -> str:
    """Human-readable summary of one :class:`fusionedge.sdk.Result`."""
    top = sorted(result.scores.items(), key=lambda kv: -kv[1])
    lines = [f"event: {result.event} ({result.scores[result.event]:.2f})   backend: {result.backend}"]
    lines.append("  scores: " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    tags = [f"{k} {v:.2f}" for k, v in result.audio_tags.items() if v >= 0.5]
    lines.append("  audio tags: " + (", ".join(tags) if tags else "none"))
    if result.missing:
        lines.append("  missing sensors: " + ", ".join(result.missing) + " (ran on the others)")
    lines.append(f"  boxes ({len(result.boxes)}):")
    for b in result.boxes:
        lines.append(f"    {b.label:<18} {b.score:.2f}  [{b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, {b.y2:.0f}]")
    lines.append("  timings (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- parser


def add_training_arguments(p: argparse.ArgumentParser, *, model_help: str = "registry name "
                           "(see fusionedge.training.models)") -> None:
    """The options of a training run, shared by ``train`` and ``distill`` (one handler: ``_cmd_train``).

    Args:
        p: the verb's parser.
        model_help: help text of ``--model``.
    """
    p.add_argument("--data", required=True, type=Path, help="training manifest or its folder")
    p.add_argument("--val", type=Path, default=None, help="validation manifest (default: 10%% of --data)")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (checkpoints, metrics); default with --resume: that run's folder")
    p.add_argument("--model", default="fusion_student", help=model_help)
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a ModelConfig field (JSON value), e.g. --set video_depth=0; repeatable")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None,
                   help="initialize weights from a checkpoint (or a pretraining checkpoint's encoders)")
    p.add_argument("--encoder-lr-scale", type=float, default=None,
                   help="the encoders' learning rate as a fraction of --lr (e.g. 0.1 to fine-tune pretrained ones)")
    p.add_argument("--frozen-encoder-epochs", type=int, default=None,
                   help="train everything but the encoders for the first N epochs (linear probe, then fine-tune)")
    p.add_argument("--resume", type=Path, default=None,
                   help="continue a run exactly from its last.pt (give the first run's options again)")
    p.add_argument("--device", default=None, help="auto (default: cuda:LOCAL_RANK if available), cpu, cuda:0...")
    p.add_argument("--task-weighting", choices=("fixed", "uncertainty"), default=None,
                   help="fixed loss weights (default) or learned uncertainty weights per task group")
    p.add_argument("--task-schedule", choices=("joint", "alternating"), default=None,
                   help="all task groups every step (default) or one group per step, round-robin")
    p.add_argument("--max-train-samples", type=int, default=None,
                   help="train on the first N training samples only (few-label experiments)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusionedge",
        description="Multimodal (camera + audio) perception from training to edge devices.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.set_defaults(func=func)
        return p

    data = verbs.add_parser("data", help="data-set tools").add_subparsers(dest="data_verb", required=True)
    p = data.add_parser("synth", help="generate synthetic multimodal driving scenes")
    p.add_argument("--out", required=True, type=Path, help="output folder (manifest.jsonl + media/)")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--cue-agreement", type=float, default=0.5,
                   help="P(siren audible == lights-ON emergency vehicle in view); 0.5: the four events "
                        "equally likely (labelled sets), e.g. 0.9 for an unlabelled pool like real traffic")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set in --out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_data_synth)

    p = add("train", _cmd_train, "train a model on a data-set manifest")
    add_training_arguments(p)

    p = add("export", _cmd_export, "export a checkpoint to a verified ONNX bundle")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="bundle folder to create")
    p.add_argument("--name", default=None, help="model name in the manifest (default: the registry name)")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")

    for name, func, help in (("eval", _cmd_eval, "evaluate a bundle on a data-set manifest"),
                             ("predict", _cmd_predict, "run a bundle on one video (+ audio) clip")):
        p = add(name, func, help)
        p.add_argument("--bundle", required=True, type=Path)
        p.add_argument("--backends", type=lambda s: [b for b in s.split(",") if b],
                       default=["onnxruntime"], help="ordered, comma-separated backends to try")
        if name == "eval":
            p.add_argument("--data", required=True, type=Path, help="manifest or its folder")
            p.add_argument("--batch-size", type=int, default=16)
            p.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
            p.add_argument("--record", action="store_true", help="write the metrics into the bundle manifest")
        else:
            p.add_argument("--video", required=True, type=Path)
            p.add_argument("--audio", type=Path, default=None,
                           help="wav file (default: none; the model then runs on vision alone)")
            p.add_argument("--start", type=float, default=0.0, help="clip start in seconds")
            p.add_argument("--out", type=Path, default=None, help="write an annotated mp4 here")

    p = add("quickstart", _cmd_quickstart, "synthesize data, train, export, evaluate and predict end to end")
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="start over in an existing workdir")

    # Verbs owned by the other parts register themselves (their modules import nothing heavy).
    from fusionedge.cli.fleet import add_fleet_parser
    from fusionedge.cli.run import add_run_parser
    from fusionedge.benchmarks.cli import add_bench_parser
    from fusionedge.export.compare import add_compare_parser
    from fusionedge.export.engine_cli import add_engine_parser
    from fusionedge.export.quantize_cli import add_quantize_parsers
    from fusionedge.training.distill_cli import add_distill_parser
    from fusionedge.training.pretrain_cli import add_pretrain_parser
    from fusionedge.training.report_cli import add_report_parser

    add_pretrain_parser(verbs)
    add_distill_parser(verbs)
    add_report_parser(verbs)
    add_run_parser(verbs)
    add_quantize_parsers(verbs)
    add_engine_parser(verbs)
    add_compare_parser(verbs)
    add_bench_parser(verbs)
    add_fleet_parser(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fusionedge`` console script. Returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except FusionEdgeError as e:
        print(f"fusionedge {args.verb}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
