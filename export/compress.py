"""One compression pipeline: prune → 2:4 sparsity → INT8, each stage a verified sibling bundle, one report.

``compress(checkpoint, data, out, cfg)`` starts from a trained checkpoint and a data folder with
``train/``, ``val/`` and ``test/`` manifests, and writes under ``out``:

* ``fp32/``: the checkpoint exported as it is (the reference every drop is measured against);
* ``pruned-<R>/`` for each asked FLOPs ratio ``R`` (percent): channels pruned with
  :mod:`fusionedge.training.prune`, fine-tuned by distillation from the unpruned model;
* ``sparse-2of4/``: the chosen model with 2:4 weights (:mod:`fusionedge.training.sparsity`), the
  pattern checked in the exported ONNX and recorded in the manifest (``export/sparsity.py``);
* ``int8/``: the chosen FP32 stage quantized by the precision gate (``export/precision_gate.py``),
  after post-training calibration (``ptq``) or quantization-aware fine-tuning with distillation
  (``qat``); the weights of the operators left in float are stored as weight-only INT8
  (``export/weight_int8.py``), so the file is about a third of FP32's or less;
* ``report.md``, ``report.json`` and ``pareto.png`` (:mod:`fusionedge.export.compress_report`): for
  every stage accuracy on the test split, batch-1 latency on ONNX Runtime CPU (all stages timed
  interleaved in one run), file size and FLOPs.

Each pruned, sparse or INT8 bundle is a complete bundle with its own golden outputs (computed by its
own model), its manifest's ``variant`` naming the FP32 parent. The accuracy budget (event accuracy and
detection mAP@0.5, in points, measured on the validation split against ``fp32``) decides how far the
chain goes: it continues from the most pruned ratio within budget; the sparse stage must be within
budget; the INT8 gate gets what is left of the budget. Where nothing meets it, :class:`CompressBudgetError`
names the stage, the measured drop and the budget. Everything is assembled in a work folder beside
``out`` and renamed into place at the end, so a failed run leaves no bundle behind.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fusionedge.export.bundle_writer import check_target, publish_folder
from fusionedge.export.compress_report import METRICS, evaluate_bundle, finish_report
from fusionedge.export.onnx_export import ExportError
from fusionedge.export.parity import DEFAULT_ATOL, DEFAULT_RTOL
from fusionedge.export.precision_gate import Budget, gate_bundle
from fusionedge.export.quantize import QuantizeConfig, write_variant_bundle
from fusionedge.sdk.bundle import load_bundle, sha256_file
from fusionedge.sdk.datamanifest import manifest_path
from fusionedge.sdk.errors import DataError, InputError

__all__ = ["INT8_METHODS", "INT8_NODES", "SPLITS", "CompressBudgetError", "CompressConfig", "choose_within_budget", "compress",
           "with_budget_points"]

#: How the INT8 stage is made.
INT8_METHODS = ("ptq", "qat")
#: Which nodes the INT8 stage quantizes.
INT8_NODES = ("conv", "all")
#: The data folder's splits: fine-tuning and calibration, the budget, the report.
SPLITS = ("train", "val", "test")
_METRICS = METRICS


class CompressBudgetError(ExportError):
    """No compressed stage kept the accuracy drop within the budget (the message names the values)."""


@dataclass(frozen=True)
class CompressConfig:
    """What :func:`compress` tries.

    Attributes:
        prune: FLOPs ratios to remove, each in (0, 1) (empty: no pruning).
        criterion: channel importance (``taylor``, ``magnitude``, ``bn_scale``); Taylor keeps the most
            accuracy before fine-tuning on the quickstart student.
        global_pruning: rank channels across layers.
        rounds: prune → fine-tune rounds per ratio.
        round_to: pruned channel counts are multiples of this. Runtimes compute in channel blocks
            (ONNX Runtime's AVX-512 convolutions in blocks of 16, AVX2 in 8; TensorRT's tensor cores
            want 8 in FP16, 32 in INT8), so channels removed below a block boundary save nothing there.
        dense_detection: keep the detection head and the stride-4 features it reads unpruned.
        keep_narrow: keep every channel of convolutions with at most ``2 * round_to`` of them (a cut
            there would remove half or more).
        ratio_scale: ``(module-name prefix, factor)`` pairs: those convolutions lose channels ``factor``
            times as fast as the others (``PruneConfig.ratio_scale``).
        sparsity: ``"2:4"`` or None.
        int8: ``"ptq"``, ``"qat"`` or None.
        int8_nodes: ``"conv"``: quantize only the convolutions that gain on a CPU
            (:mod:`fusionedge.export.int8_cpu`); ``"all"``: every operator the quantizer supports.
        budget: the largest allowed drop from ``fp32`` on the validation split ([0, 1] metric units).
        finetune: the distillation fine-tune after pruning, after masking and for QAT.
        quantize: the INT8 setting handed to the gate.
        train_limit: fine-tuning samples (None: all).
        val_limit: validation samples for the budget (None: all).
        test_limit: test samples for the report (None: all).
        calibration_limit: calibration samples for INT8.
        latency_runs: timed batch-1 runs per stage for the report.
    """

    prune: tuple[float, ...] = ()
    criterion: str = "taylor"
    global_pruning: bool = False
    rounds: int = 1
    round_to: int = 8
    dense_detection: bool = False
    keep_narrow: bool = False
    ratio_scale: tuple[tuple[str, float], ...] = ()
    sparsity: str | None = None
    int8: str | None = None
    int8_nodes: str = "conv"
    budget: Budget = field(default_factory=Budget)
    finetune: Any = None
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    train_limit: int | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    calibration_limit: int = 64
    latency_runs: int = 50

    def __post_init__(self) -> None:
        from fusionedge.training.prune import PruneConfig
        from fusionedge.training.sparsity import check_pattern

        for r in self.prune:
            PruneConfig(flops_ratio=r, criterion=self.criterion, rounds=self.rounds, round_to=self.round_to,
                        ratio_scale=self.ratio_scale)
        if len(set(self.prune)) != len(self.prune):
            raise InputError(f"prune ratios must differ, got {list(self.prune)}")
        if self.sparsity is not None:
            check_pattern(self.sparsity)
        if self.int8 is not None and self.int8 not in INT8_METHODS:
            raise InputError(f"int8 must be one of {', '.join(INT8_METHODS)}, got {self.int8!r}")
        if self.int8_nodes not in INT8_NODES:
            raise InputError(f"int8_nodes must be one of {', '.join(INT8_NODES)}, got {self.int8_nodes!r}")
        if not (self.prune or self.sparsity or self.int8):
            raise InputError("compress: ask for at least one of prune, sparsity, int8")
        if self.latency_runs < 1 or self.calibration_limit < 1:
            raise InputError(f"latency_runs and calibration_limit must be >= 1, got {self.latency_runs}, "
                             f"{self.calibration_limit}")


def _split(data: Path, name: str) -> Path:
    folder = Path(data) / name
    if not manifest_path(folder).is_file():
        raise DataError(f"compress: {data} needs a {name}/ data set (no {manifest_path(folder)})")
    return folder


def _drop(base: dict[str, float], got: dict[str, float]) -> dict[str, float]:
    return {k: round(base[k] - got[k], 6) for k in _METRICS}


def _within(drop: dict[str, float], budget: Budget) -> bool:
    return all(drop[k] <= getattr(budget, k) + 1e-9 for k in _METRICS)


def _points(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {100 * v:+.2f} pt" for k, v in d.items() if k in _METRICS)


def choose_within_budget(stages: list[dict[str, Any]], budget: Budget) -> dict[str, Any]:
    """The last of ``stages`` (ordered from least to most compressed) whose ``val_drop`` is within ``budget``.

    Raises:
        CompressBudgetError: none is; the message names every stage's measured drop and the budget.
    """
    ok = [s for s in stages if _within(s["val_drop"], budget)]
    if not ok:
        tried = "; ".join(f"{s['name']}: drop {_points(s['val_drop'])}" for s in stages)
        raise CompressBudgetError(f"compress: no stage stays within the budget ({_points(budget.as_dict())} "
                                  f"allowed drop): {tried}")
    return ok[-1]


class _Run:
    """The state of one compress run: the work folder, the parent bundle, the stages measured."""

    def __init__(self, work: Path, cfg: CompressConfig, data: Path, progress: bool) -> None:
        self.work, self.cfg, self.data, self.progress = work, cfg, data, progress
        self.stages: list[dict[str, Any]] = []
        self.base_val: dict[str, float] = {}
        self.fp32: Path | None = None
        self.info: dict = {}
        self.val_clips: Any = None

    def validate(self, model: Any) -> dict[str, float]:
        """The PyTorch model's budget metrics on the validation split (decoded once), for fine-tune epochs."""
        from fusionedge.training.evaluation import evaluate_model
        from fusionedge.training.finetune import load_training_clips

        if self.val_clips is None:
            self.val_clips = load_training_clips(self.info, _split(self.data, "val"), limit=self.cfg.val_limit,
                                                 progress=False)
        metrics = evaluate_model(model, self.val_clips)
        return {k: float(metrics[k]) for k in _METRICS if k in metrics}

    def say(self, msg: str) -> None:
        if self.progress:
            print(f"compress: {msg}", file=sys.stderr, flush=True)

    def export_stage(self, model: Any, info: dict, name: str, variant: dict[str, Any]) -> Path:
        """Export ``model`` (parity-checked) and write it as a sibling of ``fp32`` named ``name``."""
        from fusionedge.export.pipeline import export_model

        staging = self.work / f".export-{name}"
        export_model(model, info, staging, progress=False)
        try:  # the stage's own export parity (batch 1 and 3 against its PyTorch model) goes with it
            parity = load_bundle(staging).manifest["export"]["parity"]
            return write_variant_bundle(load_bundle(self.fp32), staging / "model.onnx", self.work / name,
                                        precision="fp32", variant={**variant, "export_parity": parity},
                                        golden_tol={"rtol": DEFAULT_RTOL, "atol": DEFAULT_ATOL})
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def measure(self, name: str, bundle: Path, kind: str, flops: int | None, extra: dict | None = None) -> dict:
        """Validation metrics and drop for a written stage; recorded in ``self.stages``."""
        val = evaluate_bundle(bundle, _split(self.data, "val"), self.cfg.val_limit)
        drop = _drop(self.base_val, val) if self.base_val else {k: 0.0 for k in _METRICS}
        stage = {"name": name, "kind": kind, "bundle": name, "flops": flops, "val": val, "val_drop": drop,
                 "within_budget": _within(drop, self.cfg.budget), **dict(extra or {})}
        self.stages.append(stage)
        self.say(f"{name}: val {val} (drop {_points(drop)})")
        return stage


