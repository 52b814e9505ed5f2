"""``fusionedge report``: train every model the comparisons need, evaluate them on a fresh-seed test
split, and write the comparison tables (Markdown, JSON) and plots.

One command reproduces the multimodal-learning tables::

    fusionedge report --workdir runs/report

It makes (or reuses) three synthetic splits — train (seed S), validation (S+1) and test (S+1000, never
seen in training) — then runs, each in ``WORKDIR/runs/<name>/`` through the ordinary ``train()`` /
``pretrain()`` entry points (so every run also has its own metrics.json, curves.png, summary.md):

==================  ======================================================================
``fusion``          the fused student (``fusion_student``: time-aligned attention), all labels
``vision_only``     the student without audio; ``audio_only`` without video
``concat``          late fusion (concatenated embeddings); ``xattn`` clip-wide cross-attention
``uncertainty``     the fused student with learned (uncertainty) task weights
``alternating``     the fused student with an alternating task schedule
``teacher``         the large model (``fusion_teacher``)
``distilled``       the student trained with the teacher (``train`` with ``teacher=``)
``pretrain``        self-supervised audio-visual pretraining on the train split, labels ignored
``few_scratch``     the student on the first ``few_label_fraction`` of the labelled train split
``few_pretrained``  the same, initialized from ``pretrain`` (same epochs, same steps; with
                    ``few_label_frozen_share`` > 0 the encoders are held still for that share first)
==================  ======================================================================

These three are repeated ``few_label_seeds`` times (``<name>_seed1``, ``<name>_seed2``, ... with the
report's seed plus 1, 2, ...), and fine-tuning seed k starts from pretraining seed k: the gain is a
claim about pretraining, so its own randomness is averaged over too, not only the fine-tuning's.

A run whose folder already holds a finished run with the same options is reused, so the command can
be interrupted and started again. Every checkpoint (``best.pt``) is evaluated on the test split in
PyTorch with both sensors, with the audio missing and with the video missing (the presence mask set
to 0 and the tensor zeroed, as the runtime does for a failed sensor). The report checks the
comparison's targets (``TARGETS``) and says PASS or MISS next to each — a miss is reported, never hidden. For the few-label
runs it also says where the errors are: each cue, and the lights cue on the clips whose only
emergency vehicle has its lights OFF (read from the generator's record in the test manifest).

A pretraining is also made again when today's checkpoint selection would pick another epoch from
its own held-out history than the one it saved (a rule change leaves its options unchanged).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Any

from fusionedge.sdk.errors import FusionEdgeError
from fusionedge.sdk.fileio import json_safe, write_json_atomic, write_text_atomic

__all__ = ["ReportConfig", "EXPERIMENTS", "run_report", "render_markdown"]

#: Every run of the report, in the order they are trained (the teacher before the distilled student,
#: the pretraining before the fine-tuning).
EXPERIMENTS: tuple[str, ...] = ("fusion", "vision_only", "audio_only", "concat", "xattn", "uncertainty",
                                "alternating", "teacher", "distilled", "pretrain", "few_scratch",
                                "few_pretrained")

#: Targets of the multimodal-learning comparison: fusion gap, pretraining gain, distillation budget.
TARGETS = {"fusion_gap_points": 10.0, "pretrain_gain_points": 5.0, "distill_max_flops_ratio": 0.2,
           "distill_min_accuracy_ratio": 0.97, "distill_min_map_ratio": 0.95}


@dataclass
class ReportConfig:
    """The experiment sizes. The defaults are the full-size report (~80 min on 2 CPU cores)."""

    workdir: Path
    seed: int = 0
    train_samples: int = 2000
    val_samples: int = 300
    test_samples: int = 400
    epochs: int = 10  # every supervised run on the full train split
    teacher_epochs: int = 6  # the teacher is ~8x the student's FLOPs: ~3 min per epoch on 2 cores
    pretrain_epochs: int = 8
    few_label_fraction: float = 0.1  # the labelled share of the train split in the few-label runs
    few_label_epochs: int = 30  # epochs over the labelled subset (scratch and fine-tune alike)
    few_label_seeds: int = 3  # pretraining and few-label runs with seed, seed+1, ...: one seed is noise
    # fine-tuning from pretraining: share of its epochs with the encoders frozen (0: full-lr fine-tuning
    # did best; the comparison is in training/EXPERIMENTS.md)
    few_label_frozen_share: float = 0.0
    pretrain_match_weight: float = 1.0  # pretraining's correspondence loss through the fusion (0: encoders only)
    pretrain_view_weight: float = 1.0  # pretraining's video-video loss between two views of a clip (0: off)
    pretrain_view_still: bool = True  # each clip's still copy as a hard negative of that loss
    batch_size: int = 32
    only: tuple[str, ...] | None = None  # a subset of EXPERIMENTS (their dependencies are added)
    force: bool = False  # retrain even when a finished run is present
    progress: bool = True
    extra_train: dict = field(default_factory=dict)  # TrainConfig fields for every supervised run (tests)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        bad = []
        if min(self.train_samples, self.val_samples, self.test_samples) < 1:
            bad.append("sample counts must be >= 1")
        if min(self.epochs, self.teacher_epochs, self.pretrain_epochs, self.few_label_epochs) < 1:
            bad.append("epochs must be >= 1")
        if not 0.0 <= self.few_label_frozen_share < 1.0:
            bad.append(f"few_label_frozen_share must be in [0, 1), got {self.few_label_frozen_share}")
        if self.few_label_seeds < 1:
            bad.append(f"few_label_seeds must be >= 1, got {self.few_label_seeds}")
        if not 0.0 < self.few_label_fraction <= 1.0:
            bad.append(f"few_label_fraction must be in (0, 1], got {self.few_label_fraction}")
        unknown = sorted(set(self.only or ()) - set(EXPERIMENTS))
        if unknown:
            bad.append(f"unknown experiment(s) {', '.join(unknown)}; known: {', '.join(EXPERIMENTS)}")
        if bad:
            raise FusionEdgeError("invalid ReportConfig: " + "; ".join(bad))


_DEPENDS = {"distilled": ("teacher",), "few_pretrained": ("pretrain",)}


#: The runs repeated with ``few_label_seeds`` seeds (``few_pretrained_seedK`` from ``pretrain_seedK``).
_SEEDED = ("pretrain", "few_scratch", "few_pretrained")


def _seed_of(name: str) -> tuple[str, int]:
    """A run folder's experiment and seed offset: ``few_scratch_seed2`` → ``("few_scratch", 2)``."""
    base, _, k = name.partition("_seed")
    return base, int(k or 0)


