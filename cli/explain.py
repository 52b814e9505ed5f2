"""``fusionedge explain``: show where a decision came from, or check a bundle's explanations on a data set.

::

    fusionedge explain --bundle B --video clip.mp4 --audio clip.wav --out explain.png   # or .mp4
    fusionedge explain --bundle B --data data/test --out explain-report

With a clip, the decision is explained by occlusion through the runtime
(:mod:`fusionedge.sdk.explain`): which cells of the frames and which slices of the audio it rests
on, and each sense's share of it, drawn as a picture or a video (:mod:`fusionedge.sdk.explain_draw`).
With ``--data``, every clip of a manifest is explained and the report checks the attribution against
the generator's rules and the maps with a deletion test (:mod:`fusionedge.sdk.explain_report`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fusionedge.cli.options import add_backends_option, add_json_option
from fusionedge.cli.output import print_json

__all__ = ["add_explain_parser"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def add_explain_parser(verbs: Any) -> None:
    """Add the ``explain`` verb to the ``fusionedge`` sub-parsers.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.
    """
    help = "show which cells, frames and audio slices a decision rests on, and how much was seen and heard"
    p = verbs.add_parser("explain", help=help, description=help)
    add_json_option(p)
    p.add_argument("--bundle", required=True, type=Path, help="the bundle folder (a fused camera + audio model)")
    add_backends_option(p)
    p.add_argument("--video", type=Path, default=None, help="the clip's video (default: none, audio alone)")
    p.add_argument("--audio", type=Path, default=None, help="the clip's wav file (default: none, video alone)")
    p.add_argument("--start", type=float, default=0.0, help="clip window start in seconds")
    p.add_argument("--data", type=Path, default=None,
                   help="instead of one clip: a labelled manifest (or its folder) to write the report on")
    p.add_argument("--limit", type=int, default=None, help="with --data: only the first N clips")
    p.add_argument("--out", required=True, type=Path,
                   help="the picture (.png, .jpg) or video (.mp4) of the clip; with --data, the report folder")
    p.add_argument("--cell", type=int, default=None,
                   help="cell size in model-input pixels (default: 16 for a clip, 32 for a report)")
    p.add_argument("--segments", type=int, default=10, help="audio slices the window is cut into")
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(args: argparse.Namespace) -> int:
    from fusionedge.sdk import Perception
    from fusionedge.sdk.errors import InputError

    if args.data is not None:
        if args.video is not None or args.audio is not None:
            raise InputError("give either --data (a report) or --video/--audio (one clip), not both")
    elif args.video is None and args.audio is None:
        raise InputError("give --video, --audio or both (one clip), or --data (a report)")
    elif args.out.suffix.lower() not in (*_IMAGE_SUFFIXES, ".mp4"):
        raise InputError(f"--out {args.out}: use .png or .jpg for a picture, .mp4 for a video")
    with Perception.load(args.bundle, backends=args.backends) as p:
        if args.data is not None:
            return _report(p, args)
        from fusionedge.sdk.explain import explain_clip
        from fusionedge.sdk.explain_draw import write_explain_image, write_explain_video

        explained = explain_clip(p, args.video, args.audio, start_seconds=args.start, cell=args.cell or 16,
                                 audio_segments=args.segments)
        if args.out.suffix.lower() == ".mp4":
            write_explain_video(explained, args.video, args.out, start_seconds=args.start)
        else:
            write_explain_image(explained, args.out)
    m = explained.map
    if args.json:
        print_json({**m.to_dict(), "out": str(args.out)})
        return 0
    c = m.attribution.contribution
    print(f"event: {m.event} ({m.score:.2f})   seen {c['video']:.0%}, heard {c['audio']:.0%}")
    if m.spatial is not None:
        r, col = divmod(int(m.spatial.argmax()), m.spatial.shape[1])
        print(f"  looked hardest at cell row {r}, column {col} ({m.cell}-px cells), evidence {m.spatial.max():+.2f}")
    if m.audio is not None:
        k = int(m.audio.argmax())
        print(f"  listened hardest at {m.audio_edges[k]:.2f}-{m.audio_edges[k + 1]:.2f} s, "
              f"evidence {m.audio[k]:+.2f}")
    print(f"explanation written to {args.out}")
    return 0


def _report(perception: Any, args: argparse.Namespace) -> int:
    from fusionedge.sdk.explain_report import explain_report

    show = not args.json and sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        print(f"\rexplained {done}/{total} clips", end="" if done < total else "\n", file=sys.stderr, flush=True)

    summary = explain_report(perception, args.data, args.out, limit=args.limit, cell=args.cell or 32,
                             audio_segments=args.segments, progress=progress if show else None)
    if args.json:
        print_json({k: v for k, v in summary.items() if k != "per_clip"})
        return 0
    for event, row in summary["per_event"].items():
        if "deciding_sense_larger" in row:
            print(f"{event}: the deciding sense ({row['deciding_sense']}) carries more on "
                  f"{row['deciding_sense_larger']:.1%} of {row['correct']} correct clips "
                  f"({'target met' if row['passes'] else 'TARGET MISSED'})")
    for m, row in summary["deletion"].items():
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.1f}x"
        print(f"deletion, {m}: most-attributed drop {row['top_drop']:.4f} vs random {row['random_drop']:.4f} "
              f"({ratio}, {'target met' if row['passes'] else 'TARGET MISSED'})")
    print(f"report written to {args.out / 'report.md'}")
    return 0