def compress(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    cfg: CompressConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the compression chain and write every stage's bundle and the Pareto report under ``out``.

    Args:
        checkpoint: a training checkpoint (``fusionedge train``'s ``best.pt``).
        data: a folder with ``train/``, ``val/`` and ``test/`` data-set manifests.
        out: the folder to create (one sub-folder per stage, plus the report).
        cfg: see :class:`CompressConfig`.
        overwrite: replace an existing ``out``.
        progress: progress on stderr.

    Returns:
        The report (as written to ``report.json``): ``stages`` (name, kind, bundle, flops, size, val
        and test metrics, drops, latency), ``chosen`` (the last stage of the chain), ``config``.

    Raises:
        CompressBudgetError: a stage the chain needs is over the budget (nothing is written).
        PrecisionBudgetError: the INT8 gate found no setting within the remaining budget.
        InputError / DataError / CheckpointError / ExportError: invalid inputs or a failed step.
    """
    from fusionedge.training.checkpoint import load_checkpoint
    from fusionedge.training.finetune import FinetuneConfig, load_training_clips, teacher_targets
    from fusionedge.training.models.multimodal import count_flops

    data = Path(data)
    splits = {s: _split(data, s) for s in SPLITS}
    out = check_target(out, overwrite=overwrite)
    if not Path(checkpoint).is_file():
        raise ExportError(f"{checkpoint}: checkpoint not found")
    ft = cfg.finetune if cfg.finetune is not None else FinetuneConfig()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    run = _Run(work, cfg, data, progress)
    try:
        model, info = load_checkpoint(checkpoint)
        run.info = info
        run.fp32 = _export_base(run, model, info, checkpoint)
        run.measure("fp32", run.fp32, "fp32", count_flops(model))
        run.base_val = dict(run.stages[0]["val"])
        run.stages[0]["val_drop"] = {k: 0.0 for k in _METRICS}

        needs_training = bool(cfg.prune or cfg.sparsity or cfg.int8 == "qat")
        clips = cache = None
        if needs_training:
            clips = load_training_clips(info, splits["train"], limit=cfg.train_limit, progress=progress)
            cache = teacher_targets(copy.deepcopy(model), clips, batch_size=ft.batch_size,
                                    det_features=ft.distill.det_feature > 0, progress=progress)
        chain_model, chain_bundle, chain_name = model, run.fp32, "fp32"
        if cfg.prune:
            chain_model, chain_bundle, chain_name = _prune_stages(run, model, info, clips, cache, ft)
        if cfg.sparsity:
            chain_model, chain_bundle, chain_name = _sparse_stage(run, chain_model, info, clips, cache, ft,
                                                                  chain_name)
        if cfg.int8:
            chain_bundle, chain_name = _int8_stage(run, chain_model, chain_bundle, chain_name, clips, cache, ft,
                                                   splits)
        report = finish_report(run.work, run.stages, chosen=chain_name, config=_config_dict(cfg, ft),
                               test_data=splits["test"], test_limit=cfg.test_limit,
                               latency_runs=cfg.latency_runs, progress=progress)
        publish_folder(work, out, overwrite)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return report


def _config_dict(cfg: CompressConfig, ft: Any) -> dict[str, Any]:
    return {"prune": list(cfg.prune), "criterion": cfg.criterion, "global_pruning": cfg.global_pruning,
            "rounds": cfg.rounds, "round_to": cfg.round_to, "dense_detection": cfg.dense_detection,
            "keep_narrow": cfg.keep_narrow, "ratio_scale": [list(x) for x in cfg.ratio_scale], "sparsity": cfg.sparsity, "int8": cfg.int8,
            "int8_nodes": cfg.int8_nodes,
            "budget": cfg.budget.as_dict(),
            "finetune": ft.to_dict(), "quantize": cfg.quantize.to_dict()}


def _export_base(run: _Run, model: Any, info: dict, checkpoint: str | os.PathLike) -> Path:
    from fusionedge.export.pipeline import export_model

    run.say("exporting the fp32 reference")
    return export_model(model, info, run.work / "fp32", checkpoint_sha256=sha256_file(checkpoint), progress=False)


def _prune_stages(run: _Run, model: Any, info: dict, clips: Any, cache: Any, ft: Any) -> tuple[Any, Path, str]:
    from fusionedge.training.prune import PruneConfig, prune_model

    cfg = run.cfg
    candidates = []
    for ratio in sorted(cfg.prune):
        m = copy.deepcopy(model)
        pcfg = PruneConfig(flops_ratio=ratio, criterion=cfg.criterion, global_pruning=cfg.global_pruning,
                           rounds=cfg.rounds, round_to=cfg.round_to, dense_detection=cfg.dense_detection,
                           keep_narrow=cfg.keep_narrow, ratio_scale=cfg.ratio_scale, finetune=ft)
        run.say(f"pruning {ratio:.0%} of the FLOPs ({cfg.criterion})")
        report = prune_model(m, pcfg, clips=clips, teacher_cache=cache, validate=run.validate, progress=run.progress)
        name = f"pruned-{round(100 * ratio)}"
        bundle = run.export_stage(m, info, name, {"kind": "pruned", "prune": report})
        stage = run.measure(name, bundle, "pruned", report["flops_after"],
                            {"flops_removed": round(1 - report["flops_after"] / report["flops_before"], 4)})
        candidates.append((stage, m, bundle))
    best = choose_within_budget([c[0] for c in candidates], cfg.budget)
    stage, m, bundle = next(c for c in candidates if c[0] is best)
    return m, bundle, stage["name"]


def _sparse_stage(run: _Run, model: Any, info: dict, clips: Any, cache: Any, ft: Any,
                  parent: str) -> tuple[Any, Path, str]:
    from fusionedge.export.sparsity import record_sparsity
    from fusionedge.training.sparsity import sparsify_model

    m = copy.deepcopy(model)
    run.say(f"2:4 sparsity on {parent}")
    report = sparsify_model(m, run.cfg.sparsity, clips=clips, teacher_cache=cache, finetune=ft, progress=run.progress)
    name = "sparse-2of4"
    bundle = run.export_stage(m, info, name, {"kind": "sparse", "from": parent, "sparsity": report})
    section = record_sparsity(bundle, run.cfg.sparsity)
    flops = next(s["flops"] for s in run.stages if s["name"] == parent)
    stage = run.measure(name, bundle, "sparse", flops, {"from": parent, "sparse_weights": len(section["weights"])})
    if not stage["within_budget"]:
        raise CompressBudgetError(
            f"compress: the 2:4 stage (from {parent}) drops {_points(stage['val_drop'])}, over the budget "
            f"({_points(run.cfg.budget.as_dict())} allowed)")
    return m, bundle, name


def _int8_stage(run: _Run, model: Any, parent_bundle: Path, parent: str, clips: Any, cache: Any, ft: Any,
                splits: dict[str, Path]) -> tuple[Path, str]:
    cfg = run.cfg
    spent = next(s["val_drop"] for s in run.stages if s["name"] == parent)
    left = Budget(**{k: max(0.0, getattr(cfg.budget, k) - max(0.0, spent[k])) for k in _METRICS})
    source, flops = parent_bundle, next(s["flops"] for s in run.stages if s["name"] == parent)
    qat_dir, qat_cfg = None, None
    if cfg.int8 == "qat":
        import torch
        from fusionedge.training.finetune import distill_finetune
        from fusionedge.training.qat import QATConfig, prepare_qat, strip_qat
        from fusionedge.training.sparsity import eligible_layers

        m = copy.deepcopy(model)
        # a 2:4 model keeps its zeros through the fine-tune (modules held before QAT wraps them)
        kept = {mod: mod.weight.detach() != 0 for mod in eligible_layers(m).values()} if cfg.sparsity else {}

        @torch.no_grad()
        def keep_pattern() -> None:
            for mod, mask in kept.items():
                mod.weight.mul_(mask)

        run.say(f"quantization-aware fine-tune of {parent}")
        q = cfg.quantize  # the fine-tuning rounds weights to the grid the gate's quantizer will use
        qat_cfg = QATConfig(per_channel=q.per_channel, weight_bits=q.weight_bits, reduce_range=q.weights_7bit,
                            quantize_frontend=not q.exclude_frontend, seed=ft.seed)
        prepare_qat(m, qat_cfg)
        distill_finetune(m, cache, clips, ft, after_step=keep_pattern if kept else None, desc="qat fine-tune",
                         progress=run.progress)
        strip_qat(m).eval()
        qat_dir = run.work / ".qat-fp32"
        source = run.export_stage(m, run.info, qat_dir.name, {"kind": "qat-fp32", "from": parent})
    qcfg = replace(cfg.quantize, weight_int8=True)  # what stays float keeps int8 weights: the file shrinks
    if cfg.int8_nodes == "conv":
        import onnx
        from fusionedge.export.int8_cpu import conv_only_keep_float

        kept = conv_only_keep_float(onnx.load(str(load_bundle(source).model_path)))
        qcfg = replace(qcfg, keep_float=tuple(dict.fromkeys(qcfg.keep_float + tuple(kept))))
    run.say(f"INT8 ({cfg.int8}, {cfg.int8_nodes}) of {parent}, budget left {_points(left.as_dict())}")
    try:
        bundle, gate = gate_bundle(source, run.work / "int8", splits["train"], splits["val"], budget=left,
                                   config=qcfg, calibration_limit=cfg.calibration_limit,
                                   validation_limit=cfg.val_limit, progress=run.progress)
    finally:
        if qat_dir is not None:
            shutil.rmtree(qat_dir, ignore_errors=True)
    if cfg.int8 == "qat":  # the gate quantized a QAT-tuned model: say so in the manifest
        from fusionedge.sdk.bundle import MANIFEST_NAME
        from fusionedge.sdk.fileio import write_json_atomic

        manifest = dict(load_bundle(bundle).manifest)
        manifest["variant"] = {**manifest["variant"], "method": "qat", "finetune": ft.to_dict(),
                               "qat": {"weight_bits": qat_cfg.weight_bits, "reduce_range": qat_cfg.reduce_range,
                                       "weight_qmax": qat_cfg.weight_qmax}}
        write_json_atomic(Path(bundle) / MANIFEST_NAME, manifest)
        load_bundle(bundle)
    if cfg.sparsity:
        from fusionedge.export.sparsity import record_sparsity

        record_sparsity(bundle, cfg.sparsity)
    chosen = gate.chosen
    run.measure("int8", bundle, f"int8-{cfg.int8}", flops,
                {"from": parent, "kept_float": len(chosen.keep_float) if chosen else None})
    return bundle, "int8"


def with_budget_points(cfg: CompressConfig, event_points: float, map_points: float) -> CompressConfig:
    """``cfg`` with a budget given in points (1 = one percentage point of a [0, 1] metric).

    Raises:
        InputError: a budget outside [0, 100] points, naming it.
    """
    for name, v in (("event", event_points), ("map", map_points)):
        if not (isinstance(v, (int, float)) and 0 <= v <= 100):
            raise InputError(f"budget-{name} must be in [0, 100] points, got {v!r}")
    return replace(cfg, budget=Budget(event_accuracy=event_points / 100.0, detection_map50=map_points / 100.0))
