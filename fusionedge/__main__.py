"""``python -m fusionedge ARGS`` is ``fusionedge ARGS`` (for a machine where the console script is not on PATH).

This folder holds only this file: ``fusionedge`` is a namespace package whose parts live in the
top-level folders (pyproject.toml maps them), and this is the one module of the namespace itself.
"""

import sys

from fusionedge.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
