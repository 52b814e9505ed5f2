#!/usr/bin/env python
"""Precision table: FP32 / FP16 / INT8-PTQ / INT8-QAT side by side — size, accuracy, ONNX Runtime CPU latency.

Usage (the numbers in the issue-4 report came from this command)::

    fusionedge report --workdir runs/report            # trains the student and the teacher
    fusionedge export --checkpoint runs/report/runs/fusion/best.pt --out runs/report/bundle
    python scripts/precision_table.py --bundle runs/report/bundle \\
        --calibration runs/report/data/val --validation runs/report/data/test \\
        --checkpoint runs/report/runs/fusion/best.pt --train-data runs/report/data/train --harsh \\
        --teacher-checkpoint runs/report/runs/teacher/best.pt --qat-epochs 2 --qat-limit 800 \\
        --work /tmp/precision-table --runs 200 --profile-ops --json table.json

For each model it writes the FP16 and INT8 (cpu profile, per-channel, minmax, audio front end and
sensitive ops in float) sibling bundles under ``--work``, evaluates each through the runtime
(``fusionedge.sdk.evaluate``), then times batch-1 inference of all variants **interleaved in one loop**
(one warm session each, same input), so the ratios are measured side by side. ``--teacher`` adds an
untrained ``fusion_teacher`` exported with the student's geometry (latency and size only: an untrained
model has no meaningful accuracy, and QAT needs a trained checkpoint); ``--teacher-checkpoint`` adds a
trained teacher instead (``fusionedge report`` trains one) with every row. ``--checkpoint``/``--train-data``
add INT8-QAT (one epoch of fake-quant fine-tuning, then the same ``quantize_static`` as PTQ);
``--harsh`` adds weights on a 4-bit grid (W4A8), under PTQ and QAT. ``--profile-ops`` lists the operators that dominate each variant's
time (ONNX Runtime profiling).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from fusionedge.export.fp16 import fp16_bundle
from fusionedge.export.quantize import QuantizeConfig, quantize_bundle
from fusionedge.training.qat import QATConfig
from fusionedge.sdk.bundle import MODEL_NAME, load_bundle


def _session(path: Path, threads: int | None, profile: str | None = None):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.log_severity_level = 3
    o.inter_op_num_threads = 1
    if threads:
        o.intra_op_num_threads = threads
    if profile:
        o.enable_profiling = True
        o.profile_file_prefix = profile
    return ort.InferenceSession(str(path), sess_options=o, providers=["CPUExecutionProvider"])


def _feeds(bundle_dir: Path) -> dict[str, np.ndarray]:
    inputs, _ = load_bundle(bundle_dir).golden()
    return {k: np.ascontiguousarray(v[:1]) for k, v in inputs.items()}


def time_side_by_side(variants: dict[str, Path], runs: int, threads: int | None) -> dict[str, dict]:
    """Batch-1 latency (ms) of each variant's model.onnx, timed interleaved in one loop."""
    sessions = {k: _session(p / MODEL_NAME, threads) for k, p in variants.items()}
    feeds = {k: _feeds(p) for k, p in variants.items()}
    for k, s in sessions.items():  # warm-up
        for _ in range(5):
            s.run(None, feeds[k])
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: {"p50_ms": float(np.percentile(v, 50)), "p90_ms": float(np.percentile(v, 90))}
            for k, v in times.items()}


