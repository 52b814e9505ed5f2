"""``fusionedge completion bash|zsh|tcsh``: print a shell completion script for the whole command.

The script is generated from the same parser the command runs (:func:`fusionedge.cli.main.build_parser`)
by shtab, so every verb, sub-verb, option and choice completes, and an option that takes a path
completes file names. Install it once, e.g.::

    fusionedge completion bash > ~/.local/share/bash-completion/completions/fusionedge
    fusionedge completion zsh > ~/.zfunc/_fusionedge   # with fpath+=~/.zfunc before compinit
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fusionedge.sdk.errors import FusionEdgeError

__all__ = ["SHELLS", "add_completion_parser", "completion_script"]

#: The shells a script can be generated for (shtab's).
SHELLS = ("bash", "zsh", "tcsh")


def completion_script(shell: str) -> str:
    """The completion script of the ``fusionedge`` command for ``shell``.

    Raises:
        FusionEdgeError: shtab (a dependency of the runtime install) cannot be imported.
    """
    try:
        import shtab
    except ImportError as e:
        raise FusionEdgeError("shell completion needs shtab: pip install shtab") from e
    from fusionedge.cli.help import walk_parsers
    from fusionedge.cli.main import build_parser

    parser = build_parser()
    for _, p in walk_parsers(parser):
        for action in p._actions:
            if action.type is Path:
                action.complete = shtab.FILE  # type: ignore[attr-defined]
    return shtab.complete(parser, shell=shell)


def _cmd_completion(args: argparse.Namespace) -> int:
    print(completion_script(args.shell), end="")
    return 0


def add_completion_parser(verbs: Any) -> argparse.ArgumentParser:
    """Add ``fusionedge completion`` to the ``fusionedge`` sub-parsers; returns its parser.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.
    """
    help = "print a shell completion script (bash, zsh, tcsh)"
    p = verbs.add_parser("completion", help=help, description=help)
    p.add_argument("shell", choices=SHELLS, help="the shell to complete for")
    p.set_defaults(func=_cmd_completion)
    return p
