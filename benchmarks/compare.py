"""``fusionedge bench compare A.json B.json``: what changed between two benchmark runs, and did it regress.

Every configuration present in both runs is compared on its figure of merit, as time per query
(Offline: time per sample, the inverse of samples per second): ``change = B / A - 1``, so +0.25 means
B takes 25% longer. A change above ``threshold`` is a **regression**, below ``-threshold`` an
improvement. Accuracy metrics present in both runs regress when B is lower than A by more than
``accuracy_tolerance`` (absolute). Configurations in only one run, LoadGen verdicts that changed,
runs on different machines, energy per inference that changed by more than ``threshold``, and a
configuration that throttled in one run only (its timing then says more about heat than code) are
reported as notes, not regressions.

``fusionedge bench compare`` exits with status 1 when there is a regression, 0 otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from fusionedge.benchmarks.errors import BenchConfigError
from fusionedge.benchmarks.results import cost_ms

__all__ = ["Change", "Comparison", "compare_results", "format_comparison"]


@dataclass(frozen=True)
class Change:
    """One configuration's (or accuracy metric's) figure in both runs."""

    id: str
    metric: str
    a: float | None
    b: float | None
    change: float | None  # relative (B / A - 1 of time) for performance; B - A for accuracy
    status: str  # regression | improvement | same | only in A | only in B


@dataclass
class Comparison:
    """The result of comparing run A (the reference) with run B."""

    threshold: float
    accuracy_tolerance: float
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.status == "regression"]

    @property
    def exit_code(self) -> int:
        """1 when anything regressed beyond the threshold, else 0."""
        return 1 if self.regressions else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "accuracy_tolerance": self.accuracy_tolerance,
            "regressions": [c.id for c in self.regressions],
            "exit_code": self.exit_code,
            "changes": [c.__dict__ for c in self.changes],
            "notes": list(self.notes),
        }


def compare_results(
    a: Mapping[str, Any], b: Mapping[str, Any], *, threshold: float = 0.1, accuracy_tolerance: float = 0.01
) -> Comparison:
    """Compare two validated results documents (A is the reference).

    Args:
        a: the reference run.
        b: the new run.
        threshold: relative slow-down beyond which a configuration regressed (0.1 = 10% slower).
        accuracy_tolerance: absolute drop beyond which an accuracy metric regressed.

    Returns:
        The :class:`Comparison`.

    Raises:
        BenchConfigError: a threshold that is negative or not finite.
    """
    for name, v in (("--threshold", threshold), ("--accuracy-tolerance", accuracy_tolerance)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise BenchConfigError(f"{name} must be a finite number >= 0, got {v!r}")
    cmp = Comparison(float(threshold), float(accuracy_tolerance))
    ra = {r["id"]: r for r in a["records"]}
    rb = {r["id"]: r for r in b["records"]}
    for rid in list(ra) + [k for k in rb if k not in ra]:
        x, y = ra.get(rid), rb.get(rid)
        metric = (x or y)["metric"]["name"]  # type: ignore[index]
        if x is None or y is None:
            cmp.changes.append(
                Change(
                    rid,
                    metric,
                    x and x["metric"]["value"],
                    y and y["metric"]["value"],
                    None,
                    "only in A" if y is None else "only in B",
                )
            )
            continue
        ca, cb = cost_ms(x), cost_ms(y)
        if ca is None or cb is None:
            cmp.changes.append(Change(rid, metric, x["metric"]["value"], y["metric"]["value"], None, "same"))
            cmp.notes.append(f"{rid}: a figure of merit is zero or missing; not compared")
            continue
        change = cb / ca - 1.0
        status = "regression" if change > threshold else "improvement" if change < -threshold else "same"
        cmp.changes.append(
            Change(rid, metric, x["metric"]["value"], y["metric"]["value"], round(change, 4), status)
        )
        va, vb = x["loadgen"]["result"], y["loadgen"]["result"]
        if va != vb:
            cmp.notes.append(f"{rid}: LoadGen verdict changed from {va} to {vb}")
    _compare_accuracy(a, b, cmp)
    _compare_energy(a, b, cmp)
    _compare_machines(a, b, cmp)
    return cmp


def _compare_accuracy(a: Mapping[str, Any], b: Mapping[str, Any], cmp: Comparison) -> None:
    aa = {(x["backend"], x["precision"]): x["metrics"] for x in a.get("accuracy", [])}
    ab = {(x["backend"], x["precision"]): x["metrics"] for x in b.get("accuracy", [])}
    for key in aa.keys() & ab.keys():
        for metric, va in aa[key].items():
            vb = ab[key].get(metric)
            if va is None or vb is None:
                continue
            drop = va - vb
            status = (
                "regression"
                if drop > cmp.accuracy_tolerance
                else "improvement"
                if drop < -cmp.accuracy_tolerance
                else "same"
            )
            cmp.changes.append(
                Change(f"{key[0]}/{key[1]}/accuracy", metric, va, vb, round(vb - va, 6), status)
            )


def _compare_energy(a: Mapping[str, Any], b: Mapping[str, Any], cmp: Comparison) -> None:
    """Notes for energy per inference that moved beyond the threshold and for throttling in one run only."""
    ea = {r["id"]: r["energy"] for r in a["records"] if r.get("energy")}
    eb = {r["id"]: r["energy"] for r in b["records"] if r.get("energy")}
    for rid in sorted(ea.keys() & eb.keys()):
        x, y = ea[rid], eb[rid]
        ja, jb = x.get("joules_per_inference"), y.get("joules_per_inference")
        if ja and jb is not None and abs(jb / ja - 1.0) > cmp.threshold:
            cmp.notes.append(f"{rid}: energy per inference {jb / ja - 1.0:+.1%} ({ja:.4g} J -> {jb:.4g} J)")
        if x["throttled"] != y["throttled"]:
            which, e = ("B", y) if y["throttled"] else ("A", x)
            cmp.notes.append(f"{rid}: throttled in run {which} only ({'; '.join(e['throttle_reasons'])}); "
                             f"its timing reflects heat or power limits, not only the code")


def _compare_machines(a: Mapping[str, Any], b: Mapping[str, Any], cmp: Comparison) -> None:
    def machine(doc: Mapping[str, Any]) -> tuple:
        fp = doc["fingerprint"]
        gpus = tuple(d.get("name") for d in fp.get("gpu", {}).get("devices", []) or [])
        return fp.get("cpu", {}).get("model"), fp.get("cpu", {}).get("usable_cores"), gpus

    if machine(a) != machine(b):
        cmp.notes.append(
            f"the runs are from different machines: A {machine(a)}, B {machine(b)}; "
            f"differences may be the machine, not the code"
        )
    for name, doc in (("A", a), ("B", b)):
        fp = doc["fingerprint"]
        cores = fp.get("cpu", {}).get("usable_cores") or 1
        loads = [fp.get("host", {}).get("loadavg"), doc["settings"].get("loadavg_end")]
        busiest = max((x[0] for x in loads if isinstance(x, list) and x), default=0.0)
        if busiest > 0.5 * cores:
            cmp.notes.append(
                f"run {name} shared the machine (1-minute load average up to {busiest:g} on {cores} cores): "
                f"its timings are noisy"
            )
    if a["bundle"].get("onnx_sha256") != b["bundle"].get("onnx_sha256"):
        cmp.notes.append(
            f"different models: A {a['bundle']['model_id']}, B {b['bundle']['model_id']} (model.onnx differs)"
        )


def format_comparison(cmp: Comparison) -> str:
    """A table for people: one line per configuration, regressions marked, then the notes."""
    width = max([len(c.id) for c in cmp.changes] + [13])
    lines = [
        f"{'configuration':<{width}}  {'metric':<18} {'A':>10} {'B':>10} {'change':>8}  status",
        "-" * (width + 62),
    ]
    for c in cmp.changes:
        change = (
            "—"
            if c.change is None
            else (f"{c.change:+.1%}" if "accuracy" not in c.id else f"{c.change:+.4f}")
        )
        mark = "  <-- REGRESSION" if c.status == "regression" else ""
        lines.append(
            f"{c.id:<{width}}  {c.metric:<18} {_num(c.a):>10} {_num(c.b):>10} {change:>8}  {c.status}{mark}"
        )
    lines.append("")
    n = len(cmp.regressions)
    lines.append(
        f"{n} regression(s) beyond {cmp.threshold:.0%} "
        f"(time per query; accuracy: -{cmp.accuracy_tolerance:g})"
        if n
        else f"no regression beyond {cmp.threshold:.0%}"
    )
    lines += [f"note: {m}" for m in cmp.notes]
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"
