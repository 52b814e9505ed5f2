"""The report's tables, target checks, Markdown and plots, made from its measured results.

``report.py`` runs the experiments and evaluates every checkpoint on the test split; this module
turns those numbers into what a reader sees (``report.json``'s tables and checks, ``report.md``,
``fusion.png``, ``curves.png``), so the rendering can be tested on a saved report without training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "seed_of", "frozen_epochs", "pretrain_summary", "fill_tables", "render_markdown", "plots"]

#: Targets of the multimodal-learning comparison: fusion gap, pretraining gain, distillation budget.
TARGETS = {"fusion_gap_points": 10.0, "pretrain_gain_points": 5.0, "distill_max_flops_ratio": 0.2,
           "distill_min_accuracy_ratio": 0.97, "distill_min_map_ratio": 0.95}



def seed_of(name: str) -> tuple[str, int]:
    """A run folder's experiment and seed offset: ``few_scratch_seed2`` → ``("few_scratch", 2)``."""
    base, _, k = name.partition("_seed")
    return base, int(k or 0)


def frozen_epochs(share: float, epochs: int) -> int:
    """Epochs of the few-label fine-tuning with the pretrained encoders frozen."""
    return int(round(share * epochs))


def pretrain_summary(history: dict) -> dict | None:
    """Each pretraining's selected epoch and held-out metrics (``runs``, in seed order) and the chance levels."""
    runs = [{"run": name, "seed_offset": seed_of(name)[1], "best": m.get("best") or {},
             "seconds": m.get("seconds")} for name, m in history.items() if seed_of(name)[0] == "pretrain" and m]
    if not runs:
        return None
    return {"runs": runs, "chance": history[runs[0]["run"]].get("chance")}


def _acc(results: dict, name: str, key: str = "event_accuracy", pattern: str = "both") -> float | None:
    r = results.get(name)
    return None if r is None else r[pattern].get(key)


