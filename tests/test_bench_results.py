"""results.json: the versioned schema accepts a good document and names the field of a bad one; ratios."""

from __future__ import annotations

import copy
import json

import pytest

from fusionedge.benchmarks.errors import ResultsError
from fusionedge.benchmarks.results import (
    SCHEMA,
    SCHEMA_VERSION,
    add_ratios,
    cost_ms,
    load_results,
    record_id,
    validate_results,
    write_results,
)


def _record(backend: str, scenario: str, mode: str, value: float, *, valid: bool = True) -> dict:
    metric = {
        "SingleStream": "p90_latency_ms",
        "MultiStream": "p99_latency_ms",
        "Offline": "samples_per_second",
    }[scenario]
    stages = {
        "batch": {"mean": 0.01, "p50": 0.01, "p90": 0.02, "share": 0.01},
        "infer": {"mean": 1.0, "p50": 1.0, "p90": 1.2, "share": 0.99},
    }
    if mode == "e2e":
        stages.update(
            {
                s: {"mean": 0.5, "p50": 0.5, "p90": 0.6, "share": 0.1}
                for s in ("decode", "preprocess", "postprocess")
            }
        )
    return {
        "id": record_id(backend, "fp32", scenario, mode),
        "backend": backend,
        "precision": "fp32",
        "scenario": scenario,
        "mode": mode,
        "baseline": backend == "torch-eager",
        "samples_per_query": 1,
        "batch_size": 1,
        "queries": 100,
        "samples": 100,
        "duration_s": 1.0,
        "metric": {"name": metric, "value": value},
        "latency_ms": {"p50": 1.0, "p90": 1.1, "p99": 1.5, "mean": 1.0, "min": 0.9, "max": 2.0},
        "throughput_sps": 900.0,
        "sut_latency_ms": {"p50": 0.9, "p90": 1.0, "p99": 1.4},
        "stages_ms": stages,
        "peak_rss_mb": 300.0,
        "loadgen": {
            "valid": valid,
            "result": "VALID" if valid else "INVALID",
            "min_duration_satisfied": True,
            "min_queries_satisfied": True,
            "early_stopping_satisfied": valid,
            "notes": [],
            "log_dir": "loadgen/x",
        },
        "ratios": {"e2e_over_engine": None, "over_eager": None},
    }


def _energy() -> dict:
    return {
        "window_s": 1.0, "interval_s": 0.1, "readings": 11, "joules": 30.0, "joules_per_inference": 0.3,
        "mean_watts": 30.0, "total_of": ["rapl:package-0"],
        "sources": {"rapl:package-0": {"joules": 30.0, "mean_watts": 30.0, "method": "energy counter"}},
        "temperature_c": {"thermal:x86_pkg_temp": {"max": 71.0, "limit": 95.0}},
        "clocks_mhz": {"cpu:fastest core": {"first": 3000.0, "last": 2990.0, "min": 2900.0, "max": 3100.0}},
        "throttled": False, "throttle_reasons": [], "unavailable": {"NVML": "no library"},
    }


