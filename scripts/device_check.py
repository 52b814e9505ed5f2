#!/usr/bin/env python
"""The GPU check: run once on a machine with a CUDA GPU; prints (and writes) JSON.

    python scripts/device_check.py [--checkpoint run/best.pt] [--bundle B] [--out $OUT/device_check.json]

1. **CUDA memory through the TensorRT backend's own code** (``fusionedge.sdk.backends.tensorrt``:
   ``CudaRuntime``, ``HostDeviceBuffer``): pinned host + device buffers, async H2D → D2D-free round trip
   H2D then D2H into a second buffer on one stream, byte-exact; then the same copies captured as a
   CUDA graph and replayed.
2. **The model on the GPU in PyTorch** FP32 and FP16 (autocast) vs the CPU FP32 reference on the
   same seeded inputs: max abs error and cosine per output.
3. **Training on the GPU** (the scale-out path): a tiny synthetic set; ``train`` with mixed precision
   (bf16 autocast, or fp16 + GradScaler) — finite losses, and the checkpoint it saved gives the same
   validation numbers on the CPU; exact resume in fp32 (2 epochs straight against 1 + resume, with
   deterministic kernels); distillation from that run's checkpoint; one epoch of self-supervised
   pretraining. NCCL needs one GPU per rank, so with one GPU the multi-process path stays with the
   CPU tests (gloo).
4. Where TensorRT is installed: build the bundle's plan and compare the
   ``tensorrt`` backend with the golden outputs.

Every section records ``ok``/``skipped`` with the reason; the exit status is 1 when a section that ran
failed. ``--training-device cpu`` runs section 3 on the CPU (a dry run of the script where there is no GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np


def check_cuda_memory() -> dict:
    from fusionedge.sdk.backends.tensorrt import CudaRuntime, HostDeviceBuffer

    cuda = CudaRuntime()
    shape = (32, 4, 3, 96, 160)
    src, dst = HostDeviceBuffer(cuda, shape, np.float32), HostDeviceBuffer(cuda, shape, np.float32)
    stream = cuda.stream_create()
    try:
        data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        src.host_view(shape)[...] = data
        nbytes = data.nbytes
        t0 = time.perf_counter()
        cuda.htod_async(src.device, src.host, nbytes, stream)
        cuda.dtoh_async(dst.host, src.device, nbytes, stream)
        cuda.synchronize(stream)
        copy_ms = (time.perf_counter() - t0) * 1e3
        exact = bool(np.array_equal(dst.host_view(shape), data))
        dst.host_view(shape)[...] = 0
        cuda.begin_capture(stream)
        cuda.htod_async(src.device, src.host, nbytes, stream)
        cuda.dtoh_async(dst.host, src.device, nbytes, stream)
        graph = cuda.end_capture(stream)
        src.host_view(shape)[...] = data * 2  # the replay must read the host buffer anew
        cuda.graph_launch(graph, stream)
        cuda.synchronize(stream)
        cuda.graph_destroy(graph)
        replay = bool(np.array_equal(dst.host_view(shape), data * 2))
    finally:
        cuda.stream_destroy(stream)
        src.free()
        dst.free()
    return {"ok": exact and replay, "bytes": nbytes, "roundtrip_exact": exact, "graph_replay_exact": replay,
            "roundtrip_ms": round(copy_ms, 3), "compute_capability": cuda.compute_capability(0)}


def check_torch_gpu(checkpoint: str | None) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"ok": None, "skipped": "torch.cuda.is_available() is False"}
    if checkpoint:
        from fusionedge.training.checkpoint import load_checkpoint

        model, _ = load_checkpoint(checkpoint)
    else:
        from fusionedge.training.models.registry import create_model

        torch.manual_seed(0)
        model = create_model("fusion_student")
    model = model.eval()
    video, audio, presence = model.example_inputs(batch=4)
    with torch.no_grad():
        ref = [t.float() for t in model(video, audio, presence)]
        gpu = model.cuda()
        args = (video.cuda(), audio.cuda(), presence.cuda())
        fp32 = [t.float().cpu() for t in gpu(*args)]
        with torch.autocast("cuda", dtype=torch.float16):
            fp16 = [t.float().cpu() for t in gpu(*args)]
    res: dict = {"device": torch.cuda.get_device_name(0)}
    ok = True
    for label, outs, min_cos in (("fp32", fp32, 0.99999), ("fp16", fp16, 0.999)):
        per = []
        for r, g in zip(ref, outs):
            cos = float(torch.nn.functional.cosine_similarity(r.flatten(), g.flatten(), dim=0))
            per.append({"max_abs": float((r - g).abs().max()), "cosine": cos})
            ok &= cos >= min_cos
        res[label] = per
    res["ok"] = ok
    return res


def check_training(device: str) -> dict:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return {"ok": None, "skipped": "torch.cuda.is_available() is False"}
    with tempfile.TemporaryDirectory(prefix="fusionedge-device-") as tmp:
        return _train_checks(device, Path(tmp))


def _train_checks(device: str, root: Path) -> dict:
    import torch

    from fusionedge.sdk.datamanifest import read_manifest
    from fusionedge.sdk.spec import InputGeometry
    from fusionedge.training.checkpoint import load_checkpoint, read_checkpoint
    from fusionedge.training.dataset import Labels, load_clips
    from fusionedge.training.pretrain import PretrainConfig, pretrain
    from fusionedge.training.synth.generate import generate_dataset
    from fusionedge.training.train import TrainConfig, evaluate_model, train

    data = generate_dataset(root / "data", 48, 0, progress=False)
    base = dict(data=data, val_data=data, max_val_samples=16, epochs=2, batch_size=8, device=device,
                progress=False, report=False, num_workers=4, seed=5)
    res: dict = {"device": device}
    ok = True

    t0 = time.perf_counter()
    amp = train(TrainConfig(out=root / "amp", amp=True, **base))
    res["amp_seconds"] = round(time.perf_counter() - t0, 2)
    losses = [h["train"]["loss"] for h in amp["history"]]
    res["amp_dtype"] = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device != "cpu" else None
    res["amp_train_loss"] = losses
    ok &= all(math.isfinite(v) for v in losses)
    # the checkpoint trained on the GPU, loaded and evaluated on the CPU: the validation numbers it saved
    model, _ = load_checkpoint(root / "amp" / "best.pt")
    val = load_clips(read_manifest(data)[:16], InputGeometry(), Labels(), progress=False)
    on_cpu = evaluate_model(model, val, device="cpu")
    saved = read_checkpoint(root / "amp" / "best.pt")["metrics"]
    res["best_event_accuracy"] = {"saved": saved["event_accuracy"], "cpu": on_cpu["event_accuracy"]}
    res["best_val_loss"] = {"saved": saved["loss"], "cpu": on_cpu["loss"]}
    ok &= abs(saved["loss"] - on_cpu["loss"]) <= 1e-3 * max(1.0, abs(saved["loss"]))

    # exact resume in fp32 with deterministic kernels
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        train(TrainConfig(out=root / "straight", amp=False, **base))
        train(TrainConfig(out=root / "split", amp=False, stop_after_epoch=1, **base))
        train(TrainConfig(out=root / "split", amp=False, resume=root / "split" / "last.pt", **base))
    finally:
        torch.use_deterministic_algorithms(False)
    a = read_checkpoint(root / "straight" / "last.pt")["state_dict"]
    b = read_checkpoint(root / "split" / "last.pt")["state_dict"]
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    res["resume"] = {"bit_exact": all(torch.equal(a[k], b[k]) for k in a), "max_abs_diff": diff}
    ok &= diff <= 1e-5

    # distillation on the GPU, the fp32 run as its teacher
    dist_run = train(TrainConfig(out=root / "distilled", teacher=root / "straight" / "best.pt", **base))
    res["distill"] = {"train_loss": [h["train"]["loss"] for h in dist_run["history"]],
                      "flops_ratio": dist_run["distillation"]["flops_ratio"]}
    ok &= all(math.isfinite(v) for v in res["distill"]["train_loss"])

    t0 = time.perf_counter()
    pre = pretrain(PretrainConfig(data=data, val_data=data, out=root / "pretrain", epochs=1, batch_size=16,
                                  device=device, progress=False, num_workers=4, max_val_samples=16))
    res["pretrain"] = {"seconds": round(time.perf_counter() - t0, 2),
                       "train_loss": pre["history"][-1]["train"]["loss"],
                       "view_top1": pre["history"][-1]["val"].get("view_top1")}
    ok &= math.isfinite(res["pretrain"]["train_loss"])
    res["ok"] = bool(ok)
    return res


def check_tensorrt(bundle: str | None) -> dict:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return {"ok": None, "skipped": "tensorrt is not installed on this machine"}
    if bundle is None:
        return {"ok": None, "skipped": "no --bundle given"}
    from fusionedge.export.compare import compare
    from fusionedge.sdk.engine_build import build_engine

    plan = build_engine(bundle)
    report = compare(bundle, ["onnxruntime", "tensorrt"])
    return {"ok": report.ok, "plan": str(plan), "compare": report.to_dict()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="FusionEdge GPU check")
    ap.add_argument("--checkpoint", default=None, help="a training checkpoint (default: seeded fusion_student)")
    ap.add_argument("--bundle", default=None, help="a bundle to build a TensorRT plan for (needs TensorRT)")
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    ap.add_argument("--training-device", default="cuda", help="section 3's device (cpu: a dry run without a GPU)")
    args = ap.parse_args(argv)
    result = {}
    for name, fn in (("cuda_memory", check_cuda_memory), ("torch_gpu", lambda: check_torch_gpu(args.checkpoint)),
                     ("training", lambda: check_training(args.training_device)),
                     ("tensorrt", lambda: check_tensorrt(args.bundle))):
        try:
            result[name] = fn()
        except Exception as e:  # record and go on: one failing section must not hide the others
            result[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if any(r.get("ok") is False for r in result.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
