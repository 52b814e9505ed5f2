"""``fusionedge compare``: every backend and precision variant against the FP32 reference.

The comparison is :func:`fusionedge.export.compare.compare`; this module parses the verb, prints
the table (``--json``: the report) and exits with 1 when a pair is beyond its tolerance. It needs
only the runtime install.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fusionedge.cli.options import add_backends_option, add_json_option
from fusionedge.cli.output import print_json

__all__ = ["add_compare_parser"]


def _cmd_compare(args: argparse.Namespace) -> int:
    from fusionedge.export.compare import compare

    report = compare(args.bundle, args.backends, variants=args.variant or [], data=args.data,
                     data_limit=args.data_limit)
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.table())
    return 0 if report.ok else 1


def add_compare_parser(verbs: Any) -> None:
    """Add ``fusionedge compare`` to the ``fusionedge`` sub-parsers.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.
    """
    help = "compare backends and precision variants against the FP32 reference"
    p = verbs.add_parser("compare", help=help,
                         description="The same inputs on every backend and precision variant, against the "
                                     "FP32 reference.")
    p.add_argument("--bundle", required=True, type=Path, help="the FP32 bundle (reference)")
    add_backends_option(p, help="ordered, comma-separated backend names to compare")
    p.add_argument("--variant", action="append", type=Path, help="a variant bundle (repeatable)")
    p.add_argument("--data", type=Path, default=None, help="data-set manifest: add real samples")
    p.add_argument("--data-limit", type=int, default=16, help="real samples taken from --data")
    add_json_option(p)
    p.set_defaults(func=_cmd_compare)
