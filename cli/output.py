"""What every verb prints: one JSON printer for ``--json``, one line per user error.

``--json`` prints exactly one strict JSON object on stdout (NaN/Inf as ``null``, through
:func:`fusionedge.sdk.fileio.json_safe`); progress and messages go to stderr. A reader that closes
the pipe early (``fusionedge eval ... --json | head -1``) ends the command quietly instead of with a
``BrokenPipeError`` traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from fusionedge.sdk.fileio import dumps_json

__all__ = ["print_json", "quiet_broken_pipe"]


def print_json(obj: Any, *, indent: int | None = 2) -> None:
    """Print ``obj`` as one strict JSON document on stdout and flush it.

    Args:
        obj: what to print; NaN/Inf become ``null``.
        indent: 2 for one indented document; None for one compact line (a verb that prints one
            object per event, JSON Lines).
    """
    sys.stdout.write(dumps_json(obj, indent=indent) + "\n")
    sys.stdout.flush()


def quiet_broken_pipe() -> None:
    """After stdout's reader went away: point stdout at /dev/null so the exit flush cannot fail.

    Python flushes stdout again at exit; with the pipe closed that second flush would print
    ``Exception ignored ... BrokenPipeError``. Call this from the handler of ``BrokenPipeError``.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (e.g. captured in tests)
        pass