def _seed_runs(cfg: ReportConfig, name: str) -> list[str]:
    """``name``'s run folders: ``few_scratch``, ``few_scratch_seed1``, ... (one for every other run)."""
    return [name] + ([f"{name}_seed{k}" for k in range(1, cfg.few_label_seeds)] if name in _SEEDED else [])


def _selected(cfg: ReportConfig) -> list[str]:
    """Every run to train, in order (dependencies added, seeded runs expanded)."""
    want = set(cfg.only or EXPERIMENTS)
    for name in list(want):
        want.update(_DEPENDS.get(name, ()))
    return [run for n in EXPERIMENTS if n in want for run in _seed_runs(cfg, n)]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _dataset(out: Path, samples: int, seed: int, progress: bool) -> Path:
    """A synthetic split, reused when present with the same size and seed."""
    from fusionedge.training.synth.generate import generate_dataset

    manifest = out / "manifest.jsonl"
    stamp = out / "report_split.json"
    want = {"samples": samples, "seed": seed}
    if manifest.exists() and stamp.exists() and json.loads(stamp.read_text()) == want:
        return manifest
    manifest = generate_dataset(out, samples, seed, progress=progress, overwrite=True)
    write_json_atomic(stamp, want)
    return manifest


def _train_options(cfg: ReportConfig, name: str, runs: Path, train_m: Path, val_m: Path) -> dict:
    """The TrainConfig keyword arguments of supervised run ``name`` (``few_*_seedK``: seed + K, and
    ``few_pretrained_seedK`` starts from ``pretrain_seedK``)."""
    base_name, k = _seed_of(name)
    base = dict(data=train_m, val_data=val_m, out=runs / name, seed=cfg.seed + k, epochs=cfg.epochs,
                batch_size=cfg.batch_size, progress=cfg.progress, **cfg.extra_train)
    few = max(1, round(cfg.few_label_fraction * cfg.train_samples))
    return {
        "fusion": dict(base, model="fusion_student"),
        "vision_only": dict(base, model="vision_only_student"),
        "audio_only": dict(base, model="audio_only_student"),
        "concat": dict(base, model="concat_student"),
        "xattn": dict(base, model="xattn_student"),
        "uncertainty": dict(base, model="fusion_student", task_weighting="uncertainty"),
        "alternating": dict(base, model="fusion_student", task_schedule="alternating"),
        "teacher": dict(base, model="fusion_teacher", epochs=cfg.teacher_epochs),
        "distilled": dict(base, model="fusion_student", teacher=runs / "teacher" / "best.pt"),
        "few_scratch": dict(base, model="fusion_student", max_train_samples=few, epochs=cfg.few_label_epochs),
        "few_pretrained": dict(base, model="fusion_student", max_train_samples=few, epochs=cfg.few_label_epochs,
                               init=runs / name.replace("few_pretrained", "pretrain") / "pretrain.pt",
                               frozen_encoder_epochs=_frozen_epochs(cfg.few_label_frozen_share, cfg.few_label_epochs)),
    }[base_name]