def op_breakdown(model_dir: Path, runs: int, threads: int | None, top: int = 6) -> list[tuple[str, float]]:
    """Share of node time by operator type, from an ONNX Runtime profile of ``runs`` batch-1 calls."""
    with tempfile.TemporaryDirectory() as work:
        s = _session(model_dir / MODEL_NAME, threads, profile=str(Path(work) / "prof"))
        f = _feeds(model_dir)
        for _ in range(runs):
            s.run(None, f)
        events = json.loads(Path(s.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e.get("args", {}).get("op_name", "?")] += e["dur"]
    total = sum(per_op.values()) or 1.0
    return [(op, round(100 * d / total, 1)) for op, d in sorted(per_op.items(), key=lambda x: -x[1])[:top]]


def export_teacher(student: Path, out: Path) -> Path:
    """Export an untrained fusion_teacher with the student bundle's geometry and labels."""
    import torch

    from fusionedge.export.pipeline import export_model
    from fusionedge.training.models.registry import create_model

    b = load_bundle(student)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    labels = {k: list(v) for k, v in b.labels.items()}
    model = create_model("fusion_teacher", num_events=len(labels["events"]),
                         num_audio_tags=len(labels["audio_tags"]), num_objects=len(labels["objects"])).eval()
    info = {"model_name": "fusion_teacher", "model_config": model.config.to_dict(),
            "geometry": b.geometry.to_dict(), "labels": labels, "metrics": {}, "epoch": 0}
    return export_model(model, info, out, name="fusion_teacher-untrained", overwrite=True, progress=False)


#: The harsher setting where PTQ loses accuracy: weights on a 4-bit grid (W4A8, stored as int8), per channel.
HARSH = QuantizeConfig(profile="cpu", weight_bits=4)


def build_variants(bundle: Path, work: Path, calibration: str, *, checkpoint: str | None = None,
                   train_data: str | None = None, harsh: bool = False, qat_epochs: int = 1,
                   qat_limit: int | None = None) -> dict[str, Path]:
    """FP32 (the bundle), FP16, INT8-PTQ and — with a checkpoint and training data — INT8-QAT variants.

    ``harsh`` adds the W4A8 setting (4-bit weight grid) under PTQ and QAT, where PTQ loses accuracy.
    """
    work.mkdir(parents=True, exist_ok=True)
    v = {"FP32": bundle}
    v["FP16"] = fp16_bundle(bundle, work / "fp16", overwrite=True)
    v["INT8-PTQ"] = quantize_bundle(bundle, work / "int8", calibration, config=QuantizeConfig(profile="cpu"),
                                    overwrite=True)
    settings = [("", QATConfig())] + ([(" W4", QATConfig(weight_bits=HARSH.weight_bits))] if harsh else [])
    if harsh:
        v["INT8-PTQ W4"] = quantize_bundle(bundle, work / "int8-w4", calibration, config=HARSH, overwrite=True)
    if checkpoint and train_data:
        from dataclasses import replace

        from fusionedge.export.qat import qat_to_bundle

        for suffix, cfg in settings:
            folder = work / ("int8-qat-w4" if suffix else "int8-qat")
            v["INT8-QAT" + suffix] = qat_to_bundle(checkpoint, train_data, calibration, folder,
                                                   replace(cfg, epochs=qat_epochs), limit=qat_limit,
                                                   overwrite=True, progress=False)
    return v


def evaluate_variant(path: Path, data: str) -> dict[str, float]:
    from fusionedge.sdk.evaluate import evaluate
    from fusionedge.sdk.perception import Perception

    with Perception.load(path, ["onnxruntime"]) as p:
        m = evaluate(p, data, progress=False)
    return {"event_accuracy": m["event_accuracy"], "detection_map50": m["detection_map50"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--bundle", required=True, help="the FP32 student bundle")
    ap.add_argument("--calibration", required=True, help="data-set manifest for INT8 calibration")
    ap.add_argument("--validation", help="labelled data-set manifest for accuracy (omit: no accuracy)")
    ap.add_argument("--teacher", action="store_true", help="add an untrained fusion_teacher (size, latency)")
    ap.add_argument("--teacher-checkpoint", default=None,
                    help="a trained teacher checkpoint (e.g. from `fusionedge report`): all rows, QAT included")
    ap.add_argument("--checkpoint", default=None, help="the student's training checkpoint (enables INT8-QAT)")
    ap.add_argument("--train-data", default=None, help="training data-set manifest for QAT fine-tuning")
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--qat-limit", type=int, default=640, help="training samples for QAT fine-tuning")
    ap.add_argument("--harsh", action="store_true",
                    help="add W4A8 (4-bit weight grid) PTQ and QAT rows (where PTQ loses accuracy)")
    ap.add_argument("--work", default=None, help="folder for the variant bundles (default: a temp folder)")
    ap.add_argument("--runs", type=int, default=200, help="timed batch-1 calls per variant")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all)")
    ap.add_argument("--profile-ops", action="store_true", help="print the dominant operators per variant")
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    args = ap.parse_args(argv)

    work = Path(args.work or tempfile.mkdtemp(prefix="precision-table-"))
    models = {"fusion_student": Path(args.bundle)}
    checkpoints = {"fusion_student": args.checkpoint}
    if args.teacher_checkpoint:
        from fusionedge.export import export_checkpoint

        (work / "teacher").mkdir(parents=True, exist_ok=True)
        models["fusion_teacher"] = export_checkpoint(args.teacher_checkpoint, work / "teacher" / "fp32",
                                                     overwrite=True, progress=False)
        checkpoints["fusion_teacher"] = args.teacher_checkpoint
    elif args.teacher:
        models["fusion_teacher (untrained)"] = export_teacher(Path(args.bundle), work / "teacher" / "fp32")
    rows = []
    all_variants: dict[str, Path] = {}
    for model, bundle in models.items():
        student = model == "fusion_student"
        variants = build_variants(bundle, work / model.split()[0], args.calibration,
                                  checkpoint=checkpoints.get(model), train_data=args.train_data,
                                  harsh=args.harsh and student, qat_epochs=args.qat_epochs, qat_limit=args.qat_limit)
        for kind, path in variants.items():
            size = (path / MODEL_NAME).stat().st_size
            row = {"model": model, "variant": kind, "size_bytes": size}
            if args.validation and "untrained" not in model:
                row.update(evaluate_variant(path, args.validation))
            rows.append(row)
            all_variants[f"{model}|{kind}"] = path
    lat = time_side_by_side(all_variants, args.runs, args.threads)
    for row in rows:
        key = f"{row['model']}|{row['variant']}"
        row.update(lat[key])
        fp32 = next(r for r in rows if r["model"] == row["model"] and r["variant"] == "FP32")
        row["size_vs_fp32"] = round(row["size_bytes"] / fp32["size_bytes"], 3)
        row["speedup_vs_fp32"] = round(lat[f"{row['model']}|FP32"]["p50_ms"] / row["p50_ms"], 2)
        if args.profile_ops:
            row["top_ops_pct"] = op_breakdown(all_variants[key], 30, args.threads)

    print("| model | variant | size (KB) | size/FP32 | event acc | det mAP@0.5 | p50 ms | p90 ms | speedup |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        acc = f"{r['event_accuracy']:.4f}" if "event_accuracy" in r else "n/a"
        det = f"{r['detection_map50']:.4f}" if "detection_map50" in r else "n/a"
        print(f"| {r['model']} | {r['variant']} | {r['size_bytes'] / 1024:.0f} | {r['size_vs_fp32']:.2f} | {acc} | "
              f"{det} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['speedup_vs_fp32']:.2f}x |")
    if args.profile_ops:
        for r in rows:
            print(f"{r['model']} {r['variant']}: " + ", ".join(f"{op} {p}%" for op, p in r["top_ops_pct"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
