"""The health check an installed release must pass before it is committed.

A release is healthy on this device when its bundle verifies (every file's hash, and the pinned
manifest digest when the release carries one), it loads on the device's *preferred* backend — a
fallback counts as a failure, since a model that silently runs ten times slower is not healthy —,
its golden self-test passes within the manifest's tolerance (NaN/Inf outputs refused), and its
median golden-inference latency is within the budget.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fusionedge.sdk.errors import BackendError

__all__ = ["health_check"]


def health_check(path: Path, *, backends: Sequence[str], backend_options: Mapping[str, Mapping[str, Any]],
                 runs: int, latency_budget_ms: float | None, expected_digest: str | None = None,
                 on_loaded: Callable[[], None] | None = None) -> dict:
    """Load the bundle at ``path`` and check it; return the measurements.

    Args:
        path: the installed bundle folder.
        backends: the agent's backends available on this device, preferred first (at least one).
        backend_options: per-backend options.
        runs: golden inferences timed.
        latency_budget_ms: the largest median latency accepted (None: no budget).
        expected_digest: the release's pinned bundle digest (None or empty: not pinned).
        on_loaded: called once the model is loaded (a fault-injection seam).

    Returns:
        ``{"backend", "self_test_max_abs_err", "load_ms", "latency_ms_median", "latency_ms_max",
        "golden_batch", "runs"}``.

    Raises:
        BundleError: a file or the digest does not verify, or the self-test fails.
        BackendError: no backend, a fallback from the preferred one, NaN/Inf outputs, or over budget.
        InputError: the golden inputs do not fit the model.
    """
    from fusionedge.sdk.perception import Perception

    if not backends:
        raise BackendError("none of the agent's backends is available on this device")
    t0 = time.perf_counter()
    perception = Perception.load(path, list(backends), verify=True, backend_options=backend_options,
                                 expected_digest=expected_digest or None)
    load_ms = (time.perf_counter() - t0) * 1e3
    try:
        if on_loaded is not None:
            on_loaded()
        if perception.fallbacks:
            first = perception.fallbacks[0]
            raise BackendError(f"the preferred backend {first.backend!r} failed to load ({first.reason}); the "
                               f"model would run on {perception.backend_name!r} instead")
        err = perception.self_test()
        inputs, _ = perception.bundle.golden()
        latencies = []
        for _ in range(runs):
            t0 = time.perf_counter()
            perception.backend.infer(inputs)
            latencies.append((time.perf_counter() - t0) * 1e3)
    finally:
        perception.close()
    health = {"backend": perception.backend_name, "self_test_max_abs_err": err, "load_ms": load_ms,
              "latency_ms_median": statistics.median(latencies), "latency_ms_max": max(latencies),
              "golden_batch": int(next(iter(inputs.values())).shape[0]), "runs": runs}
    if latency_budget_ms is not None and health["latency_ms_median"] > latency_budget_ms:
        raise BackendError(f"median golden-inference latency {health['latency_ms_median']:.1f} ms exceeds the "
                           f"budget of {latency_budget_ms:g} ms")
    return health
