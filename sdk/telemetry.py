"""Prometheus metrics of a running pipeline and of the fleet update agent, served over HTTP.

A device in the field is watched by scraping it: :class:`PipelineMetrics` exposes what a streaming
pipeline (``fusionedge run``) already measures — results and frames, drops per queue, results per
second, per-stage latency histograms, sensor health, the model and backend in use — and
:class:`AgentMetrics` what the update agent (``fusionedge fleet agent``) decided — the release in use,
the time and outcome of the last check, failures and rollbacks. Counters and sensor states are read
from the pipeline's own :meth:`~fusionedge.sdk.streaming.pipeline.Pipeline.stats` at scrape time, so
the endpoint and the pipeline's summary cannot disagree; latencies are observed per result by a sink.
:func:`serve_metrics` serves a registry on loopback unless told otherwise. prometheus-client (the
``telemetry`` extra) is imported only when one of these is created: the runtime does not need it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from fusionedge.sdk.errors import FusionEdgeError

__all__ = ["LATENCY_BUCKETS", "AgentMetrics", "MetricsServer", "PipelineMetrics", "serve_metrics"]

#: Histogram buckets (seconds) for stage and capture-to-result latencies: 0.5 ms to 5 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as e:
        raise FusionEdgeError("metrics need prometheus-client: pip install 'fusionedge[telemetry]'") from e
    return prometheus_client


class _PipelineStatsCollector:
    """Turns one :meth:`Pipeline.stats` call into metric families, at each scrape."""

    def __init__(self, owner: PipelineMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats_fn = self._owner._stats
        # Before the pipeline starts (the model still loading) the counters are served at 0, as
        # Prometheus expects of a counter that exists: a scrape never lacks them.
        s = stats_fn() if stats_fn is not None else {}
        for name, key, doc in (("results", "results", "results delivered to every sink"),
                               ("frames_captured", "frames_captured", "video frames captured"),
                               ("audio_chunks", "audio_chunks", "audio chunks captured"),
                               ("audio_gaps", "audio_gaps", "gaps in the audio, filled with silence")):
            yield CounterMetricFamily(f"fusionedge_{name}", doc, value=s.get(key, 0))
        if stats_fn is None:
            return
        dropped = CounterMetricFamily("fusionedge_dropped", "items dropped between stages (live policy)",
                                      labels=["queue"])
        for queue, n in s["dropped_by_queue"].items():
            dropped.add_metric([queue], n)
        yield dropped
        yield GaugeMetricFamily("fusionedge_results_per_second", "results per second over the recent ones",
                                value=s["fps_recent"])
        yield GaugeMetricFamily("fusionedge_results_per_second_average", "results per second since the start",
                                value=s["fps"])
        up = GaugeMetricFamily("fusionedge_sensor_up", "1 while a sensor delivers data", labels=["sensor"])
        state = GaugeMetricFamily("fusionedge_sensor_state", "the sensor's state (1 for the current one)",
                                  labels=["sensor", "state"])
        failures = CounterMetricFamily("fusionedge_sensor_failures", "sensor failures", labels=["sensor"])
        recoveries = CounterMetricFamily("fusionedge_sensor_recoveries", "sensor recoveries", labels=["sensor"])
        for sensor, info in s["sensors"].items():
            up.add_metric([sensor], 1.0 if info["state"] == "ok" else 0.0)
            state.add_metric([sensor, info["state"]], 1.0)
            failures.add_metric([sensor], info["failures"])
            recoveries.add_metric([sensor], info["recoveries"])
        yield from (up, state, failures, recoveries)


class _MetricsSink:
    """A pipeline sink (``write`` / ``on_health`` / ``close``) that observes each result's latencies."""

    def __init__(self, owner: PipelineMetrics) -> None:
        self._owner = owner

    def write(self, result: Any) -> None:
        self._owner.observe(result)

    def on_health(self, event: Any) -> None:
        """Sensor states are read from the pipeline's stats at scrape time."""

    def close(self) -> None:
        """Nothing to flush: the registry keeps the values until the process ends."""