def _frozen_epochs(share: float, epochs: int) -> int:
    """Epochs of the few-label fine-tuning with the pretrained encoders frozen."""
    return int(round(share * epochs))


def _finished(run_dir: Path, options: dict, section: str, model_config: dict) -> bool:
    """True when ``run_dir`` holds a finished run whose saved options equal ``options``, whose model
    is built as ``model_config`` (a registered model whose definition changed is trained again) and
    which is newer than the checkpoints it started from (``init``, ``teacher``): a retrained
    pretraining or teacher makes the runs built on it stale although their options are the same."""
    try:
        saved_all = json.loads((run_dir / "config.json").read_text())
        saved = saved_all[section]
        json.loads((run_dir / "metrics.json").read_text())
        finished_ns = (run_dir / "metrics.json").stat().st_mtime_ns
    except (OSError, ValueError, KeyError):
        return False
    if saved_all.get("model_config") != model_config:
        return False
    for k in ("init", "teacher"):
        source = options.get(k)
        if source is not None and (not Path(source).exists() or Path(source).stat().st_mtime_ns > finished_ns):
            return False
    for k, v in options.items():
        if k == "progress":
            continue
        v = str(v) if isinstance(v, Path) else v
        if saved.get(k) != v:
            return False
    return True


def _selected_as_now(run_dir: Path) -> bool:
    """True when a finished pretraining's checkpoint is the epoch that today's selection rule picks
    from its own held-out history (a pretraining saved under an older rule is made again)."""
    from fusionedge.training.pretrain import better_pretrain_epoch

    metrics = json.loads((run_dir / "metrics.json").read_text())
    best = None
    for h in metrics["history"]:
        candidate = {"epoch": h["epoch"], **h["val"]}
        if better_pretrain_epoch(candidate, best):
            best = candidate
    return best is not None and best["epoch"] == (metrics.get("best") or {}).get("epoch")


def _model_config(run_cfg) -> dict:
    """The model config a TrainConfig / PretrainConfig builds, as ``config.json`` records it."""
    from fusionedge.training.dataset import Labels
    from fusionedge.training.loop import resolve_model_config

    config = resolve_model_config(run_cfg.model, run_cfg.geometry, Labels(), run_cfg.model_overrides).to_dict()
    return json.loads(json.dumps(config))  # tuples as lists, as read back from config.json


def _run_one(cfg: ReportConfig, name: str, runs: Path, train_m: Path, val_m: Path) -> dict:
    """Train (or reuse) run ``name``; returns its metrics.json."""
    run_dir = runs / name
    base_name, k = _seed_of(name)
    if base_name == "pretrain":
        from fusionedge.training.pretrain import PretrainConfig, pretrain

        opts = dict(data=train_m, val_data=val_m, out=run_dir, seed=cfg.seed + k, epochs=cfg.pretrain_epochs,
                    match_weight=cfg.pretrain_match_weight, view_weight=cfg.pretrain_view_weight,
                    view_still=cfg.pretrain_view_still, progress=cfg.progress)
        run_cfg = PretrainConfig(**opts)
        if (cfg.force or not _finished(run_dir, opts, "pretrain", _model_config(run_cfg))
                or not _selected_as_now(run_dir)):
            shutil.rmtree(run_dir, ignore_errors=True)
            pretrain(run_cfg)
    else:
        from fusionedge.training.train import TrainConfig, train

        opts = _train_options(cfg, name, runs, train_m, val_m)
        run_cfg = TrainConfig(**opts)
        if cfg.force or not _finished(run_dir, opts, "train", _model_config(run_cfg)):
            shutil.rmtree(run_dir, ignore_errors=True)
            train(run_cfg)
    return json.loads((run_dir / "metrics.json").read_text())


