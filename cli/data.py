"""``fusionedge data synth``: generate a synthetic multimodal driving-scene data set.

The scenes (mp4 video, 16 kHz wav, labels) come from :mod:`fusionedge.training.synth`; this module
only parses the verb and prints where the manifest went. Generating needs numpy and OpenCV (the
runtime install), not torch.
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


def add_data_parser(verbs: Any) -> None:
    """Add ``data`` and its ``synth`` sub-verb to the ``fusionedge`` sub-parsers.

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
