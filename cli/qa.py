"""``fusionedge qa``: train scene question answering, add it to a bundle, and report on it.

* ``qa finetune-detection`` — the student's detection path fine-tuned on the question data's boxes
  for counting (:mod:`fusionedge.training.qa.detection_finetune`): a perception checkpoint that
  ``qa train --checkpoint`` takes, so the QA model carries the fine-tuned copy;
* ``qa train``  — a question reader on top of a trained perception checkpoint
  (:mod:`fusionedge.training.qa.train`): run folder with best.pt, last.pt, metrics.json;
* ``qa export`` — ``qa.onnx`` + tokenizer + golden + the ``qa`` block into an existing fused bundle
  (:mod:`fusionedge.export.qa_export`), the scores fitted on validation data with ``--calibrate-on``;
* ``qa report`` — accuracy per question type, sensor ablations, question-only baseline and
  ask/infer latency of a bundle on test data, as Markdown (:mod:`fusionedge.training.qa.report`).

Asking a bundle a question is ``fusionedge ask``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from fusionedge.cli.extras import needs
from fusionedge.cli.options import add_json_option, add_sub_verbs
from fusionedge.cli.output import print_json

__all__ = ["add_qa_parser", "format_detection_finetune", "format_qa_export", "format_qa_train"]


def _pct(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.1f}%"


def format_qa_train(summary: dict) -> str:
    """The human-readable form of :func:`~fusionedge.training.qa.train.train_qa`'s summary."""
    val = summary.get("val") or {}
    acc = val.get("accuracy", {})
    lines = [(f"best epoch {summary['best_epoch']}: validation answer accuracy {_pct(acc.get('overall'))} "
             f"on {summary['val_questions']} questions ({summary['train_questions']} training questions, "
             f"{summary['train_clips']} clips, vocabulary {summary['vocab_size']}, {summary['reader_params']} "
             f"reader parameters, {summary['seconds']:.0f} s)")]
    for t, row in acc.get("per_type", {}).items():
        lines.append(f"  {t:<8} {_pct(row['accuracy']):>7}  ({row['count']})")
    ab = val.get("ablations", {})
    if ab:
        lines.append("  sensors: " + ", ".join(f"{k} {_pct(v['overall'])}" for k, v in ab.items())
                     + f"; sound questions gain {100 * val['sound_gain_over_video']:.1f} points over question+video")
    if "question_only_baseline" in val:
        lines.append(f"  question-only baseline {_pct(val['question_only_baseline']['overall'])}")
    return "\n".join(lines)


def format_detection_finetune(summary: dict) -> str:
    """The human-readable form of :func:`~fusionedge.training.qa.detection_finetune.finetune_detection`'s summary."""
    def counts(acc: dict) -> str:
        per = ", ".join(f"{k} {_pct(v)}" for k, v in acc["per_class"].items())
        return f"{_pct(acc['questions'])} ({per})"

    best = summary["best"]
    first = (f"validation count questions answered by the decoder's peaks ({summary['val_count_questions']}): "
             f"{counts(summary['before'])} before")
    second = (f"  best epoch {summary['best_epoch']}: {counts(best['val_count'])} "
              f"({summary['train_clips']} training clips, {summary['seconds']:.0f} s)")
    return first + "\n" + second


def format_qa_export(summary: dict) -> str:
    """The human-readable form of :func:`~fusionedge.export.qa_export.export_qa`'s summary."""
    qa, parity = summary["qa"], summary["parity"]
    lines = [(f"added question answering to {summary['bundle']}: {qa['model']} ({len(qa['answers'])} answers, "
             f"max_tokens {qa['max_tokens']})"),
             f"  parity (batch {', '.join(map(str, parity['batches']))}): max abs {parity['max_abs']:.2e}",
             f"  temperature {qa['temperature']:.3f}, min_confidence {qa['min_confidence']:.2f}"]
    cal = summary.get("calibration")
    if cal:
        lines.append(f"  fitted on {cal['questions']} validation questions: NLL {cal['nll_before']:.4f} -> "
                     f"{cal['nll_after']:.4f}; {_pct(cal['confident_share'])} confident "
                     f"({_pct(cal['confident_accuracy'])} right); with no sensor "
                     f"{_pct(cal['sensorless_confident_share'])} confident")
    else:
        lines.append("  not fitted (no --calibrate-on): temperature 1.0, min_confidence 0.5")
    lines.append(f"  digest {summary['digest']['before'][:12]}… -> {summary['digest']['after'][:12]}…")
    if summary["signature"] != "none":
        lines.append(f"  signature {summary['signature']}")
    return "\n".join(lines)