#: Bumped when ``_evaluate`` measures something new, so cached test metrics are recomputed.
_EVAL_VERSION = 3


def _decoy_ids(samples) -> set[str]:
    """Ids of the clips whose only emergency vehicle in view has its lights OFF (the generator's
    ``synth`` record in the manifest; none for data without it): the lights cue's hard case."""
    out = set()
    for s in samples:
        synth = s.meta.get("synth")
        if isinstance(synth, dict) and synth.get("lights_off_ev") and not synth.get("lights_on_ev"):
            out.add(s.id)
    return out


def _evaluate(checkpoint: Path, test_clips, cache: Path, decoys: AbstractSet[str] = frozenset()) -> dict:
    """Test metrics of a checkpoint with both sensors, audio missing and video missing (cached).

    ``decoys``: ids of the test clips for ``lights_cue_accuracy_decoy`` (see ``_cue_accuracy``)."""
    import torch
    from fusionedge.training.checkpoint import load_checkpoint
    from fusionedge.training.models.multimodal import count_flops, count_params
    from fusionedge.training.train import evaluate_model

    stamp = checkpoint.stat().st_mtime_ns
    if cache.exists():
        saved = json.loads(cache.read_text())
        if (saved.get("checkpoint_mtime_ns") == stamp and saved.get("samples") == len(test_clips)
                and saved.get("version") == _EVAL_VERSION):
            return saved
    model, info = load_checkpoint(checkpoint)
    out: dict[str, Any] = {"version": _EVAL_VERSION, "checkpoint": str(checkpoint), "checkpoint_mtime_ns": stamp,
                           "samples": len(test_clips),
                           "model_name": info["model_name"], "params": count_params(model),
                           "flops": count_flops(model)}
    for missing in (None, "audio", "video"):
        net = model if missing is None else _WithoutSensor(model, missing)
        with torch.no_grad():
            m = evaluate_model(net, test_clips)
            m.update(_cue_accuracy(net, test_clips, decoys))
        out["both" if missing is None else f"{missing}_missing"] = json_safe(m)
    write_json_atomic(cache, out)
    return out


def _cue_accuracy(net, clips, decoys: AbstractSet[str] = frozenset()) -> dict:
    """How often the predicted event has the right siren cue and the right lights cue, and the lights
    cue on the ``decoys`` alone (``lights_cue_accuracy_decoy``, NaN without any): clips where an
    emergency vehicle with its lights OFF is in view and none with them on, where "an emergency
    vehicle is there" is not enough.

    With one sensor, no model can beat 0.5 event accuracy on this data (each cue splits the four
    events into two pairs), and two 0.5-models differ by sampling noise alone (±2.5 points at 400
    clips). Whether the remaining sensor's cue is still read is what a missing sensor can cost: the
    siren cue (``emergency_*`` vs the others) from audio, the lights cue (``emergency_ahead``,
    ``lights_no_siren`` vs the others) from video.
    """
    from fusionedge.training.dataset import iterate_batches
    from fusionedge.training.losses import IGNORE_INDEX
    from fusionedge.training.synth.rules import cues_for_event

    events = clips.labels.events
    cues = [cues_for_event(e) for e in events]  # (siren, lights) per event index
    siren_ok = lights_ok = n = decoy_ok = n_decoy = 0
    was = net.training
    net.eval()
    for batch in iterate_batches(clips, 64):
        pred = net(batch["video"], batch["audio"], batch["presence"])[0].argmax(dim=1).tolist()
        ids = [clips.ids[i] for i in batch["index"].tolist()]
        for p, t, clip_id in zip(pred, batch["event"].tolist(), ids):
            if t == IGNORE_INDEX:
                continue
            siren_ok += cues[p][0] == cues[t][0]
            lights_ok += cues[p][1] == cues[t][1]
            n += 1
            if clip_id in decoys:
                decoy_ok += cues[p][1] == cues[t][1]
                n_decoy += 1
    net.train(was)
    nan = float("nan")
    return {"siren_cue_accuracy": siren_ok / n if n else nan, "lights_cue_accuracy": lights_ok / n if n else nan,
            "lights_cue_accuracy_decoy": decoy_ok / n_decoy if n_decoy else nan}


