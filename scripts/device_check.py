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
5. **The CUDA frame preprocessing** (``native/preprocess.cu`` through ``fusionedge.sdk.cuda_preprocess``):
   the library beside the package or at ``$FUSIONEDGE_CUDA_LIB``, else compiled here with
   ``nvcc -shared -Xcompiler -fPIC``; random RGB, BGR and NV12 frames of several sizes go through the
   camera ring into an input binding and back, against the NumPy reference (max abs error), and the
   per-frame time (upload + kernel) against the CPU path (``preprocess_frame``).

Every section records ``ok``/``skipped`` with the reason: a machine without a GPU (or without
cuda-python) skips the GPU sections and exits 0. The exit status is 1 when a section that ran failed.
A readable line per section goes to stderr, the JSON summary to stdout (and ``--out``).
``--training-device cpu`` runs section 3 on the CPU (a dry run of the script where there is no GPU);
``--sections`` runs only the named ones.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def gpu_unavailable() -> str | None:
    """Why the CUDA sections cannot run here (no cuda-python, no GPU), or None when they can."""
    try:
        from fusionedge.sdk.backends.tensorrt import CudaRuntime

        cuda = CudaRuntime()
    except Exception as e:  # noqa: BLE001 - the reason is the result
        return str(e)
    count = cuda._rt.cudaGetDeviceCount()
    if count[0] != cuda._rt.cudaError_t.cudaSuccess or count[1] < 1:
        return f"no CUDA GPU ({count[0]})"
    return None


def check_cuda_memory() -> dict:
    from fusionedge.sdk.backends.tensorrt import CudaRuntime, HostDeviceBuffer

    reason = gpu_unavailable()
    if reason is not None:
        return {"ok": None, "skipped": reason}
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


def _cuda_kernel(workdir: Path) -> tuple[object, str]:
    """The preprocessing kernel: the installed library, else one compiled here with nvcc."""
    from fusionedge.sdk.cuda_preprocess import CudaPreprocessUnavailable, PreprocessKernel, load_kernel

    try:
        return load_kernel(), "installed"
    except CudaPreprocessUnavailable as e:
        if shutil.which("nvcc") is None:
            raise CudaPreprocessUnavailable(f"{e}; and no nvcc to compile it") from e
    lib = workdir / "libfusionedge_cuda.so"
    base = ["nvcc", "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-cudart", "static",
            str(REPO / "native" / "preprocess.cu"), "-o", str(lib)]
    for arch in (["-arch=native"], []):  # -arch=native needs CUDA 11.6+
        proc = subprocess.run(base[:1] + arch + base[1:], capture_output=True, text=True, timeout=180, check=False)
        if proc.returncode == 0:
            return PreprocessKernel(lib), "compiled with nvcc " + (" ".join(arch) or "(default arch)")
    raise RuntimeError(f"nvcc failed: {proc.stderr.strip()[-500:]}")


