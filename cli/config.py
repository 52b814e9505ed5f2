"""Options from a TOML file and from ``FUSIONEDGE_*`` environment variables, for the long-running verbs.

A daemon such as ``fleet agent`` (or a ``run`` started by a service manager) has many options that
belong in a file or in the unit's environment rather than on one command line. A verb opts in with
:func:`add_config_option`, which adds ``--config FILE`` and names the verb's environment prefix
(``FUSIONEDGE_AGENT_``, ``FUSIONEDGE_RUN_``). Before the command line is parsed,
:func:`apply_config` reads the file and the environment and makes what they set the verb's
defaults, so the precedence is: flags > environment > file > built-in defaults, and an option that
is required on the command line is satisfied by either.

Keys are the verb's long option names without the dashes, with ``_`` or ``-`` (``device_id`` for
``--device-id``; ``fast = true`` for the flag ``--fast``); a variable is the prefix and the key in
upper case (``FUSIONEDGE_AGENT_DEVICE_ID``). Values are checked against the option as the
command line would be: an unknown key, a value of the wrong type or outside the choices is an
:class:`~fusionedge.sdk.errors.InputError` naming the file or variable (one line, exit status 2).
A relative path in a file is relative to the file's folder.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fusionedge.sdk.errors import InputError

__all__ = ["add_config_option", "apply_config", "find_verb_parser"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)
#: Options that are never read from a file or the environment.
_NOT_SETTABLE = {"help", "config"}


class _ConfigAction(argparse._StoreAction):
    """``--config FILE``; carries the verb's environment prefix for :func:`apply_config`."""

    env_prefix: str = ""


def add_config_option(p: argparse.ArgumentParser, env_prefix: str) -> None:
    """Let a verb take its options from ``--config FILE`` (TOML) and ``env_prefix``-named variables.

    Args:
        p: the verb's parser (its options must be added already or later; all are looked up when parsing).
        env_prefix: e.g. ``"FUSIONEDGE_AGENT_"``.
    """
    action = p.add_argument(
        "--config", type=Path, default=None, metavar="FILE", action=_ConfigAction,
        help=f"TOML file of this verb's options (keys: long option names, e.g. {_example_key(p)}); "
             f"{env_prefix}<OPTION> environment variables override it and flags override both")
    action.env_prefix = env_prefix


def _example_key(p: argparse.ArgumentParser) -> str:
    for action in p._actions:
        if action.required and action.option_strings:
            return f"{_key(action)} = ..."
    return "key = value"


def _key(action: argparse.Action) -> str:
    """``--device-id`` -> ``device_id`` (the longest option string names the key)."""
    return max(action.option_strings, key=len).lstrip("-").replace("-", "_")


def find_verb_parser(parser: argparse.ArgumentParser,
                     argv: Sequence[str]) -> tuple[tuple[str, ...], argparse.ArgumentParser]:
    """The verb path and parser ``argv`` names (``("fleet", "agent")``), following sub-verb names only."""
    path: tuple[str, ...] = ()
    current = parser
    for token in argv:
        if token.startswith("-"):
            continue
        subs = next((a.choices for a in current._actions if isinstance(a, argparse._SubParsersAction)), None)
        if not subs or token not in subs:
            break
        current = subs[token]
        path = (*path, token)
    return path, current


def _config_path(argv: Sequence[str]) -> Path | None:
    """The value of ``--config`` in ``argv`` (``--config F`` or ``--config=F``); the last one wins."""
    found = None
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            found = argv[i + 1]
        elif token.startswith("--config="):
            found = token.split("=", 1)[1]
    return Path(found) if found is not None else None


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"--config {path}: cannot read it ({e.strerror or e})") from e
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"--config {path}: not a TOML file ({e})") from e


def _describe(action: argparse.Action) -> str:
    if isinstance(action, _FLAGS):
        return "true or false"
    if action.choices is not None:
        return "one of " + ", ".join(map(str, action.choices))
    if action.type is int:
        return "an integer"
    if action.type is float:
        return "a number"
    return "a string"