def fill_tables(report: dict, history: dict) -> None:
    """The comparison tables and the target checks, from the per-run test results."""
    res, tables, checks = report["test"], report["tables"], report["checks"]
    metrics = ("event_accuracy", "event_macro_f1", "audio_tag_map", "detection_map50")

    def row(name: str, pattern: str = "both") -> dict:
        return {"run": name, "model": res[name]["model_name"], "params": res[name]["params"],
                "gflops": round(res[name]["flops"] / 1e9, 3), **{m: res[name][pattern].get(m) for m in metrics}}

    fusion_rows = [row(n) for n in ("fusion", "xattn", "concat", "vision_only", "audio_only") if n in res]
    tables["fusion"] = fusion_rows
    singles = [a for a in (_acc(res, "vision_only"), _acc(res, "audio_only")) if a is not None]
    if "fusion" in res and singles:
        gap = 100.0 * (_acc(res, "fusion") - max(singles))
        checks["fusion_gap"] = {"points": round(gap, 1), "target": TARGETS["fusion_gap_points"],
                                "pass": gap >= TARGETS["fusion_gap_points"]}

    if "fusion" in res:
        miss = []
        for pattern, single, cue in (("audio_missing", "vision_only", "lights_cue_accuracy"),
                                     ("video_missing", "audio_only", "siren_cue_accuracy")):
            fused, ref = _acc(res, "fusion", pattern=pattern), _acc(res, single)
            fused_cue, ref_cue = _acc(res, "fusion", cue, pattern), _acc(res, single, cue)
            miss.append({"condition": pattern.replace("_", " "), "fused_event_accuracy": fused,
                         "single_modality_run": single, "single_event_accuracy": ref,
                         "cue": cue.replace("_accuracy", "").replace("_", " "), "fused_cue_accuracy": fused_cue,
                         "single_cue_accuracy": ref_cue,
                         "fused_detection_map50": _acc(res, "fusion", "detection_map50", pattern),
                         "pass": None if ref_cue is None or fused_cue is None else fused_cue >= ref_cue - 0.01})
        tables["missing_sensor"] = miss
        checks["missing_sensor"] = {"pass": all(m["pass"] for m in miss if m["pass"] is not None),
                                    "rule": "the fused model with a sensor missing reads the remaining sensor's cue "
                                            "as well as the single-modality model (within 1 pt)"}

    mt = [dict(row(n), strategy=s) for n, s in (("fusion", "joint, fixed weights"),
                                                ("uncertainty", "joint, uncertainty weights"),
                                                ("alternating", "alternating, fixed weights")) if n in res]
    for r in mt:  # the learned weights exp(-s) per task group at the last epoch (uncertainty runs)
        h = (history.get(r["run"]) or {}).get("history") or [{}]
        r["task_weights"] = h[-1].get("task_weights")
    tables["multitask"] = mt

    if "teacher" in res and "distilled" in res:
        t, d = res["teacher"], res["distilled"]
        rows = [row("teacher"), row("distilled")]
        if "fusion" in res:
            rows.insert(1, row("fusion"))
        tables["distillation"] = rows
        flops_ratio = d["flops"] / t["flops"]
        acc_ratio = d["both"]["event_accuracy"] / t["both"]["event_accuracy"]
        map_t, map_d = t["both"]["detection_map50"], d["both"]["detection_map50"]
        map_ratio = map_d / map_t if map_t else float("nan")
        checks["distillation"] = {
            "flops_ratio": round(flops_ratio, 3), "accuracy_ratio": round(acc_ratio, 4),
            "map_ratio": round(map_ratio, 4),
            "pass": (flops_ratio <= TARGETS["distill_max_flops_ratio"]
                     and acc_ratio >= TARGETS["distill_min_accuracy_ratio"]
                     and map_ratio >= TARGETS["distill_min_map_ratio"])}
        if "fusion" in res:
            checks["distillation"]["gain_over_scratch_points"] = {
                "event_accuracy": round(100 * (d["both"]["event_accuracy"] - res["fusion"]["both"]["event_accuracy"]), 1),
                "detection_map50": round(100 * (map_d - res["fusion"]["both"]["detection_map50"]), 1)}

    if "few_scratch" in res and "few_pretrained" in res:
        # seed k's pair: few_scratch[_seedk] and few_pretrained[_seedk]; the check is on the mean gain
        pairs = [(s, s.replace("few_scratch", "few_pretrained")) for s in res if s.startswith("few_scratch")]
        pairs = [(s, p) for s, p in pairs if p in res]
        rows = []
        for s, p in pairs:
            seed = seed_of(s)[1]
            rows += [dict(row(s), init="random", seed_offset=seed),
                     dict(row(p), init="self-supervised pretraining", seed_offset=seed)]
        gains = [100.0 * (_acc(res, p) - _acc(res, s)) for s, p in pairs]
        if len(pairs) > 1:
            for init, idx in (("random", 0), ("self-supervised pretraining", 1)):
                rows.append({"run": "mean", "init": init, "seed_offset": "mean",
                             **{m: _mean([res[pair[idx]]["both"].get(m) for pair in pairs]) for m in metrics}})
        tables["pretraining"] = rows
        gain = sum(gains) / len(gains)
        checks["pretraining"] = {"points": round(gain, 1), "per_seed_points": [round(g, 1) for g in gains],
                                 "target": TARGETS["pretrain_gain_points"],
                                 "pass": gain >= TARGETS["pretrain_gain_points"]}
        # where the event errors come from: each cue, and the lights cue on its hard case (means over seeds)
        cue_keys = ("siren_cue_accuracy", "lights_cue_accuracy", "lights_cue_accuracy_decoy")
        tables["pretraining_cues"] = [
            {"init": init, **{k: _mean([res[pair[idx]]["both"].get(k) for pair in pairs]) for k in cue_keys}}
            for init, idx in (("random", 0), ("self-supervised pretraining", 1))]


def _mean(values: list) -> float | None:
    """The mean of the values that are numbers (None when there are none)."""
    nums = [v for v in values if isinstance(v, (int, float)) and v == v]  # NaN: not measured
    return sum(nums) / len(nums) if nums else None


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _verdict(check: dict | None) -> str:
    if not check:
        return "not run"
    return "**PASS**" if check.get("pass") else "**MISS**"