def _cmd_train(args: argparse.Namespace) -> int:
    from fusionedge.training.qa.train import QATrainConfig, train_qa

    cfg = QATrainConfig(checkpoint=str(args.checkpoint), data=str(args.data), val=str(args.val), out=str(args.out),
                        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                        max_train_samples=args.max_train_samples, threads=args.threads, unanswerable=args.unanswerable, progress=not args.json,
                        scene_features=not args.no_scene_features, dim=args.dim, layers=args.layers)
    summary = train_qa(cfg)
    if args.json:
        print_json(summary)
    else:
        print(format_qa_train(summary))
        print(f"run folder: {args.out}")
    return 0


def _cmd_finetune_detection(args: argparse.Namespace) -> int:
    from fusionedge.training.qa.detection_finetune import DetectionFinetuneConfig, finetune_detection

    cfg = DetectionFinetuneConfig(checkpoint=str(args.checkpoint), data=str(args.data), val=str(args.val),
                                  out=str(args.out), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                  scope=args.scope, peak_weight=args.peak_weight, seed=args.seed,
                                  threads=args.threads, cache=None if args.cache is None else str(args.cache),
                                  max_train_samples=args.max_train_samples, progress=not args.json)
    summary = finetune_detection(cfg)
    if args.json:
        print_json(summary)
    else:
        print(format_detection_finetune(summary))
        print(f"run folder: {args.out} (train the reader with `fusionedge qa train --checkpoint {args.out}/best.pt`)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from fusionedge.export.qa_export import export_qa

    key = args.sign_key.read_bytes() if args.sign_key is not None else None
    summary = export_qa(args.bundle, args.checkpoint, calibrate_on=args.calibrate_on, sign_key=key,
                        drop_signature=args.drop_signature, progress=not args.json)
    if args.json:
        print_json(summary)
    else:
        print(format_qa_export(summary))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from fusionedge.training.qa.report import format_qa_report, qa_report

    summary = qa_report(args.bundle, args.data, train_data=args.train_data, out=args.out,
                        latency_runs=args.latency_runs, progress=not args.json)
    if args.json:
        print_json(summary)
    else:
        print(format_qa_report(summary), end="")
        if args.out is not None:
            print(f"written to {args.out}")
    return 0


def add_qa_parser(verbs: Any) -> None:
    """Add ``qa`` and its ``train``, ``export`` and ``report`` sub-verbs to the ``fusionedge`` parser.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.
    """
    group = verbs.add_parser("qa", help="scene question answering: train, add to a bundle, report",
                             description="Scene question answering over camera and sound: train a question reader "
                                         "on a perception checkpoint, add it to a bundle, report on it. Ask a "
                                         "bundle with `fusionedge ask`.")
    sub = add_sub_verbs(group, "qa_verb")

    help = "train a question reader on top of a trained perception checkpoint"
    p = sub.add_parser("train", help=help, description=help + " (frozen; its tokens computed once per clip); "
                                                           "the data's samples must carry 'questions'")
    p.add_argument("--checkpoint", required=True, type=Path, help="the perception run's best.pt")
    p.add_argument("--data", required=True, type=Path, help="training manifest or folder, with questions")
    p.add_argument("--val", required=True, type=Path, help="validation manifest or folder, with questions")
    p.add_argument("--out", required=True, type=Path, help="run folder (best.pt, last.pt, metrics.json)")
    p.add_argument("--epochs", type=int, default=12, help="passes over the training questions")
    p.add_argument("--batch-size", type=int, default=256, help="questions per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the order")
    p.add_argument("--max-train-samples", type=int, default=None, help="use only the first N training clips")
    p.add_argument("--unanswerable", type=float, default=0.1,
                   help="share of training questions garbled and trained toward no answer (0: off)")
    p.add_argument("--dim", type=int, default=64,
                   help="the reader's token width, a multiple of its 4 heads (96 with --layers 3: the reader "
                        "measured on 12,000 clips' questions)")
    p.add_argument("--layers", type=int, default=2, help="the reader's attention layers")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the reader (1 is fastest on a busy machine; default: torch's)")
    p.add_argument("--no-scene-features", action="store_true",
                   help="the reader does not read the scene features (stride-4 counts, lamp colour, motion)")
    add_json_option(p)
    p.set_defaults(func=needs("train", needs("qa", _cmd_train)))

    help = "fine-tune the student's detection path for counting, on the question data's boxes"
    p = sub.add_parser("finetune-detection", help=help,
                       description=help + " (CenterNet loss on the last frame's boxes, BatchNorm fixed); the epoch "
                                          "whose peaks answer the most validation count questions is kept as a "
                                          "perception checkpoint for `qa train --checkpoint`")
    p.add_argument("--checkpoint", required=True, type=Path, help="the perception run's best.pt")
    p.add_argument("--data", required=True, type=Path, help="training manifest or folder (boxes)")
    p.add_argument("--val", required=True, type=Path, help="validation manifest or folder, with count questions")
    p.add_argument("--out", required=True, type=Path, help="run folder (best.pt, last.pt, metrics.json)")
    p.add_argument("--epochs", type=int, default=6, help="passes over the training clips")
    p.add_argument("--batch-size", type=int, default=32, help="clips per step")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    p.add_argument("--scope", choices=("video", "head"), default="video",
                   help="train the video encoder and the detection head, or the head alone")
    p.add_argument("--peak-weight", type=float, default=1.0,
                   help="weight of the loss on the decoder's peaks: stray peaks down, each centre's up (0: off)")
    p.add_argument("--cache", type=Path, default=None, help="folder for the decoded clips (default OUT/clips)")
    p.add_argument("--seed", type=int, default=0, help="seed of the order and the flips")
    p.add_argument("--max-train-samples", type=int, default=None, help="use only the first N training clips")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_json_option(p)
    p.set_defaults(func=needs("train", needs("qa", _cmd_finetune_detection)))

    help = "add question answering (qa.onnx, tokenizer, golden, the qa block) to a fused bundle"
    p = sub.add_parser("export", help=help, description=help + "; ONNX Runtime parity at batch 1 and 3 is "
                                                            "checked first, nothing is written if it fails")
    p.add_argument("--bundle", required=True, type=Path, help="the fused bundle (updated in place)")
    p.add_argument("--checkpoint", required=True, type=Path, help="the QA run's best.pt")
    p.add_argument("--calibrate-on", type=Path, default=None,
                   help="validation data with questions: fit the answer temperature and min_confidence")
    sig = p.add_mutually_exclusive_group()
    sig.add_argument("--sign-key", type=Path, default=None, help="ed25519 private key (PEM) to re-sign with")
    sig.add_argument("--drop-signature", action="store_true", help="remove a signed bundle's manifest.sig")
    add_json_option(p)
    p.set_defaults(func=needs("train", needs("qa", _cmd_export)))

    help = "measure a bundle's question answering on test data (per type, ablations, baseline, latency)"
    p = sub.add_parser("report", help=help, description=help + ", through the bundle on ONNX Runtime")
    p.add_argument("--bundle", required=True, type=Path, help="a fused bundle with a qa block")
    p.add_argument("--data", required=True, type=Path, help="test manifest or folder, with questions")
    p.add_argument("--train-data", type=Path, default=None,
                   help="the training manifest, for the question-only baseline")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown report there")
    p.add_argument("--latency-runs", type=int, default=100,
                   help="interleaved ask/infer timing rounds (0: skip)")
    add_json_option(p)
    p.set_defaults(func=needs("qa", _cmd_report))