def check_cuda_preprocess(repeats: int = 30) -> dict:
    """The CUDA kernel against the NumPy reference on random frames, and its time against the CPU path."""
    reason = gpu_unavailable()
    if reason is not None:
        return {"ok": None, "skipped": reason}
    from fusionedge.sdk.backends.base import DeviceInput
    from fusionedge.sdk.backends.tensorrt import CudaRuntime, HostDeviceBuffer
    from fusionedge.sdk.cuda_preprocess import CudaFramePreprocessor, DeviceClip
    from fusionedge.sdk.preprocess import NATIVE_AVAILABLE, preprocess_frame, preprocess_frame_reference
    from fusionedge.sdk.spec import InputGeometry

    geometry = InputGeometry(clip_frames=4, height=96, width=160, clip_seconds=1.0)
    cuda = CudaRuntime()
    shape = (1, geometry.clip_frames, 3, geometry.height, geometry.width)
    buf = HostDeviceBuffer(cuda, shape, np.dtype(np.float32))
    stream = cuda.stream_create()
    binding = DeviceInput("video", buf.device, shape, np.dtype(np.float32), cuda, stream)

    class Readback:  # the engine's place: read the binding back to compare it
        name = "readback"

        def infer_on_device(self, feeds: dict, on_device: dict) -> dict:
            cuda.dtoh_async(buf.host, buf.device, buf.capacity, stream)
            cuda.synchronize(stream)
            return {"video": buf.host_view(on_device["video"]).copy()}

    rng = np.random.default_rng(0)
    cases = [(1280, 720, "bgr"), (1920, 1080, "nv12"), (640, 360, "rgb"), (320, 240, "bgr"), (160, 96, "nv12"),
             (100, 60, "rgb")]
    res: dict = {"cpu_path": "native" if NATIVE_AVAILABLE else "numpy", "geometry": "160x96", "cases": []}
    ok = True
    with tempfile.TemporaryDirectory(prefix="fusionedge-cuda-") as tmp:
        kernel, res["library"] = _cuda_kernel(Path(tmp))
        prep = CudaFramePreprocessor(kernel, Readback(), binding, geometry)
        try:
            for w, h, color in cases:
                rows = h * 3 // 2 if color == "nv12" else h
                frames = [rng.integers(0, 256, (rows, w) if color == "nv12" else (h, w, 3), dtype=np.uint8)
                          for _ in range(geometry.clip_frames)]
                name = f"{w}x{h}-{color}"
                clip = DeviceClip([prep.preprocess(name, f, color=color, capacity=8) for f in frames])
                got = prep.run([clip], {})["video"][0]
                err = max(float(np.abs(got[k] - preprocess_frame_reference(f, geometry, color=color)).max())
                          for k, f in enumerate(frames))
                gpu, cpu = [], []
                out = np.empty((3, geometry.height, geometry.width), np.float32)
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    prep.preprocess(name, frames[0], color=color, capacity=8)
                    gpu.append((time.perf_counter() - t0) * 1e3)
                    t0 = time.perf_counter()
                    preprocess_frame(frames[0], geometry, color=color, out=out)
                    cpu.append((time.perf_counter() - t0) * 1e3)
                case = {"frame": name, "max_abs_err": err, "gpu_ms_median": round(statistics.median(gpu), 4),
                        "cpu_ms_median": round(statistics.median(cpu), 4)}
                res["cases"].append(case)
                ok &= err <= 1e-4
        finally:
            prep.close()
            cuda.stream_destroy(stream)
            buf.free()
    res["ok"] = bool(ok)
    return res


def _line(name: str, r: dict) -> str:
    """One readable line per section."""
    if r.get("ok") is None:
        return f"{name}: skipped ({r.get('skipped')})"
    if "error" in r:
        return f"{name}: FAILED ({r['error']})"
    head = f"{name}: {'ok' if r['ok'] else 'FAILED'}"
    if name == "cuda_preprocess":
        cases = "; ".join(f"{c['frame']} err {c['max_abs_err']:.1e} gpu {c['gpu_ms_median']:.3f} ms "
                          f"cpu {c['cpu_ms_median']:.3f} ms" for c in r["cases"])
        return f"{head} ({r['library']}; {cases})"
    return head


SECTIONS = ("cuda_memory", "torch_gpu", "training", "tensorrt", "cuda_preprocess")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="FusionEdge GPU check")
    ap.add_argument("--checkpoint", default=None, help="a training checkpoint (default: seeded fusion_student)")
    ap.add_argument("--bundle", default=None, help="a bundle to build a TensorRT plan for (needs TensorRT)")
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})")
    ap.add_argument("--training-device", default="cuda", help="section 3's device (cpu: a dry run without a GPU)")
    args = ap.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    result = {}
    for name, fn in (("cuda_memory", check_cuda_memory), ("torch_gpu", lambda: check_torch_gpu(args.checkpoint)),
                     ("training", lambda: check_training(args.training_device)),
                     ("tensorrt", lambda: check_tensorrt(args.bundle)),
                     ("cuda_preprocess", check_cuda_preprocess)):
        if name not in chosen:
            continue
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as e:  # record and go on: one failing section must not hide the others
            result[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        result[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(_line(name, result[name]), file=sys.stderr, flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if any(r.get("ok") is False for r in result.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