def render_markdown(report: dict) -> str:
    """The report as Markdown (the tables of ``report["tables"]`` and the target checks)."""
    c, tables, checks = report["config"], report["tables"], report["checks"]
    metric_cols = [("event_accuracy", "event acc"), ("event_macro_f1", "macro-F1"),
                   ("detection_map50", "det mAP@0.5"), ("audio_tag_map", "tag mAP")]
    lines = ["# FusionEdge multimodal-learning report", "",
             f"Test split: {c['test_samples']} clips from seed {c['seed'] + 1000} (never seen in training); "
             f"train {c['train_samples']} (seed {c['seed']}), validation {c['val_samples']} (seed {c['seed'] + 1}); "
             f"{c['epochs']} epochs per supervised run. Metrics from each run's best checkpoint (by validation "
             "event accuracy), evaluated in PyTorch.", ""]
    if tables.get("fusion"):
        ch = checks.get("fusion_gap")
        lines += ["## Fusion matters", "",
                  _table(tables["fusion"], [("run", "run"), ("model", "model"), ("params", "params"),
                                            ("gflops", "GFLOPs"), *metric_cols]), "",
                  f"Fused student − best single-modality student: "
                  f"{_fmt(ch and ch['points'], 1)} points of event accuracy (target ≥ "
                  f"{TARGETS['fusion_gap_points']:.0f}): {_verdict(ch)}.", ""]
    if tables.get("missing_sensor"):
        lines += ["## Missing sensor", "",
                  "The fused student with one sensor missing (presence 0, input zeroed) next to the model "
                  "trained on the remaining sensor alone.", "",
                  _table(tables["missing_sensor"], [("condition", "condition"),
                                                    ("fused_event_accuracy", "fused student event acc"),
                                                    ("single_modality_run", "single-modality run"),
                                                    ("single_event_accuracy", "its event acc"),
                                                    ("cue", "remaining cue"),
                                                    ("fused_cue_accuracy", "fused cue acc"),
                                                    ("single_cue_accuracy", "single cue acc"),
                                                    ("fused_detection_map50", "fused det mAP@0.5")]), "",
                  "With one sensor no model can exceed 0.5 event accuracy on this data (each cue leaves two "
                  "events it cannot tell apart), and two such models differ by sampling noise alone (±2.5 "
                  "points at 400 clips); the cue accuracy — is the predicted event on the right side of the "
                  "remaining sensor's cue (siren from audio, lights from video) — is what a lost sensor can "
                  "really cost.", "",
                  f"Rule (fused cue accuracy ≥ single-modality cue accuracy − 1 pt): "
                  f"{_verdict(checks.get('missing_sensor'))}.", ""]
    if tables.get("multitask"):
        lines += ["## Multi-task strategies", "",
                  _table(tables["multitask"], [("strategy", "strategy"), *metric_cols]), ""]
        learned = [r for r in tables["multitask"] if r.get("task_weights")]
        for r in learned:
            lines += ["Learned task weights exp(−s) at the last epoch (" + r["strategy"] + "): "
                      + ", ".join(f"{k} {v:.2f}" for k, v in r["task_weights"].items()) + ".", ""]
    if tables.get("distillation"):
        ch = checks["distillation"]
        lines += ["## Distillation", "",
                  _table(tables["distillation"], [("run", "run"), ("model", "model"), ("params", "params"),
                                                  ("gflops", "GFLOPs"), *metric_cols]), "",
                  f"Student/teacher: FLOPs {ch['flops_ratio']:.3f} (target ≤ 0.2), event accuracy "
                  f"{100 * ch['accuracy_ratio']:.1f}% (≥ 97%), detection mAP@0.5 {100 * ch['map_ratio']:.1f}% "
                  f"(≥ 95%): {_verdict(ch)}."]
        if "gain_over_scratch_points" in ch:
            g = ch["gain_over_scratch_points"]
            lines += [f"Distilled vs the same student without a teacher: {g['event_accuracy']:+.1f} points event "
                      f"accuracy, {g['detection_map50']:+.1f} points detection mAP@0.5."]
        lines += [""]
    if tables.get("pretraining"):
        ch = checks["pretraining"]
        pt = report.get("pretrain") or {}
        pre_runs, chance = pt.get("runs") or [], pt.get("chance") or {}
        frozen = frozen_epochs(c.get("few_label_frozen_share", 0.0), c["few_label_epochs"])
        lines += ["## Self-supervised pretraining with few labels", "",
                  f"{100 * c['few_label_fraction']:.0f}% of the training labels "
                  f"({max(1, round(c['few_label_fraction'] * c['train_samples']))} clips), {c['few_label_epochs']} "
                  "epochs for both rows (the same steps; the pretraining ran on all training clips without "
                  "their labels). Each pair, and the pretraining its fine-tuning starts from, uses the report's seed "
                  "plus the offset."
                  + (f" The fine-tuning holds the pretrained encoders still for its first {frozen} epochs."
                     if frozen else ""), "",
                  _table(tables["pretraining"], [("seed_offset", "seed +"), ("init", "initialization"),
                                                 *metric_cols]), "",
                  f"Gain: {ch['points']:+.1f} points event accuracy"
                  + (f" on average over {len(ch['per_seed_points'])} seeds (per seed: "
                     + ", ".join(f"{g:+.1f}" for g in ch["per_seed_points"]) + ")"
                     if len(ch.get("per_seed_points") or ()) > 1 else "")
                  + f" (target ≥ {TARGETS['pretrain_gain_points']:.0f}): {_verdict(ch)}."]
        if tables.get("pretraining_cues"):
            n_decoy = report.get("test_decoy_clips")
            lines += ["", "Where the errors are (means over the seeds): each cue read right, and the lights cue on "
                      f"the {_fmt(n_decoy)} test clips whose only emergency vehicle in view has its lights OFF "
                      "(\"a vehicle is there\" is not enough; — where the manifest has no generator record).", "",
                      _table(tables["pretraining_cues"], [("init", "initialization"), ("siren_cue_accuracy", "siren"),
                                                          ("lights_cue_accuracy", "lights"),
                                                          ("lights_cue_accuracy_decoy", "lights, lights-OFF vehicle")]),
                      ""]
        if pre_runs:
            keys = ("a2v_top1", "a2v_top5", "shift_discrimination", "view_top1", "still_discrimination")
            rows = [{"seed_offset": r["seed_offset"], "epoch": r["best"].get("epoch"),
                     **{k: r["best"].get(k) for k in keys}} for r in pre_runs]
            rows.append({"seed_offset": "chance", **{k: chance.get(k) for k in keys}})
            lines += ["Each pretraining's encoders on the validation split, at the epoch it kept: audio→video "
                      "retrieval (top-1, top-5 over the split), shift discrimination (a clip's own audio scores "
                      "above its time-shifted copies), view top-1 (a clip's second view finds the clip) and still "
                      "discrimination (a clip scores its moving second view above that view's still copy).", "",
                      _table(rows, [("seed_offset", "seed +"), ("epoch", "epoch"), ("a2v_top1", "audio→video top-1"),
                                    ("a2v_top5", "top-5"), ("shift_discrimination", "shift discr."),
                                    ("view_top1", "view top-1"), ("still_discrimination", "still discr.")])]
        lines += [""]
    secs = report.get("train_seconds") or {}
    if secs:
        lines += ["## Cost", "", "Wall-clock seconds per run (this machine): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()) + ".", ""]
    lines += ["Plots: `fusion.png` (event accuracy per model and sensor condition), `curves.png` "
              "(validation event accuracy per epoch, every run).", ""]
    return "\n".join(lines)


def plots(report: dict, history: dict, out_dir: Path) -> None:
    """``fusion.png`` (event accuracy per model and sensor condition) and ``curves.png`` (every run's
    validation event accuracy per epoch) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = report["test"]
    names = [n for n in res]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    width = 0.27
    for k, (pattern, label) in enumerate((("both", "both sensors"), ("audio_missing", "audio missing"),
                                          ("video_missing", "video missing"))):
        vals = [res[n][pattern].get("event_accuracy") or 0.0 for n in names]
        ax.bar([i + (k - 1) * width for i in range(len(names))], vals, width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("test event accuracy")
    ax.set_ylim(0, 1.02)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=8)
    ax.set_title("Event accuracy by run and sensor condition")
    fig.tight_layout()
    fig.savefig(out_dir / "fusion.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, m) in enumerate(history.items()):
        h = m.get("history") or []
        xs = [r["epoch"] for r in h if "val" in r and "event_accuracy" in r["val"]]
        ys = [r["val"]["event_accuracy"] for r in h if "val" in r and "event_accuracy" in r["val"]]
        if xs:
            ax.plot(xs, ys, marker=".", label=name, ls="-" if i < 10 else "--")  # 10 colours in the cycle
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation event accuracy")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Training curves")
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=110)
    plt.close(fig)
