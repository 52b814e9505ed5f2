"""``fusionedge data synth|questions|outside|import|check``: make, bring in and check data sets.

The scenes of ``synth`` (mp4 video, 16 kHz wav, labels) come from :mod:`fusionedge.training.synth`;
``questions`` draws a generated data set's questions again under the current question rules
(:mod:`fusionedge.training.synth.questions`), keeping its media;
``outside`` writes the outside-media evaluation set of :mod:`fusionedge.training.outside_media`
(sox, ffmpeg, espeak-ng); ``import`` writes a manifest from COCO, MOTChallenge, AudioSet/ESC-style
CSV or a folder per class (:mod:`fusionedge.training.data_import`); ``check`` reports label balance,
box sizes and the clips that do not decode (:mod:`fusionedge.sdk.datacheck`). This module only
parses the verbs and prints; all of them need numpy and OpenCV (the runtime install), not torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fusionedge.cli.options import add_json_option, add_sub_verbs
from fusionedge.cli.output import print_json

__all__ = ["add_data_parser"]


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from fusionedge.training.synth.generate import generate_dataset

    manifest = generate_dataset(
        args.out, args.samples, args.seed, workers=args.workers, progress=not args.json,
        cue_agreement=args.cue_agreement, overwrite=args.overwrite,
    )
    if args.json:
        print_json({"manifest": str(manifest), "samples": args.samples, "seed": args.seed,
                    "cue_agreement": args.cue_agreement})
    else:
        print(f"wrote {args.samples} samples to {manifest}")
    return 0


def _cmd_data_questions(args: argparse.Namespace) -> int:
    from collections import Counter

    from fusionedge.sdk.datamanifest import read_manifest, write_manifest
    from fusionedge.training.synth.questions import redraw_questions

    samples = read_manifest(args.data, require_labels=False, events=None, audio_tags=None, objects=None)
    redrawn, n = redraw_questions(samples, draws=args.draws)
    write_manifest(args.out, redrawn)
    types = Counter(q.type for s in redrawn for q in s.questions)
    if args.json:
        print_json({"manifest": str(args.out), "samples": len(redrawn), "redrawn": n, "draws": args.draws,
                    "questions": sum(types.values()), "types": dict(sorted(types.items()))})
    else:
        print(f"redrew the questions of {n} of {len(redrawn)} samples into {args.out}: {sum(types.values())} "
              f"questions ({', '.join(f'{k} {v}' for k, v in sorted(types.items()))})")
    return 0


def _cmd_data_outside(args: argparse.Namespace) -> int:
    from fusionedge.training.outside_media import generate_outside_dataset

    manifest = generate_outside_dataset(args.out, seed=args.seed, samples_per_kind=args.samples_per_kind,
                                        overwrite=args.overwrite)
    n = sum(1 for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip())
    if args.json:
        print_json({"manifest": str(manifest), "samples": n, "seed": args.seed})
    else:
        print(f"wrote {n} outside-media samples to {manifest}")
    return 0


def _cmd_data_import(args: argparse.Namespace) -> int:
    from fusionedge.training.data_import import import_dataset

    options: dict[str, Any] = {}
    if args.format in ("coco", "mot"):
        options.update(clip_frames=args.clip_frames, stride=args.stride)
    if args.format in ("coco", "csv", "folders") and args.fps is not None:
        options["fps"] = args.fps
    if args.format == "mot":
        options.update(video=args.video, fps=args.fps)
    if args.format == "coco":
        options.update(media_dir=args.media_dir, still_seconds=args.still_seconds)
    if args.format == "csv":
        options.update(media_dir=args.media_dir, file_column=args.file_column, label_column=args.label_column,
                       start_column=args.start_column, end_column=args.end_column,
                       fold_column=args.fold_column, label_sep=args.label_sep, labels_as=args.labels_as)
    result = import_dataset(args.format, args.src, args.out, skip_invalid=args.skip_invalid,
                            overwrite=args.overwrite, progress=not args.json, **options)
    if args.json:
        print_json(result.as_dict())
    else:
        labels = {**result.events, **result.audio_tags}
        print(f"wrote {result.samples} samples to {result.manifest}"
              + (f"; labels: {', '.join(f'{k} {n}' for k, n in labels.items())}" if labels else "")
              + (f"; boxes: {', '.join(f'{k} {n}' for k, n in result.boxes.items())}" if result.boxes else "")
              + (f"; {len(result.refused)} refused row(s) left out" if result.refused else ""))
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from fusionedge.sdk.datacheck import check_dataset, format_report

    report = check_dataset(args.data, decode=not args.no_decode, tiny=args.tiny, progress=not args.json)
    if args.json:
        print_json(report.as_dict())
    else:
        print(format_report(report))
    return 1 if report.failures else 0


def _add_import_parser(data: Any) -> None:
    help = "write a manifest from COCO, MOTChallenge, AudioSet/ESC-style CSV or a folder per class"
    p = data.add_parser("import", help=help, description=help + ". Every refused row is named (file and "
                        "line, or COCO id) in one error line and nothing is written, unless --skip-invalid.")
    p.add_argument("--format", required=True, choices=("coco", "mot", "csv", "folders"),
                   help="coco: detection JSON (COCO-VID video_id/frame_id cut into windows); mot: a sequence "
                        "folder or gt.txt; csv: audio clips and tags; folders: one folder per class")
    p.add_argument("src", type=Path, help="the COCO JSON, MOT sequence folder or gt.txt, CSV, or class folders")
    p.add_argument("--out", required=True, type=Path, help="data-set folder to write (manifest.jsonl + media/)")
    p.add_argument("--media-dir", type=Path, default=None,
                   help="coco, csv: folder the file names are relative to (default: the source file's folder)")
    p.add_argument("--video", type=Path, default=None,
                   help="mot: the sequence as a video file (default: its img1/ frames)")
    p.add_argument("--clip-frames", type=int, default=8, help="coco (video), mot: frames per clip window")
    p.add_argument("--stride", type=int, default=None,
                   help="coco (video), mot: frames between window starts (default: --clip-frames)")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate of written clips (default: mot seqinfo.ini's or 30; others 10)")
    p.add_argument("--still-seconds", type=float, default=1.0, help="coco: seconds a still image's clip lasts")
    p.add_argument("--file-column", default=None, help="csv: column of the audio file (default: filename, "
                   "file, path, fname, slice_file_name or ytid)")
    p.add_argument("--label-column", default=None, help="csv: column of the label(s) (default: labels, label, "
                   "positive_labels, category, class, tags or tag)")
    p.add_argument("--start-column", default=None, help="csv: clip start in seconds (default: start_seconds)")
    p.add_argument("--end-column", default=None, help="csv: clip end in seconds (default: end_seconds)")
    p.add_argument("--fold-column", default=None, help="csv: kept as 'fold' per sample (default: fold)")
    p.add_argument("--label-sep", default=",", help="csv: separates several labels in one cell")
    p.add_argument("--labels-as", choices=("tags", "event"), default="tags",
                   help="csv: labels become audio_tags or (one per row) the event")
    p.add_argument("--skip-invalid", action="store_true",
                   help="leave refused rows out (listed in the summary) instead of refusing the import")
    p.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")
    add_json_option(p, help="print a summary (samples, counts per label, refused rows) as one JSON object")
    p.set_defaults(func=_cmd_data_import)


def _add_check_parser(data: Any) -> None:
    help = "check a data set: class balance, unlabelled share, box sizes, clips that do not decode"
    p = data.add_parser("check", help=help, description=help + ", frame sizes, fps, sample rates and "
                        "durations seen. Exit status: 0 all well, 1 some clips do not decode, 2 the manifest "
                        "is invalid (one line naming file, line and field).")
    p.add_argument("data", type=Path, help="the manifest or its folder")
    p.add_argument("--tiny", type=float, default=8.0, help="a box with a shorter side under this (px) is tiny")
    p.add_argument("--no-decode", action="store_true", help="check labels and boxes only, decode no media")
    add_json_option(p)
    p.set_defaults(func=_cmd_data_check)


def add_data_parser(verbs: Any) -> None:
    """Add ``data`` and its ``synth``, ``questions``, ``outside``, ``import`` and ``check`` sub-verbs to the ``fusionedge`` parser.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.
    """
    group = verbs.add_parser("data", help="data-set tools", description="Data-set tools.")
    data = add_sub_verbs(group, "data_verb")
    help = "generate synthetic multimodal driving scenes"
    p = data.add_parser("synth", help=help, description=help)
    p.add_argument("--out", required=True, type=Path, help="output folder (manifest.jsonl + media/)")
    p.add_argument("--samples", type=int, default=200, help="scenes to generate")
    p.add_argument("--seed", type=int, default=0, help="the data set is a function of its seed")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--cue-agreement", type=float, default=0.5,
                   help="P(siren audible == lights-ON emergency vehicle in view); 0.5: the four events "
                        "equally likely (labelled sets), e.g. 0.9 for an unlabelled pool like real traffic")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set in --out")
    add_json_option(p)
    p.set_defaults(func=_cmd_data_synth)
    help = "draw a generated data set's questions again under the current question rules, keeping its media"
    p = data.add_parser("questions", help=help, description=help + ". Each clip's questions come from its own "
                        "random stream, so the same rules give the same questions; samples without the "
                        "generator's truth (your own clips) keep theirs.")
    p.add_argument("data", type=Path, help="the manifest or its folder")
    p.add_argument("--out", required=True, type=Path,
                   help="the manifest to write (written atomically; name the input to replace it)")
    p.add_argument("--draws", type=int, default=1,
                   help="independent draws per clip, joined: more questions per training clip (keep 1 for "
                        "validation and test data, the mix a user is asked)")
    add_json_option(p)
    p.set_defaults(func=_cmd_data_questions)
    help = "make an evaluation set of non-road media with sox, ffmpeg and espeak-ng (never for training)"
    p = data.add_parser("outside", help=help, description=help)
    p.add_argument("--out", required=True, type=Path, help="output folder (manifest.jsonl + media/)")
    p.add_argument("--seed", type=int, default=0, help="the data set is a function of its seed")
    p.add_argument("--samples-per-kind", type=int, default=3,
                   help="clips of each kind (silence, tones, beeps, speech, noise, sirens, ...)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set in --out")
    add_json_option(p)
    p.set_defaults(func=_cmd_data_outside)
    _add_import_parser(data)
    _add_check_parser(data)
