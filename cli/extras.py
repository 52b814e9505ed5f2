"""Which optional extra each verb needs, checked when the verb runs rather than when it is parsed.

Every verb is registered whatever is installed, so ``fusionedge --help`` always lists them all and
parsing never imports a heavy library. A verb that needs an extra (torch for training and export,
the TUF and MQTT clients for fleet updates, MLPerf LoadGen for benchmarks) is wrapped by
:func:`needs`: before its handler runs, the extra's modules are imported, and when one cannot be, the
verb stops with one line naming the extra to install (exit status 2) instead of a traceback deep in
the handler.
"""

from __future__ import annotations

import argparse
import functools
import importlib
from collections.abc import Callable

from fusionedge.sdk.errors import FusionEdgeError

__all__ = ["EXTRAS", "MissingExtraError", "needs", "require_extra"]

#: extra name (as in pyproject's optional-dependencies) -> the modules a verb imports from it.
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch",),
    "fleet": ("tuf", "securesystemslib", "paho.mqtt"),
    "bench": ("mlperf_loadgen",),
    "telemetry": ("prometheus_client",),
    "compress": ("torch_pruning",),
    "qa": ("tokenizers",),
}

Handler = Callable[[argparse.Namespace], int]


class MissingExtraError(FusionEdgeError):
    """A verb needs an optional extra that is not installed here."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(f"this verb needs the {extra!r} extra: pip install 'fusionedge[{extra}]'")
        self.extra = extra
        self.module = module


def require_extra(extra: str) -> None:
    """Import the modules of ``extra``.

    Raises:
        MissingExtraError: one of them cannot be imported (not installed, or broken).
        KeyError: ``extra`` is not one of :data:`EXTRAS` (a programming error).
    """
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MissingExtraError(extra, module) from e


def needs(extra: str, handler: Handler) -> Handler:
    """Wrap a verb's handler so that it checks ``extra`` first (see :func:`require_extra`).

    Args:
        extra: a key of :data:`EXTRAS`.
        handler: the verb's handler, ``handler(args) -> exit status``.

    Returns:
        The guarded handler, to pass as the parser's ``func`` default.
    """
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; one of {', '.join(EXTRAS)}")

    @functools.wraps(handler)
    def guarded(args: argparse.Namespace) -> int:
        require_extra(extra)
        return handler(args)

    guarded.extra = extra  # type: ignore[attr-defined]
    return guarded