def _convert(action: argparse.Action, value: Any, where: str, base: Path | None) -> Any:
    """A file's (typed) or a variable's (text) value as the option's parsed value.

    Raises:
        InputError: the value does not fit the option; ``where`` names the key or variable.
    """
    text = isinstance(value, str) and base is None  # an environment variable: everything is text
    if isinstance(action, _FLAGS):
        if text and value.strip().lower() in _TRUE | _FALSE:
            value = value.strip().lower() in _TRUE
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {value!r}")
        if isinstance(action, argparse._StoreConstAction) and not isinstance(action.const, bool):
            if not value:
                raise InputError(f"{where}: can only be true")
            return action.const
        return action.const if value else not action.const
    if isinstance(action, argparse._AppendAction):
        items = value.split(",") if text else value
        if not isinstance(items, list):
            raise InputError(f"{where}: expected a list, got {value!r}")
        return [_convert_one(action, v.strip() if text else v, where, base, text) for v in items]
    return _convert_one(action, value, where, base, text)


def _convert_one(action: argparse.Action, value: Any, where: str, base: Path | None, text: bool) -> Any:
    kind = action.type
    try:
        if kind in (int, float) and not text:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    kind is int and not isinstance(value, int)):
                raise TypeError
            value = kind(value)
        elif isinstance(value, list) and not text and kind not in (None, int, float, Path):
            value = kind(",".join(map(str, value)))  # a list option: backends = ["tensorrt", "onnxruntime"]
        elif not isinstance(value, str):
            raise TypeError
        elif kind is Path:
            if not value:
                raise ValueError
            value = Path(value)
            if base is not None and not value.is_absolute():
                value = base / value
        elif kind is not None:
            value = kind(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
        detail = f" ({e})" if isinstance(e, argparse.ArgumentTypeError) else ""
        raise InputError(f"{where}: expected {_describe(action)}, got {value!r}{detail}") from None
    if action.choices is not None and value not in action.choices:
        raise InputError(f"{where}: expected {_describe(action)}, got {value!r}")
    return value


def apply_config(parser: argparse.ArgumentParser, argv: Sequence[str],
                 environ: Mapping[str, str] | None = None) -> None:
    """Make the values of ``--config`` and the environment the defaults of the verb ``argv`` names.

    Does nothing for a verb without ``--config``. Call it on a freshly built parser, before parsing.

    Args:
        parser: the root parser.
        argv: the command line (without the program name).
        environ: the environment (default ``os.environ``).

    Raises:
        InputError: an unreadable or malformed file, an unknown key or variable, a value of the wrong type.
    """
    environ = os.environ if environ is None else environ
    _, verb = find_verb_parser(parser, argv)
    config = next((a for a in verb._actions if isinstance(a, _ConfigAction)), None)
    if config is None:
        return
    by_key: dict[str, argparse.Action] = {}
    for action in verb._actions:
        if action.option_strings and action.help is not argparse.SUPPRESS and action.dest not in _NOT_SETTABLE:
            for option in action.option_strings:
                if option.startswith("--"):
                    by_key[option[2:].replace("-", "_")] = action
    values: dict[str, tuple[argparse.Action, Any]] = {}  # dest -> (action, value); later sources win
    path = _config_path(argv)
    if path is not None:
        for key, value in _read_toml(path).items():
            action = by_key.get(key.replace("-", "_"))
            where = f"--config {path}: {key}"
            if action is None:
                raise InputError(f"--config {path}: unknown key {key!r} (known: {', '.join(sorted(by_key))})")
            values[action.dest] = (action, _convert(action, value, where, path.parent))
    prefix = config.env_prefix
    for name in sorted(environ):
        if not name.startswith(prefix):
            continue
        key = name[len(prefix):].lower()
        action = by_key.get(key)
        if action is None:
            known = ", ".join(prefix + k.upper() for k in sorted(by_key))
            raise InputError(f"{name}: unknown variable (known: {known})")
        values[action.dest] = (action, _convert(action, environ[name], name, None))
    given = {token.split("=", 1)[0] for token in argv if token.startswith("-")}
    for group in verb._mutually_exclusive_groups:
        # A flag of an exclusive group on the command line overrides what the file set for the others.
        if any(set(a.option_strings) & given for a in group._group_actions):
            for a in group._group_actions:
                if not set(a.option_strings) & given:
                    values.pop(a.dest, None)
    for dest, (action, value) in values.items():
        verb.set_defaults(**{dest: value})
        for a in verb._actions:
            if a.dest == dest:
                a.required = False
