"""``bench compare`` notes energy per inference that moved and throttling in one run only."""

from __future__ import annotations

import copy

from fusionedge.benchmarks.compare import compare_results, format_comparison
from test_bench_results import good_doc

SS = "onnxruntime/fp32/SingleStream/engine"  # carries energy in good_doc (0.3 J per inference)


def test_energy_change_and_one_sided_throttling_are_notes_not_regressions():
    a = good_doc()
    b = copy.deepcopy(a)
    e = b["records"][0]["energy"]
    e["joules_per_inference"] = 0.36  # +20%
    e["throttled"], e["throttle_reasons"] = True, ["thermal:soc reached 96.0 °C (limit 95.0 °C)"]
    cmp = compare_results(a, b, threshold=0.1, accuracy_tolerance=0.01)
    assert cmp.exit_code == 0
    notes = "\n".join(cmp.notes)
    assert f"{SS}: energy per inference +20.0% (0.3 J -> 0.36 J)" in notes
    assert f"{SS}: throttled in run B only (thermal:soc reached 96.0 °C (limit 95.0 °C))" in notes
    assert "energy per inference" in format_comparison(cmp)


def test_small_energy_changes_and_runs_without_energy_say_nothing():
    a = good_doc()
    b = copy.deepcopy(a)
    b["records"][0]["energy"]["joules_per_inference"] = 0.31  # +3%, under the 10% threshold
    for r in a["records"]:  # a file written before energy was measured
        r.pop("energy", None)
    assert not any("energy" in n or "throttled" in n for n in compare_results(a, b, threshold=0.1, accuracy_tolerance=0.01).notes)
    a2 = copy.deepcopy(b)
    b["records"][0]["energy"]["joules_per_inference"] = 0.32
    assert not any("energy" in n or "throttled" in n for n in compare_results(a2, b, threshold=0.1, accuracy_tolerance=0.01).notes)
