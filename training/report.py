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
from fusionedge.sdk.fileio import json_safe, read_json, write_json_atomic, write_text_atomic

from .report_tables import fill_tables, frozen_epochs, plots, pretrain_summary, render_markdown, seed_of

__all__ = ["ReportConfig", "EXPERIMENTS", "run_report", "render_markdown"]

#: Every run of the report, in the order they are trained (the teacher before the distilled student,
#: the pretraining before the fine-tuning).
EXPERIMENTS: tuple[str, ...] = ("fusion", "vision_only", "audio_only", "concat", "xattn", "uncertainty",
                                "alternating", "teacher", "distilled", "pretrain", "few_scratch",
                                "few_pretrained")

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
    if manifest.exists() and stamp.exists() and read_json(stamp) == want:
        return manifest
    manifest = generate_dataset(out, samples, seed, progress=progress, overwrite=True)
    write_json_atomic(stamp, want)
    return manifest


def _train_options(cfg: ReportConfig, name: str, runs: Path, train_m: Path, val_m: Path) -> dict:
    """The TrainConfig keyword arguments of supervised run ``name`` (``few_*_seedK``: seed + K, and
    ``few_pretrained_seedK`` starts from ``pretrain_seedK``)."""
    base_name, k = seed_of(name)
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
                               frozen_encoder_epochs=frozen_epochs(cfg.few_label_frozen_share, cfg.few_label_epochs)),
    }[base_name]


def _finished(run_dir: Path, options: dict, section: str, model_config: dict) -> bool:
    """True when ``run_dir`` holds a finished run whose saved options equal ``options``, whose model
    is built as ``model_config`` (a registered model whose definition changed is trained again) and
    which is newer than the checkpoints it started from (``init``, ``teacher``): a retrained
    pretraining or teacher makes the runs built on it stale although their options are the same."""
    try:
        saved_all = read_json(run_dir / "config.json")
        saved = saved_all[section]
        read_json(run_dir / "metrics.json")
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

    metrics = read_json(run_dir / "metrics.json")
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
    base_name, k = seed_of(name)
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
    return read_json(run_dir / "metrics.json")


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
        try:
            saved = read_json(cache)
        except (OSError, ValueError):  # an unreadable cache is measured again
            saved = {}
        if isinstance(saved, dict) and (saved.get("checkpoint_mtime_ns") == stamp and saved.get("samples") == len(test_clips)
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
        self.output_names = model.output_names  # the heads the model has, as evaluate_model reads them

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
        if seed_of(name)[0] == "pretrain":
            continue
        results[name] = _evaluate(runs / name / "best.pt", test_clips, runs / name / "test_eval.json", decoys)

    report = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
              "test": results, "test_decoy_clips": len(decoys), "pretrain": pretrain_summary(history),
              "train_seconds": seconds, "tables": {}, "checks": {}}
    fill_tables(report, history)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_text_atomic(out_dir / "report.json", json.dumps(json_safe(report), indent=2, default=str) + "\n")
    write_text_atomic(out_dir / "report.md", render_markdown(report))
    try:
        plots(report, history, out_dir)
    except Exception as e:  # a plotting failure must not lose the measured tables
        _log(f"[report] warning: plots not written: {e}")
    _log(f"[report] wrote {out_dir / 'report.md'}")
    return report
