"""The interleaved speed-up benchmark of compressed bundles (benchmarks/compress_speed.py)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")


def test_speedups_are_ratios_to_the_first_bundle(tmp_path_factory, tmp_path, capsys):
    from _toy_model import shared_toy_bundle
    from fusionedge.benchmarks.compress_speed import main, measure_speedups
    from fusionedge.sdk.errors import InputError

    bundle = shared_toy_bundle(tmp_path_factory)
    r = measure_speedups([bundle, bundle], threads=(1, 2), repeats=2, runs=3, warmup=1)
    assert [m["size_ratio"] for m in r["models"]] == [1.0, 1.0]
    for n in (1, 2):
        first, second = r["threads"][n]
        assert first["speedup_median"] == first["speedup_min"] == first["speedup_max"] == first["speedup_p10"] == 1.0
        assert first["speedup_fastest"] == 1.0
        assert second["speedup_min"] <= second["speedup_median"] <= second["speedup_max"]
        # the fastest run of all repeats: no slower than any repeat's median
        assert 0 < second["fastest_ms"] <= min(second["repeats_ms"])
        assert second["speedup_fastest"] == pytest.approx(first["fastest_ms"] / second["fastest_ms"])
        assert len(second["repeats_ms"]) == 2 and min(second["repeats_ms"]) > 0
    assert all(isinstance(r["load_average"][k], float) and r["load_average"][k] >= 0 for k in ("before", "after"))
    with pytest.raises(InputError, match="got 1"):
        measure_speedups([bundle])
    out = tmp_path / "speed.json"
    assert main([str(bundle), str(bundle), "--threads", "1", "--repeats", "1", "--runs", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| 1 |" in printed and "load average (1 min): " in printed and json.loads(out.read_text())["repeats"] == 1
    assert main([str(bundle), "--threads", "1"]) == 2
