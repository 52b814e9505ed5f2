#!/usr/bin/env python
"""Check the ``fusionedge`` command's help: every option documented, every verb with an example.

Usage::

    python scripts/check_cli_help.py [--command "python -m fusionedge"]

Runs ``fusionedge --help`` as a user would, then ``--help`` of every verb and sub-verb it lists,
and reads what each prints: an option or argument without help text, a verb without a description
and a verb without an ``examples:`` section are listed, as is a ``--help`` that fails. Exits 1 when
anything is listed, 0 otherwise. It drives the installed command rather than importing it, as a
user (and the help a user sees) would. ``tests/test_cli_conventions.py`` runs it.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence

#: A section heading of argparse's help ("options:", "positional arguments:", "sub-verbs:").
_HEADING = re.compile(r"^\S.*:$")


def _sections(text: str) -> tuple[str, dict[str, list[str]]]:
    """(the description, heading -> the section's lines) of one help text."""
    lines = text.splitlines()
    i = 0
    while i < len(lines) and lines[i].strip():  # the usage block
        i += 1
    description, sections, current = [], {}, None
    for line in lines[i:]:
        if _HEADING.match(line):
            current = line[:-1]
            sections[current] = []
        elif current is None:
            description.append(line)
        else:
            sections[current].append(line)
    return " ".join(d.strip() for d in description).strip(), sections


def _items(lines: list[str]) -> list[tuple[str, bool, list[str]]]:
    """The entries of one section: (invocation, has help text, sub-verb names listed under it)."""
    items: list[tuple[str, bool, list[str]]] = []
    for n, line in enumerate(lines):
        if not line.startswith("  ") or line.startswith("   "):
            continue  # not an entry at the section's indent (a continuation, a sub-verb, blank)
        head, _, rest = line[2:].partition("  ")
        following = lines[n + 1] if n + 1 < len(lines) else ""
        subs = []
        for sub in lines[n + 1:]:
            if sub.startswith("    ") and not sub.startswith("     ") and sub.strip():
                subs.append(sub.split()[0])
            elif sub.startswith("  ") and not sub.startswith("   "):
                break
        has_help = bool(rest.strip()) or (following.startswith("      ") and bool(following.strip())) or bool(subs)
        items.append((head.strip(), has_help, subs))
    return items


def help_text_problems(name: str, text: str, *, is_root: bool = False) -> tuple[list[str], list[str]]:
    """(the problems, the sub-verbs listed) of one ``--help`` output.

    Args:
        name: the verb as typed (``fusionedge fleet agent``), for the problem lines.
        text: what its ``--help`` printed.
        is_root: the command itself (a description is required of verbs only).
    """
    description, sections = _sections(text)
    problems, subs = [], []
    if not is_root and not description:
        problems.append(f"{name}: no description")
    examples = sections.get("examples", [])
    if not any(line.strip().startswith("fusionedge") for line in examples):
        problems.append(f"{name}: no example")
    for heading, lines in sections.items():
        if heading == "examples":
            continue
        for invocation, has_help, listed in _items(lines):
            subs += listed
            if not has_help:
                problems.append(f"{name} {invocation}: no help text")
    return problems, subs


def check(command: Sequence[str]) -> tuple[list[str], int]:
    """(the problems, how many help texts were read) of ``command`` and every verb and sub-verb below it."""
    problems: list[str] = []
    pending: list[tuple[str, ...]] = [()]
    read = 0
    while pending:
        path = pending.pop(0)
        read += 1
        name = " ".join(("fusionedge", *path))
        proc = subprocess.run([*command, *path, "--help"], capture_output=True, text=True, timeout=120,
                              check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            problems.append(f"{name} --help fails (exit {proc.returncode}): {last}")
            continue
        found, subs = help_text_problems(name, proc.stdout, is_root=not path)
        problems += found
        pending += [(*path, sub) for sub in subs]
    return problems, read


def main(argv: Sequence[str] | None = None) -> int:
    """Print the problems; returns 1 when there are any."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--command", default=f"{shlex.quote(sys.executable)} -m fusionedge",
                        help="how to run the command (default: this Python's -m fusionedge)")
    args = parser.parse_args(argv)
    problems, read = check(shlex.split(args.command))
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} help problem(s)", file=sys.stderr)
        return 1
    print(f"{read} help texts: every option has help text and every verb a description and an example")
    return 0


if __name__ == "__main__":
    sys.exit(main())