class _WithoutSensor:
    """A model as the runtime runs it when one sensor has failed: that input zeroed, its presence 0."""

    def __init__(self, model, missing: str) -> None:
        self.model, self.col = model, {"video": 0, "audio": 1}[missing]
        self.training = model.training

    def eval(self):
        self.model.eval()
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def __call__(self, video, audio, presence):
        presence = presence.clone()
        presence[:, self.col] = 0.0
        if self.col == 0:
            video = video.new_zeros(video.shape)
        else:
            audio = audio.new_zeros(audio.shape)
        return self.model(video, audio, presence)


def run_report(cfg: ReportConfig) -> dict:
    """Run the experiments (reusing finished ones), evaluate, and write ``WORKDIR/report/``.

    Args:
        cfg: sizes and the experiments to run.

    Raises:
        FusionEdgeError: a run failed (its error names the step); DataError/MediaError for bad data.

    Returns:
        The report dict (also ``WORKDIR/report/report.json``): per-run test metrics, the tables
        and the target checks.
    """
    from fusionedge.sdk.datamanifest import read_manifest
    from fusionedge.sdk.spec import InputGeometry
    from fusionedge.training.dataset import Labels, load_clips

    t0 = time.perf_counter()
    work = cfg.workdir
    runs = work / "runs"
    out_dir = work / "report"
    runs.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _selected(cfg)

    _log(f"[report] data: {cfg.train_samples} train, {cfg.val_samples} val, {cfg.test_samples} test (fresh seed)")
    train_m = _dataset(work / "data" / "train", cfg.train_samples, cfg.seed, cfg.progress)
    val_m = _dataset(work / "data" / "val", cfg.val_samples, cfg.seed + 1, cfg.progress)
    test_m = _dataset(work / "data" / "test", cfg.test_samples, cfg.seed + 1000, cfg.progress)

    history: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    for i, name in enumerate(names, 1):
        _log(f"[report] run {i}/{len(names)}: {name}")
        t = time.perf_counter()
        history[name] = _run_one(cfg, name, runs, train_m, val_m)
        seconds[name] = round(history[name].get("seconds", time.perf_counter() - t), 1)

    _log("[report] evaluating on the test split")
    test_samples = read_manifest(test_m)
    test_clips = load_clips(test_samples, InputGeometry(), Labels(), workers=2, progress=cfg.progress,
                            desc="decode test")
    decoys = _decoy_ids(test_samples)
    results: dict[str, dict] = {}
    for name in names:
        if _seed_of(name)[0] == "pretrain":
            continue
        results[name] = _evaluate(runs / name / "best.pt", test_clips, runs / name / "test_eval.json", decoys)

    report = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
              "test": results, "test_decoy_clips": len(decoys), "pretrain": _pretrain_summary(history),
              "train_seconds": seconds, "tables": {}, "checks": {}}
    _fill_tables(report, history)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_text_atomic(out_dir / "report.json", json.dumps(json_safe(report), indent=2, default=str) + "\n")
    write_text_atomic(out_dir / "report.md", render_markdown(report))
    try:
        _plots(report, history, out_dir)
    except Exception as e:  # a plotting failure must not lose the measured tables
        _log(f"[report] warning: plots not written: {e}")
    _log(f"[report] wrote {out_dir / 'report.md'}")
    return report


def _pretrain_summary(history: dict) -> dict | None:
    """Each pretraining's selected epoch and held-out metrics (``runs``, in seed order) and the chance levels."""
    runs = [{"run": name, "seed_offset": _seed_of(name)[1], "best": m.get("best") or {},
             "seconds": m.get("seconds")} for name, m in history.items() if _seed_of(name)[0] == "pretrain" and m]
    if not runs:
        return None
    return {"runs": runs, "chance": history[runs[0]["run"]].get("chance")}


def _acc(results: dict, name: str, key: str = "event_accuracy", pattern: str = "both") -> float | None:
    r = results.get(name)
    return None if r is None else r[pattern].get(key)


def _fill_tables(report: dict, history: dict) -> None:
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
            seed = _seed_of(s)[1]
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
        frozen = _frozen_epochs(c.get("few_label_frozen_share", 0.0), c["few_label_epochs"])
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


def _plots(report: dict, history: dict, out_dir: Path) -> None:
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
