"""``fusionedge track sequences|eval``: sequences with true identities, and how well a bundle tracks them.

``sequences`` writes synthetic road sequences in the MOTChallenge layout with the media and each
object's true motion (:mod:`fusionedge.training.synth.sequence`; numpy and OpenCV only). ``eval`` runs
a bundle frame by frame over them with the runtime's ByteTrack tracker and prints MOTA, IDF1 and
identity switches per class (py-motmetrics, the ``metrics`` extra; HOTA where TrackEval is installed)
and the motion accuracy per class, the emergency vehicle's with and without its siren
(:mod:`fusionedge.training.track_eval`). The tracker needs SciPy (the ``tracking`` extra).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from fusionedge.cli.extras import MissingExtraError
from fusionedge.cli.options import add_backends_option, add_json_option, add_sub_verbs
from fusionedge.cli.output import print_json

__all__ = ["add_track_parser", "format_track_eval"]

_SHOWN = (("mota", "MOTA"), ("idf1", "IDF1"), ("num_switches", "IDsw"), ("recall", "recall"),
          ("precision", "precision"), ("num_unique_objects", "objects"))


def _cmd_sequences(args: argparse.Namespace) -> int:
    from fusionedge.training.synth.sequence import SequenceConfig, generate_sequences

    config = SequenceConfig(seconds=args.seconds, fps=args.fps, width=args.width, height=args.height)
    folders = generate_sequences(args.out, args.count, seed=args.seed, config=config)
    if args.json:
        print_json({"out": str(args.out), "sequences": [str(f) for f in folders], "seed": args.seed,
                    "seconds": args.seconds, "fps": args.fps})
    else:
        print(f"wrote {len(folders)} sequences of {args.seconds:g} s to {args.out}")
    return 0


def _require(extra: str, module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(extra, module) from e


def format_track_eval(report: dict[str, Any]) -> str:
    """The text of ``fusionedge track eval``: one line per class, then the motion accuracies."""
    lines = [(f"{report['sequences']} sequences, {report['frames']} frames, "
              f"{report['fps_processed']:.1f} frames/s (model + tracker)")]
    header = f"{'class':<18}" + "".join(f"{name:>10}" for _, name in _SHOWN)
    hota = report.get("hota") or {}
    lines.append(header + (f"{'HOTA':>10}" if hota else ""))
    for label, m in report["per_class"].items():
        cells = "".join(f"{m[k]:>10.0f}" if k in ("num_switches", "num_unique_objects") else f"{m[k]:>10.3f}"
                        for k, _ in _SHOWN)
        extra = f"{hota[label]:>10.3f}" if label in hota else (f"{'':>10}" if hota else "")
        lines.append(f"{label:<18}{cells}{extra}")
    lines.append("motion (approaching / receding / stationary), share of tracked frames right:")
    for label, m in report["motion"].items():
        siren = f", with the siren {m['box+siren']:.3f}" if label == "emergency_vehicle" else ""
        lines.append(f"  {label:<18} box only {m['box']:.3f}{siren}  ({m['frames']} frames)")
    return "\n".join(lines)


def _cmd_eval(args: argparse.Namespace) -> int:
    _require("tracking", "scipy")
    _require("metrics", "motmetrics")
    from fusionedge.training.track_eval import evaluate_bundle

    report = evaluate_bundle(args.bundle, args.data, backends=args.backends, out=args.out,
                             low_score=args.low_score, tracker_options={"buffer_seconds": args.buffer_seconds},
                             motion_threshold=args.motion_threshold,
                             progress=not args.json)
    if args.json:
        print_json(report)
    else:
        print(format_track_eval(report))
    return 0


def add_track_parser(verbs: Any) -> None:
    """Add ``fusionedge track sequences|eval`` to the ``fusionedge`` sub-parsers.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.
    """
    help = "objects followed over frames: test sequences and tracking quality"
    track = verbs.add_parser("track", help=help, description=help)
    sub = add_sub_verbs(track, "track_verb")
    help = "write synthetic sequences with true track ids (MOTChallenge gt) and motions"
    p = sub.add_parser("sequences", help=help, description=help)
    p.add_argument("--out", required=True, type=Path, help="folder for the sequences (one sub-folder each)")
    p.add_argument("--count", type=int, default=4, help="how many sequences")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--seconds", type=float, default=12.0, help="length of each sequence")
    p.add_argument("--fps", type=float, default=8.0, help="frames per second")
    p.add_argument("--width", type=int, default=320, help="frame width in pixels")
    p.add_argument("--height", type=int, default=192, help="frame height in pixels")
    add_json_option(p)
    p.set_defaults(func=_cmd_sequences)
    help = "run a bundle and the tracker over sequences: MOTA, IDF1, switches, motion accuracy"
    p = sub.add_parser("eval", help=help, description=help)
    p.add_argument("--bundle", required=True, type=Path, help="the bundle folder")
    p.add_argument("--data", required=True, type=Path, help="a folder of sequences, or one sequence")
    p.add_argument("--out", type=Path, default=None, help="write each sequence's tracks here (MOTChallenge rows)")
    p.add_argument("--low-score", type=float, default=0.1, help="lowest detection score given to the tracker")
    p.add_argument("--buffer-seconds", type=float, default=1.0, help="how long a lost track waits to be found")
    p.add_argument("--motion-threshold", type=float, default=0.015,
                   help="closing rate (1/s) below which an object is stationary")
    add_backends_option(p)
    add_json_option(p)
    p.set_defaults(func=_cmd_eval)