def good_doc() -> dict:
    """Records 0 and 2 carry energy; record 1 has none, as in files written before it was measured."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": "2026-11-26T10:00:00Z",
        "wall_seconds": 12.5,
        "bundle": {"path": "/b", "model_id": "m@1", "precision": "fp32", "onnx_sha256": "0" * 64},
        "settings": {"scenarios": ["SingleStream"]},
        "fingerprint": {
            "cpu": {"model": "x"},
            "memory": {},
            "gpu": {},
            "software": {},
            "unavailable": {"gpu": "nvidia-smi not found on PATH"},
        },
        "baselines": {"eager": {"status": "skipped", "reason": "torch is not installed"}},
        "records": [
            {**_record("onnxruntime", "SingleStream", "engine", 2.0), "energy": _energy()},
            _record("onnxruntime", "SingleStream", "e2e", 5.0),
            {**_record("onnxruntime", "Offline", "engine", 500.0), "energy": {**_energy(), "joules": None}},
        ],
        "accuracy": [
            {
                "backend": "onnxruntime",
                "precision": "fp32",
                "samples": 8,
                "metrics": {"event_accuracy": 0.5, "detection_map50": None},
            }
        ],
        "skipped": [{"config": "torch-eager/fp32/SingleStream/engine", "reason": "torch is not installed"}],
    }


def test_good_document_validates_and_round_trips(tmp_path):
    doc = good_doc()
    validate_results(doc)
    path = write_results(doc, tmp_path / "results.json")
    assert load_results(path) == doc


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d.pop("fingerprint"), "'fingerprint': missing"),
        (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
        (lambda d: d.update(schema="something.else"), "'schema'"),
        (lambda d: d["records"][1]["latency_ms"].update(p90="x"), "'records[1].latency_ms.p90'"),
        (lambda d: d["records"][0].update(scenario="Server"), "'records[0].scenario': expected one of"),
        (lambda d: d["records"][0].update(mode="fast"), "'records[0].mode'"),
        (lambda d: d["records"][0]["metric"].update(name="p99_latency_ms"), "'records[0].metric.name'"),
        (lambda d: d["records"][0]["loadgen"].update(valid=False), "'records[0].loadgen.valid'"),
        (lambda d: d["records"][0].update(id="wrong"), "'records[0].id'"),
        (
            lambda d: d["records"][1]["stages_ms"].pop("decode"),
            "'records[1].stages_ms': an e2e record must time",
        ),
        (lambda d: d["records"][0]["stages_ms"].update(warp={}), "unknown stage 'warp'"),
        (lambda d: d["records"].append(copy.deepcopy(d["records"][0])), "'records[3].id': duplicate id"),
        (lambda d: d["records"][2]["metric"].update(value=float("nan")), "'records[2].metric.value'"),
        (lambda d: d["baselines"]["eager"].pop("reason"), "'baselines.eager.reason': missing"),
        (
            lambda d: d["accuracy"][0]["metrics"].update(event_accuracy="high"),
            "'accuracy[0].metrics.event_accuracy'",
        ),
        (lambda d: d.update(created="yesterday"), "'created': expected an ISO-8601 time"),
        (lambda d: d["records"][0]["energy"].update(joules=-1.0), "'records[0].energy.joules'"),
        (lambda d: d["records"][0]["energy"].pop("throttled"), "'records[0].energy.throttled': missing"),
        (lambda d: d["records"][0]["energy"].update(throttle_reasons=["hot"]), "'records[0].energy.throttled'"),
        (lambda d: d["records"][2]["energy"]["unavailable"].update(RAPL=1), "'records[2].energy.unavailable'"),
        (lambda d: d["records"][1].update(energy=[]), "'records[1].energy': expected an object"),
    ],
)
def test_bad_documents_name_the_field(edit, field):
    doc = good_doc()
    edit(doc)
    with pytest.raises(ResultsError, match=field.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        validate_results(doc)


def test_write_refuses_an_invalid_document_and_writes_nothing(tmp_path):
    doc = good_doc()
    doc["records"][0]["queries"] = -1
    with pytest.raises(ResultsError, match=r"records\[0\]\.queries"):
        write_results(doc, tmp_path / "results.json")
    assert not (tmp_path / "results.json").exists()


def test_load_results_errors_name_the_file(tmp_path):
    with pytest.raises(ResultsError, match="no such results file"):
        load_results(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ResultsError, match="not valid JSON"):
        load_results(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ResultsError, match="expected a JSON object"):
        load_results(bad)


def test_ratios_are_time_ratios_in_every_scenario():
    records = [
        _record("onnxruntime", "SingleStream", "engine", 2.0),
        _record("onnxruntime", "SingleStream", "e2e", 5.0),
        _record("torch-eager", "SingleStream", "engine", 8.0),
        _record("torch-eager", "SingleStream", "e2e", 10.0),
        _record("onnxruntime", "Offline", "engine", 400.0),
        _record("onnxruntime", "Offline", "e2e", 100.0),
        _record("torch-eager", "Offline", "engine", 100.0),
    ]
    add_ratios(records, "torch-eager")
    r = {x["id"]: x["ratios"] for x in records}
    assert r["onnxruntime/fp32/SingleStream/e2e"] == {"e2e_over_engine": 2.5, "over_eager": 0.5}
    assert r["onnxruntime/fp32/SingleStream/engine"] == {"e2e_over_engine": None, "over_eager": 0.25}
    assert r["torch-eager/fp32/SingleStream/e2e"] == {"e2e_over_engine": 1.25, "over_eager": None}
    # Offline: samples per second, so time per sample is the inverse: 400 sps is 4x faster than 100.
    assert r["onnxruntime/fp32/Offline/e2e"]["e2e_over_engine"] == 4.0
    assert r["onnxruntime/fp32/Offline/engine"]["over_eager"] == 0.25
    assert r["onnxruntime/fp32/Offline/e2e"]["over_eager"] is None  # no eager e2e record to compare with
    assert cost_ms(records[4]) == pytest.approx(2.5)


def test_bench_modules_import_without_torch_and_compare_runs_without_loadgen(tmp_path):
    """torch is for the eager baseline only, LoadGen for running: comparing results needs neither."""
    import subprocess
    import sys
    import textwrap

    a = write_results(good_doc(), tmp_path / "a.json")
    script = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None            # any `import torch` now fails
        sys.modules["mlperf_loadgen"] = None
        import fusionedge.benchmarks.harness, fusionedge.benchmarks.report, fusionedge.benchmarks.stages
        from fusionedge.cli.main import main
        code = main(["bench", "compare", sys.argv[1], sys.argv[1]])
        bad = sorted(m for m in sys.modules if m.startswith(("fusionedge.training", "fusionedge.export")))
        print("RESULT", code, bad)
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(a)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "RESULT 0 []"
