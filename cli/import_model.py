"""``fusionedge import``: a user's own ONNX model (classifier, detector, audio classifier) to a bundle.

The work is :func:`fusionedge.export.import_onnx.import_onnx`; this module parses the verb, reads the
labels file and the ``--input`` declaration, and prints where the bundle went and its digest. It
needs the ``onnx`` package (part of the ``train`` extra) to read the model's input and output shapes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fusionedge.cli.options import add_json_option
from fusionedge.cli.output import print_json

__all__ = ["add_import_parser"]

_TASKS = ("classify", "detect", "audio-classify")
_PRESETS = ("yolov8", "yolo11", "yolov5", "centernet", "imagenet")


def _cmd_import(args: argparse.Namespace) -> int:
    from fusionedge.cli.extras import MissingExtraError

    try:
        import onnx  # noqa: F401 - checked here so that a missing package is one line, not a traceback
    except ImportError as e:
        raise MissingExtraError("train", "onnx") from e
    from fusionedge.export.import_onnx import import_onnx
    from fusionedge.export.import_spec import parse_input_spec, read_labels
    from fusionedge.sdk.bundle import load_bundle

    labels = read_labels(args.labels)
    decl = parse_input_spec(args.input) if args.input else None
    bundle = import_onnx(
        args.onnx,
        args.out,
        task=args.task,
        labels=labels,
        preset=args.preset,
        input_decl=decl,
        decode=args.decode,
        name=args.name,
        version=args.version,
        overwrite=args.overwrite,
    )
    loaded = load_bundle(bundle, verify=False)
    if args.json:
        print_json(
            {"bundle": str(bundle), "digest": loaded.digest, "task": loaded.task, "labels": len(labels)}
        )
    else:
        print(
            f"bundle written to {bundle} ({loaded.task}, {len(labels)} labels, digest sha256:{loaded.digest})"
        )
    return 0


def add_import_parser(verbs: Any) -> argparse.ArgumentParser:
    """Add ``fusionedge import`` to the ``fusionedge`` sub-parsers; returns its parser.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.
    """
    help = "turn your own ONNX classifier, detector or audio classifier into a bundle"
    p = verbs.add_parser("import", help=help, description=help)
    add_json_option(p)
    p.add_argument("--onnx", required=True, type=Path, help="the ONNX model (one float32 input)")
    p.add_argument("--task", required=True, choices=_TASKS, help="what the model does")
    p.add_argument(
        "--labels",
        required=True,
        type=Path,
        help="class names, one a line (or a JSON list), in the model's output order",
    )
    p.add_argument(
        "--preset",
        choices=_PRESETS,
        default=None,
        help="defaults of a model family: input layout, colour, scale, resize and the output "
        "decoder (default: imagenet for classify, yolov8 for detect)",
    )
    p.add_argument(
        "--input",
        default=None,
        metavar="[NAME:]KEY=VALUE,...",
        help="the input, over the preset: modality=image|audio, layout=NCHW|NHWC, color=RGB|BGR, "
        "size=WIDTHxHEIGHT, mean=R,G,B, std=R,G,B, scale=1/255, resize=stretch|letterbox, "
        "pad=114, sample_rate=HZ, seconds=S",
    )
    p.add_argument(
        "--decode",
        choices=("softmax", "sigmoid", "none"),
        default=None,
        help="a classifier's output: logits (softmax), multi-label logits (sigmoid) or "
        "probabilities (none); default softmax",
    )
    p.add_argument("--out", required=True, type=Path, help="bundle folder to create")
    p.add_argument("--name", default=None, help="model name in the manifest (default: the ONNX file's name)")
    p.add_argument("--version", default="0.1.0", help="the model's version in the manifest")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.set_defaults(func=_cmd_import)
    return p
