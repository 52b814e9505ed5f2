"""``fusionedge eval`` and ``fusionedge predict``: run a bundle on a data set or on one clip.

Both need only the runtime install (no torch): they load the bundle with
:class:`fusionedge.sdk.Perception` on the ``--backends`` given, in order. ``eval`` prints the
metrics (``--record`` also writes them into the bundle manifest); ``predict`` prints one result and
can write an annotated clip. :func:`format_result` and :func:`format_metrics` are the human-readable
forms other verbs reuse.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fusionedge.cli.options import add_backends_option, add_json_option
from fusionedge.cli.output import print_json
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.fileio import dumps_json

__all__ = ["add_predict_parsers", "format_metrics", "format_result"]


# The headline keys in print order; detection APs carry which definition they follow.
_METRIC_KEYS = ("event_accuracy", "event_macro_f1", "audio_tag_map", "detection_map50", "detection_ap50_coco",
                "detection_ap50_95_coco", "event_ece", "uncertain_rate", "samples")
_METRIC_NOTES = {"detection_map50": "VOC all-point AP@0.5", "detection_ap50_coco": "COCO 101-point AP@0.5",
                 "detection_ap50_95_coco": "COCO 101-point AP@0.5:0.95", "event_ece": "top-event ECE, 15 bins",
                 "uncertain_rate": "beyond the bundle's OOD threshold"}


def format_metrics(metrics: dict) -> str:
    """The headline metrics of an evaluation or a training run, one per line.

    Detection APs are labelled with their definition: ``detection_map50`` is PASCAL VOC's all-point
    AP@0.5; ``detection_ap50_coco`` and ``detection_ap50_95_coco`` (present with the ``metrics``
    extra) are COCO's 101-point AP50 and AP50:95, the numbers COCO tools print as mAP50 and mAP50-95.
    """
    rows = []
    for k in _METRIC_KEYS:
        if metrics.get(k) is None:  # not measured (e.g. no in-distribution clip for the ECE)
            continue
        v = metrics[k]
        row = f"  {k:<22} {v:.4f}" if isinstance(v, float) else f"  {k:<22} {v}"
        rows.append(f"{row}   ({_METRIC_NOTES[k]})" if k in _METRIC_NOTES else row)
        if k == "detection_map50" and metrics.get("detection_ap50_per_class"):
            rows.append("    per class: " + ", ".join(f"{lab} {ap:.4f}"
                                                      for lab, ap in metrics["detection_ap50_per_class"].items()))
    return "\n".join(rows) if rows else dumps_json(metrics)


def format_result(result: Any) -> str:
    """Human-readable summary of one :class:`fusionedge.sdk.Result`."""
    top = sorted(result.scores.items(), key=lambda kv: -kv[1])
    if not result.scores:  # a detector-only model scores no classes
        lines = [f"backend: {result.backend}"]
    else:
        lines = [f"event: {result.event} ({result.scores[result.event]:.2f})   backend: {result.backend}"]
        lines.append("  scores: " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    tags = [f"{k} {result.audio_tags[k]:.2f}" for k in result.tags_on]
    lines.append("  audio tags: " + (", ".join(tags) if tags else "none"))
    if result.ood_score is not None:  # a calibrated bundle
        lines.append(f"  out-of-distribution score: {result.ood_score:.2f}" + (
            "  UNCERTAIN: unlike the validation data, so no alarm is raised" if result.uncertain else ""))
    if result.missing:
        lines.append("  missing sensors: " + ", ".join(result.missing) + " (ran on the others)")
    lines.append(f"  boxes ({len(result.boxes)}):")
    for b in result.boxes:
        lines.append(f"    {b.label:<18} {b.score:.2f}  [{b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, {b.y2:.0f}]")
    attribution = getattr(result, "attribution", None)
    if attribution is not None:
        c = attribution.contribution
        lines.append(f"  decided by: seen {c['video']:.0%}, heard {c['audio']:.0%} (drop of "
                     f"{attribution.event} without video {attribution.drop['video']:.2f}, without audio "
                     f"{attribution.drop['audio']:.2f})")
    lines.append("  timings (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    return "\n".join(lines)


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
        print_json(metrics)
    else:
        print(format_metrics(metrics))
        if metrics.get("outside"):
            from fusionedge.sdk.outside_metrics import outside_markdown

            print("\n" + outside_markdown(metrics["outside"]), end="")
        if "question_accuracy" in metrics:
            from fusionedge.sdk.qa_evaluate import question_lines

            print(question_lines(metrics))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from fusionedge.sdk import Perception

    if args.video is None and args.audio is None:
        raise InputError("give --video, --audio or both")
    if args.out and args.video is None:
        raise InputError("--out draws on the video: give --video too")
    with Perception.load(args.bundle, backends=args.backends, attribution=args.attribution) as p:
        from fusionedge.sdk.media import embedded_audio

        audio = args.audio
        if audio is None and args.video is not None:
            audio = embedded_audio(args.video)  # the video's own sound
        result = p.infer(video_path=args.video, audio_path=audio, start_seconds=args.start)
        if args.out:
            from fusionedge.sdk.annotate import write_annotated_clip

            write_annotated_clip(args.video, result, args.out, p.geometry, start_seconds=args.start)
    if args.json:
        print_json(result.to_dict())
    else:
        print(format_result(result))
        if args.out:
            print(f"annotated clip written to {args.out}")
    return 0


def add_predict_parsers(verbs: Any) -> None:
    """Add ``eval`` and ``predict`` to the ``fusionedge`` sub-parsers.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.
    """
    help = "evaluate a bundle on a data-set manifest"
    p = verbs.add_parser("eval", help=help, description=help)
    add_json_option(p)
    p.add_argument("--bundle", required=True, type=Path, help="the bundle folder")
    add_backends_option(p)
    p.add_argument("--data", required=True, type=Path, help="manifest or its folder")
    p.add_argument("--batch-size", type=int, default=16, help="samples per inference call")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    p.add_argument("--record", action="store_true", help="write the metrics into the bundle manifest")
    p.set_defaults(func=_cmd_eval)

    help = "run a bundle on one video (+ audio) clip"
    p = verbs.add_parser("predict", help=help, description=help)
    add_json_option(p)
    p.add_argument("--bundle", required=True, type=Path, help="the bundle folder")
    add_backends_option(p)
    p.add_argument("--video", type=Path, default=None,
                   help="the video clip (any format OpenCV reads); an audio-only bundle takes --audio alone")
    p.add_argument("--audio", type=Path, default=None,
                   help="audio file: wav, or flac/ogg/mp3 with fusionedge[media] (default: the video's own "
                        "sound where it has one and fusionedge[media] is installed, else vision alone)")
    p.add_argument("--start", type=float, default=0.0, help="clip start in seconds")
    p.add_argument("--out", type=Path, default=None, help="write an annotated mp4 here")
    p.add_argument("--attribution", action="store_true",
                   help="also run the clip with each sensor withheld and report how much of the decision "
                        "was seen and how much heard")
    p.set_defaults(func=_cmd_predict)