class PipelineMetrics:
    """Metrics of one streaming pipeline.

    Use::

        metrics = PipelineMetrics()
        pipe = Pipeline(perception, video=..., sinks=[metrics.sink()])
        metrics.watch(pipe.stats)
        server = serve_metrics(metrics.registry, port=9464)

    Args:
        registry: where the metrics are registered (default: a new, private registry).

    Raises:
        FusionEdgeError: prometheus-client is not installed.
    """

    def __init__(self, registry: Any = None) -> None:
        pc = _prometheus()
        self.registry = registry if registry is not None else pc.CollectorRegistry()
        self._stats: Callable[[], dict] | None = None
        self._model: tuple[str, str] | None = None
        self.stage_latency = pc.Histogram(
            "fusionedge_stage_latency_seconds", "time per pipeline stage of each result", ["stage"],
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.result_latency = pc.Histogram(
            "fusionedge_capture_to_result_seconds", "capture of the newest input to the result",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.model_info = pc.Gauge("fusionedge_model_info", "the model (name@version) and backend in use",
                                   ["model", "backend"], registry=self.registry)
        self.registry.register(_PipelineStatsCollector(self))

    def watch(self, stats: Callable[[], dict]) -> None:
        """Read counters, rates and sensor states from ``stats`` (a pipeline's ``stats``) at each scrape."""
        self._stats = stats

    def sink(self) -> _MetricsSink:
        """A sink to add to the pipeline's sinks: it observes every delivered result."""
        return _MetricsSink(self)

    def observe(self, result: Any) -> None:
        """Record one :class:`~fusionedge.sdk.streaming.pipeline.StreamResult`: stage times, latency, model."""
        for stage, ms in result.result.timings.items():
            self.stage_latency.labels(stage).observe(float(ms) / 1e3)
        self.result_latency.observe(float(result.latency_ms) / 1e3)
        model = (result.result.model, result.result.backend)
        if model != self._model:  # a hot swap or a backend fallback: only the one in use is 1
            if self._model is not None:
                self.model_info.remove(*self._model)
            self.model_info.labels(*model).set(1)
            self._model = model


class AgentMetrics:
    """Metrics of the fleet update agent: the release in use and what its checks did.

    Args:
        registry: where the metrics are registered (default: a new, private registry).

    Raises:
        FusionEdgeError: prometheus-client is not installed.
    """

    def __init__(self, registry: Any = None) -> None:
        pc = _prometheus()
        self.registry = registry if registry is not None else pc.CollectorRegistry()
        self._release: tuple[str, str, str] | None = None
        self.release_info = pc.Gauge("fusionedge_agent_release_info", "the release this device runs",
                                     ["model", "version", "release"], registry=self.registry)
        self.last_check = pc.Gauge("fusionedge_agent_last_check_timestamp_seconds",
                                   "Unix time the last check ended", registry=self.registry)
        self.last_check_ok = pc.Gauge("fusionedge_agent_last_check_ok", "1 when the last check ended without an error",
                                      registry=self.registry)
        self.checks = pc.Counter("fusionedge_agent_checks", "checks by outcome", ["action"], registry=self.registry)
        self.failures = pc.Counter("fusionedge_agent_failures", "checks that ended with an error",
                                   registry=self.registry)
        self.rollbacks = pc.Counter("fusionedge_agent_rollbacks", "releases rolled back after install",
                                    registry=self.registry)

    def set_release(self, release: Any) -> None:
        """Show ``release`` (a :class:`~fusionedge.sdk.fleet.protocol.Release`, or None) as the one in use."""
        labels = None if release is None else (release.model, release.version, str(release.release))
        if labels == self._release:
            return
        if self._release is not None:
            self.release_info.remove(*self._release)
        if labels is not None:
            self.release_info.labels(*labels).set(1)
        self._release = labels

    def observe(self, outcome: Any, current: Any = None, *, now: float | None = None) -> None:
        """Record one check's :class:`~fusionedge.sdk.fleet.decision.UpdateOutcome`.

        Args:
            outcome: what the check did.
            current: the release in use after it (``Agent.current_release()``).
            now: the check's end as Unix time (default: now).
        """
        self.checks.labels(outcome.action).inc()
        if outcome.error is not None:
            self.failures.inc()
        if outcome.action == "rolled-back":
            self.rollbacks.inc()
        self.last_check.set(time.time() if now is None else now)
        self.last_check_ok.set(1 if outcome.error is None else 0)
        self.set_release(current)


class MetricsServer:
    """An HTTP server of one registry's metrics (any path answers with them); :meth:`close` stops it."""

    def __init__(self, registry: Any, host: str, port: int) -> None:
        pc = _prometheus()
        self._httpd, self._thread = pc.start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port = int(self._httpd.server_port)

    @property
    def url(self) -> str:
        """``http://HOST:PORT/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port. Idempotent."""
        if self._thread is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._thread = None

    def __enter__(self) -> MetricsServer:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(registry: Any, *, host: str = "127.0.0.1", port: int = 9464) -> MetricsServer:
    """Serve ``registry`` at ``http://HOST:PORT/metrics`` from a background thread.

    Args:
        registry: e.g. ``PipelineMetrics().registry``.
        host: the address to listen on; loopback by default (``0.0.0.0`` exposes it to the network).
        port: the TCP port (0: any free one, see :attr:`MetricsServer.port`).

    Raises:
        FusionEdgeError: prometheus-client is not installed.
        OSError: the address cannot be bound (port in use, no such address).
    """
    return MetricsServer(registry, host, port)
