"""Errors of the benchmark harness, in the FusionEdge hierarchy.

``BenchConfigError``  what the caller asked for cannot be benchmarked (unknown scenario, a precision
                      the bundle lacks, a scenario the bundle's batch range cannot serve, bad
                      durations): an :class:`~fusionedge.sdk.errors.InputError`, so the CLI prints it
                      on one line and exits with status 2.
``ResultsError``      a ``results.json`` does not follow the schema (the message names the field).

Unknown or unavailable backends raise the SDK's own :class:`~fusionedge.sdk.errors.BackendError`, and a
missing or altered bundle its :class:`~fusionedge.sdk.errors.BundleError`.
"""

from __future__ import annotations

from fusionedge.sdk.errors import FusionEdgeError, InputError

__all__ = ["BenchConfigError", "ResultsError"]


class BenchConfigError(InputError):
    """A benchmark configuration that cannot run; the message names the option and what to do."""


class ResultsError(FusionEdgeError, ValueError):
    """A benchmark results document is malformed; the message names the file and the field."""
