"""Prometheus metrics of ``run`` and ``fleet agent``, scraped over HTTP from a real pipeline and a real
agent: the endpoint agrees with the pipeline's own summary and with what the agent's checks did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from _fleet import FleetEnv, free_port, release_bundle
from _toy_model import shared_toy_bundle
from fusionedge.sdk.bundle import load_bundle
from fusionedge.sdk.perception import Perception
from fusionedge.sdk.streaming.pipeline import Pipeline, PipelineConfig
from fusionedge.sdk.telemetry import AgentMetrics, PipelineMetrics, serve_metrics
from test_streaming_pipeline import write_clip

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

FUSIONEDGE = Path(sys.executable).parent / "fusionedge"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of one scrape."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    return write_clip(tmp_path_factory.mktemp("telemetry"), 3.0)


def test_the_endpoint_agrees_with_the_pipelines_summary(bundle_dir, clip):
    metrics = PipelineMetrics()
    during: list[tuple[dict, dict]] = []
    with Perception.load(bundle_dir, backend_options={"onnxruntime": {"intra_op_threads": 1}}) as perception, \
            serve_metrics(metrics.registry, port=0) as server:
        pipe = Pipeline(perception, video=str(clip[0]), audio=str(clip[1]), sinks=[metrics.sink()],
                        config=PipelineConfig(policy="live", realtime=True))
        metrics.watch(pipe.stats)
        summary = pipe.run(progress=lambda s: during.append((s, scrape(server.url))), interval=0.5)
        final = scrape(server.url)
        model = perception.model
    assert during, "the run ended before a scrape"
    for stats, samples in during:  # scraped while running: counters only grow past what stats saw
        assert value(samples, "fusionedge_results_total") >= stats["results"]
    results = summary["results"]
    assert results > 0
    assert value(final, "fusionedge_results_total") == results
    assert value(final, "fusionedge_frames_captured_total") == summary["frames_captured"]
    assert value(final, "fusionedge_audio_chunks_total") == summary["audio_chunks"]
    dropped = sum(v for (name, _), v in final.items() if name == "fusionedge_dropped_total")
    assert dropped == summary["dropped"]
    for queue, n in summary["dropped_by_queue"].items():
        assert value(final, "fusionedge_dropped_total", queue=queue) == n
    assert value(final, "fusionedge_results_per_second_average") == summary["fps"]
    assert value(final, "fusionedge_capture_to_result_seconds_count") == results
    for stage in ("preprocess", "infer", "postprocess"):
        assert value(final, "fusionedge_stage_latency_seconds_count", stage=stage) == results, stage
    p50 = summary["latency_ms"]["capture_to_result"]["p50"] / 1e3  # the median lies in the histogram's range
    assert value(final, "fusionedge_capture_to_result_seconds_bucket", le="5.0") == results
    assert 0 < p50 < 5.0
    for sensor, info in summary["sensors"].items():
        assert value(final, "fusionedge_sensor_state", sensor=sensor, state=info["state"]) == 1.0
        assert value(final, "fusionedge_sensor_up", sensor=sensor) == (1.0 if info["state"] == "ok" else 0.0)
        assert value(final, "fusionedge_sensor_failures_total", sensor=sensor) == info["failures"]
    assert value(final, "fusionedge_model_info", model=model, backend="onnxruntime") == 1.0


def test_counters_are_served_at_zero_while_the_model_loads():
    """A scrape before the pipeline starts (``run`` serves metrics while it loads the model) finds the
    counters at 0, so a dashboard's rate() and a test's ordering never meet a missing series."""
    metrics = PipelineMetrics()
    with serve_metrics(metrics.registry, port=free_port()) as server:
        samples = scrape(server.url)
    for name in ("results", "frames_captured", "audio_chunks", "audio_gaps"):
        assert value(samples, f"fusionedge_{name}_total") == 0.0, name


def test_run_serves_metrics_while_it_runs_and_stops_serving_after(bundle_dir, clip):
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    cmd = [str(FUSIONEDGE), "run", "--bundle", str(bundle_dir), "--video", str(clip[0]), "--audio", str(clip[1]),
           "--realtime", "--json", "--metrics-port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    scrapes = []
    while proc.poll() is None:
        try:
            scrapes.append(scrape(url))
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert f"metrics at {url}" in stderr
    summary = json.loads(stdout)
    seen = [value(s, "fusionedge_results_total") for s in scrapes]
    assert len(seen) >= 3 and seen == sorted(seen) and 0 < seen[-1] <= summary["results"], seen
    frames = [value(s, "fusionedge_frames_captured_total") for s in scrapes]
    assert frames == sorted(frames) and frames[-1] <= summary["frames_captured"]
    model = load_bundle(bundle_dir, verify=False).model_id
    assert value(scrapes[-1], "fusionedge_model_info", model=model, backend="onnxruntime") == 1.0
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        scrape(url)  # the endpoint went with the run


def test_metrics_listen_on_loopback_unless_told_otherwise():
    from fusionedge.cli.main import build_parser

    args = build_parser().parse_args(["run", "--bundle", "b", "--video", "v", "--metrics-port", "0"])
    assert args.metrics_host == "127.0.0.1"
    with serve_metrics(PipelineMetrics().registry, port=0) as server:
        assert server.host == "127.0.0.1" and server.url == f"http://127.0.0.1:{server.port}/metrics"


def test_a_port_in_use_is_one_line_exit_2(bundle_dir, clip):
    with serve_metrics(PipelineMetrics().registry, port=0) as busy:
        proc = subprocess.run([str(FUSIONEDGE), "run", "--bundle", str(bundle_dir), "--video", str(clip[0]),
                               "--fast", "--metrics-port", str(busy.port)], capture_output=True, text=True,
                              timeout=60, check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("fusionedge run: error: "), proc.stderr


def test_without_prometheus_client_the_verb_names_the_extra(tmp_path, bundle_dir, clip):
    shim = tmp_path / "shim" / "prometheus_client"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("prometheus_client is made unimportable")\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shim")}
    proc = subprocess.run([str(FUSIONEDGE), "run", "--bundle", str(bundle_dir), "--video", str(clip[0]), "--fast",
                           "--metrics-port", "0"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "fusionedge run: error: this verb needs the 'telemetry' extra: pip install 'fusionedge[telemetry]'"]
    proc = subprocess.run([str(FUSIONEDGE), "run", "--bundle", str(bundle_dir), "--video", str(clip[0]), "--fast",
                           "--json"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr  # without --metrics-port the runtime does not need it


# ------------------------------------------------------------------------------------- fleet agent


@pytest.fixture
def fleet(tmp_path, bundle_dir):
    env = FleetEnv(tmp_path)
    env.releases = {v: release_bundle(bundle_dir, tmp_path / "rel" / v, v) for v in ("0.1.0", "0.2.0")}
    yield env
    env.close()


def test_agent_metrics_follow_its_checks(fleet):
    metrics = AgentMetrics()
    agent = fleet.agent("dev-1")
    with serve_metrics(metrics.registry, port=0) as server:
        fleet.publish(fleet.releases["0.1.0"], "0.1.0")
        fleet.rollout("0.1.0")
        before = time.time()
        first = agent.check_once()
        metrics.observe(first, agent.current_release())
        s = scrape(server.url)
        assert first.action == "updated"
        assert value(s, "fusionedge_agent_checks_total", action="updated") == 1
        assert value(s, "fusionedge_agent_release_info", model="student", version="0.1.0", release="1") == 1
        assert value(s, "fusionedge_agent_last_check_ok") == 1
        assert before <= value(s, "fusionedge_agent_last_check_timestamp_seconds") <= time.time()
        assert value(s, "fusionedge_agent_failures_total") == 0

        # The same device, now with a latency budget no model meets: 0.2.0 fails its health check.
        agent.close()
        strict = fleet.agent("dev-1", latency_budget_ms=1e-6, state_dir=fleet.root / "devices" / "dev-1")
        fleet.publish(fleet.releases["0.2.0"], "0.2.0")
        fleet.rollout("0.2.0")
        second = strict.check_once()
        metrics.observe(second, strict.current_release())
        s = scrape(server.url)
    assert second.action == "rolled-back"
    assert value(s, "fusionedge_agent_rollbacks_total") == 1 and value(s, "fusionedge_agent_failures_total") == 1
    assert value(s, "fusionedge_agent_last_check_ok") == 0
    assert value(s, "fusionedge_agent_checks_total", action="rolled-back") == 1
    # still the release in use, and only that one
    releases = [labels for (name, labels), v in s.items() if name == "fusionedge_agent_release_info"]
    assert releases == [(("model", "student"), ("release", "1"), ("version", "0.1.0"))]


def test_fleet_agent_serves_its_metrics(fleet, tmp_path):
    fleet.publish(fleet.releases["0.1.0"], "0.1.0")
    fleet.rollout("0.1.0")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    cmd = [str(FUSIONEDGE), "fleet", "agent", "--url", fleet.url, "--device-id", "dev-cli", "--state-dir",
           str(tmp_path / "state"), "--device-class", "x86-cpu", "--model", "student", "--root",
           str(fleet.trusted_root), "--interval", "0.5", "--max-checks", "20", "--json", "--metrics-port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, s = time.monotonic() + 60, {}
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                s = scrape(url)
            except (urllib.error.URLError, ConnectionError):
                s = {}
            if (value(s, "fusionedge_agent_checks_total", action="up-to-date") or 0) >= 1:
                break
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert value(s, "fusionedge_agent_checks_total", action="updated") == 1, s
    assert value(s, "fusionedge_agent_release_info", model="student", version="0.1.0", release="1") == 1
    assert value(s, "fusionedge_agent_failures_total") == 0
