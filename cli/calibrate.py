"""``fusionedge calibrate``: fit a bundle's temperature, tag thresholds and OOD score on validation data.

The fitting is :mod:`fusionedge.export.calibrate` (runtime install only: ONNX Runtime and NumPy);
this module parses the verb and prints what was fit. The bundle is rewritten in place (its manifest
only); a signed bundle is refused unless ``--sign-key`` re-signs it or ``--drop-signature`` removes
the signature that would no longer verify.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fusionedge.cli.options import add_backends_option, add_json_option
from fusionedge.cli.output import print_json

__all__ = ["add_calibrate_parser", "format_calibration"]


def format_calibration(summary: dict) -> str:
    """The human-readable form of :func:`~fusionedge.export.calibrate.calibrate_bundle`'s summary."""
    cal, val = summary["calibration"], summary["validation"]
    ood = cal["ood"]
    lines = [
        f"calibrated {summary['bundle']} on {val['samples']} validation clips",
        (f"  temperature        {cal['temperature']:.3f}   (NLL {val['nll_before']:.4f} -> {val['nll_after']:.4f}, "
         f"ECE {val['ece_before']:.4f} -> {val['ece_after']:.4f} on the validation set)"),
        "  tag thresholds     " + ", ".join(
            f"{t} {v:.2f}" + ("" if t in cal["fitted_tags"] else " (not fit: one class only)")
            for t, v in cal["tag_thresholds"].items()) + f"   ({cal['tag_threshold_rule']})",
        (f"  OOD score          {ood['score']}, threshold {ood['threshold']:.3f} "
         f"({ood['threshold_events_only']:.3f} without audio), target rate {ood['target_rate']:.2f}, "
         f"{val['uncertain_rate']:.2f} of the validation clips above it"),
    ]
    det = cal.get("detection_thresholds")
    if det:
        before, after = val["detection_f1_before"], val["detection_f1_after"]
        lines.append("  box thresholds     " + ", ".join(
            f"{c} {v:.2f}" + (f" (F1 {before[c]:.3f} -> {after[c]:.3f})" if c in after else "")
            + ("" if c in det["fitted"] else " (not fit)") for c, v in det["thresholds"].items())
            + f"   ({det['rule']}; F1 at 0.30 for all -> at each class's own)")
    for m, v in cal.get("missing_modality", {}).items():
        if m == "rule":
            continue
        verdict = "still decided" if v["alarm_decided"] else "a guess: results without it are uncertain"
        lines.append(f"  without {m:<10} alarm accuracy {v['alarm_accuracy']:.3f} (majority {v['majority']:.3f}): "
                     f"{verdict}")
    lines.append(f"  digest             {summary['digest']['before'][:12]}… -> {summary['digest']['after'][:12]}…")
    if summary["signature"] != "none":
        lines.append(f"  signature          {summary['signature']}")
    return "\n".join(lines)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from fusionedge.export.calibrate import calibrate_bundle

    key = args.sign_key.read_bytes() if args.sign_key is not None else None
    summary = calibrate_bundle(args.bundle, args.data, target_ood_rate=args.target_ood_rate, backends=args.backends,
                               batch_size=args.batch_size, progress=not args.json, sign_key=key,
                               drop_signature=args.drop_signature)
    if args.json:
        print_json(summary)
    else:
        print(format_calibration(summary))
    return 0


def add_calibrate_parser(verbs: Any) -> argparse.ArgumentParser:
    """Add ``calibrate`` to the ``fusionedge`` sub-parsers.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.

    Returns:
        The verb's parser.
    """
    help = "fit a bundle's event temperature, audio-tag thresholds and out-of-distribution score"
    p = verbs.add_parser("calibrate", help=help,
                         description=help + " on a labelled validation set, through the runtime; the result is "
                                            "stored in the bundle's manifest and applied by every verb that "
                                            "runs it")
    add_json_option(p)
    p.add_argument("--bundle", required=True, type=Path, help="the bundle folder (its manifest is rewritten)")
    p.add_argument("--data", required=True, type=Path, help="the validation manifest or its folder")
    p.add_argument("--target-ood-rate", type=float, default=0.05,
                   help="share of validation clips left above the OOD threshold (marked uncertain)")
    add_backends_option(p)
    p.add_argument("--batch-size", type=int, default=16, help="clips per inference call")
    sig = p.add_mutually_exclusive_group()
    sig.add_argument("--sign-key", type=Path, default=None,
                     help="ed25519 private key (PEM) to re-sign a signed bundle with")
    sig.add_argument("--drop-signature", action="store_true",
                     help="remove a signed bundle's manifest.sig, which would no longer verify")
    p.set_defaults(func=_cmd_calibrate)
    return p
