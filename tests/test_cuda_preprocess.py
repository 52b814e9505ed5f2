"""CUDA frame preprocessing into the engine's input binding, tested around the GPU.

Everything but the kernel and the CUDA runtime is real here: the library discovery and its errors, the
resize taps as uploaded (layout and caching), the byte offsets of each batch slot and clip frame in the
input binding, each camera's ring, the decision between GPU and CPU and its log line, and a two-camera
stream through the device path. The seam is faked where only a GPU could run it: ``FakeCuda`` is the
CUDA runtime with "device" memory in host memory (copies are memmove), and ``FakeKernel`` computes what
native/preprocess.cu computes, from the uploaded frame and taps at the pointers it is given. The real
kernel runs against the NumPy reference in ``test_real_kernel_matches_the_reference`` where a GPU and
the library exist (scripts/device_check.py does the same, with timings, on the device machine).
"""

from __future__ import annotations

import _ctypes
import ctypes
import functools
import logging
from pathlib import Path

import numpy as np
import pytest
from _toy_model import TOY_GEOMETRY, shared_toy_bundle
from fusionedge.sdk import Perception
from fusionedge.sdk import cuda_preprocess as cp
from fusionedge.sdk.backends.base import DeviceInput
from fusionedge.sdk.backends.onnxruntime import OnnxRuntimeBackend
from fusionedge.sdk.backends.tensorrt import HostDeviceBuffer, TensorRTBackend
from fusionedge.sdk.errors import BackendError, InputError
from fusionedge.sdk.preprocess import _resize_taps, nv12_to_rgb_reference, preprocess_frame_reference
from fusionedge.sdk.spec import InputGeometry
from fusionedge.sdk.streaming import CallbackSink, MultiPipeline, PipelineConfig

G = InputGeometry(clip_frames=3, height=24, width=40, clip_seconds=0.1)


class FakeCuda:
    """The CudaRuntime calls, with device memory in host memory: a copy is a memmove."""

    name = "fake"

    def __init__(self) -> None:
        self.live: dict[int, np.ndarray] = {}
        self.mallocs = 0
        self.copies: list[tuple[str, int, int, int]] = []

    def _alloc(self, nbytes: int) -> int:
        arr = np.zeros(max(nbytes, 1), np.uint8)
        self.live[arr.ctypes.data] = arr
        self.mallocs += 1
        return arr.ctypes.data

    malloc_host = malloc = _alloc

    def free(self, ptr: int) -> None:
        del self.live[ptr]

    free_host = free

    def stream_create(self) -> object:
        return object()

    def stream_handle(self, stream: object) -> int:
        return id(stream)

    def stream_destroy(self, stream: object) -> None:
        pass

    def synchronize(self, stream: object) -> None:
        pass

    def _copy(self, kind: str, dst: int, src: int, nbytes: int, stream: object) -> None:
        self.copies.append((kind, dst, src, nbytes))
        ctypes.memmove(dst, src, nbytes)

    htod_async = functools.partialmethod(_copy, "htod")
    dtoh_async = functools.partialmethod(_copy, "dtoh")
    dtod_async = functools.partialmethod(_copy, "dtod")


def _read(ptr: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer((ctypes.c_ubyte * n).from_address(ptr), np.uint8).view(dtype).reshape(shape).copy()


class FakeKernel:
    """native/preprocess.cu's arithmetic in NumPy, reading everything from the pointers it is handed."""

    path = Path("libfake_cuda.so")

    def __init__(self) -> None:
        self.launches = 0

    def launch(self, *, src, h, w, color, ys, wy, ky, xs, wx, kx, mean, std, dst, oh, ow, stream) -> None:
        self.launches += 1
        if color == "nv12":
            rgb = nv12_to_rgb_reference(_read(src, (h * 3 // 2, w), np.uint8))
        else:
            rgb = _read(src, (h, w, 3), np.uint8).astype(np.float64)
            rgb = rgb[..., ::-1] if color == "bgr" else rgb
        rows = _read(ys, (oh,), np.int32)[:, None] + np.arange(ky)
        cols = _read(xs, (ow,), np.int32)[:, None] + np.arange(kx)
        x = np.einsum("yi,yiwc->ywc", _read(wy, (oh, ky), np.float32), rgb[rows])
        x = np.einsum("xj,yxjc->yxc", _read(wx, (ow, kx), np.float32), x[:, cols])
        y = (x / 255.0 - np.asarray(mean)) / np.asarray(std)
        out = np.ascontiguousarray(y.transpose(2, 0, 1), np.float32)
        ctypes.memmove(dst, out.ctypes.data, out.nbytes)


class BindingBackend:
    """A backend whose video input lives in (fake) device memory; it returns what the binding holds."""

    name = "binding"

    def __init__(self, cuda: FakeCuda, batch: int = 4) -> None:
        shape = (batch, G.clip_frames, 3, G.height, G.width)
        self.buffer = HostDeviceBuffer(cuda, shape, np.dtype(np.float32))
        self.binding = DeviceInput("video", self.buffer.device, shape, np.dtype(np.float32), cuda, cuda.stream_create())

    def device_input(self, name: str) -> DeviceInput | None:
        return self.binding if name == "video" else None

    def infer_on_device(self, feeds, on_device):
        return {"video": _read(self.binding.pointer, on_device["video"], np.float32), **feeds}


def _frame(h: int, w: int, seed: int, color: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if color == "nv12":
        return rng.integers(16, 236, (h * 3 // 2, w), dtype=np.uint8)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------ the library


def test_library_is_found_by_the_variable_or_beside_the_package_and_each_failure_says_why(tmp_path, monkeypatch):
    with pytest.raises(cp.CudaPreprocessUnavailable, match=r"FUSIONEDGE_CUDA_LIB=.*nope\.so: no such file"):
        cp.library_path({cp.ENV_VAR: str(tmp_path / "nope.so")})
    folders = cp.library_folders()
    assert folders[0] == Path(cp.__file__).parent  # and beside the native extension, where CMake puts it
    if not any((f / cp.LIBRARY_NAME).is_file() for f in folders):
        with pytest.raises(cp.CudaPreprocessUnavailable, match=r"libfusionedge_cuda\.so is not built in .*FUSIONEDGE_CUDA_LIB"):
            cp.load_kernel({})
    text = tmp_path / "libfusionedge_cuda.so"
    text.write_text("not a shared library")
    monkeypatch.setattr(cp, "library_folders", lambda: [tmp_path / "src", tmp_path])
    assert cp.library_path({}) == text  # the second folder has it
    monkeypatch.undo()
    assert cp.library_path({cp.ENV_VAR: str(text)}) == text
    with pytest.raises(cp.CudaPreprocessUnavailable, match="cannot load"):
        cp.load_kernel({cp.ENV_VAR: str(text)})
    other = _ctypes.__file__  # a real shared library without the function
    with pytest.raises(cp.CudaPreprocessUnavailable, match="has no fusionedge_preprocess_frame_cuda"):
        cp.PreprocessKernel(other)


# ------------------------------------------------------------------------------ taps and offsets


def test_taps_are_uploaded_once_per_size_pair_in_the_kernels_layout():
    cuda = FakeCuda()
    taps = cp.DeviceTaps(cuda)
    axis = taps.get(720, 96, None)
    starts, weights = _resize_taps(720, 96)
    assert axis.k == weights.shape[1] == 8  # 720 -> 96 covers 7.5 inputs per output: 8 taps
    assert np.array_equal(_read(axis.starts, (96,), np.int32), starts)  # int32 (n_out,)
    assert np.array_equal(_read(axis.taps, (96, axis.k), np.float32), weights)  # float32 (n_out, K), row-major
    before = cuda.mallocs
    assert taps.get(720, 96, None) == axis and cuda.mallocs == before  # cached on the device
    grow = taps.get(20, 48, None)  # upsampling: 2 bilinear taps
    assert grow.k == 2 and len(taps) == 2
    assert np.array_equal(_read(grow.taps, (48, 2), np.float32), _resize_taps(20, 48)[1])
    taps.free()
    assert cuda.live == {}


def test_input_binding_offsets_per_batch_slot_and_clip_frame():
    shape = (8, 4, 3, 96, 160)
    b = DeviceInput("video", 1 << 20, shape, np.dtype(np.float32), None, None)
    frame = 3 * 96 * 160 * 4
    assert b.frame_bytes == frame and b.sample_bytes == 4 * frame
    assert b.offset(0) == 0 and b.offset(1) == 4 * frame and b.offset(7, 3) == 7 * 4 * frame + 3 * frame
    assert b.address(2, 1) == (1 << 20) + 9 * frame
    for bad in ((8, None), (-1, None), (0, 4), (0, -1)):
        with pytest.raises(BackendError, match="slot|frame"):
            b.offset(*bad)


def test_tensorrt_backend_hands_out_its_input_buffers_not_its_outputs():
    cuda = FakeCuda()
    trt = TensorRTBackend()
    shapes = {"video": (8, 4, 3, 96, 160), "audio": (8, 16000), "logits": (8, 5)}
    trt._cuda, trt._stream, trt._inputs = cuda, cuda.stream_create(), ["video", "audio"]
    trt._buffers = {n: HostDeviceBuffer(cuda, s, np.dtype(np.float32)) for n, s in shapes.items()}
    trt._max_shapes = shapes
    video = trt.device_input("video")
    assert video.pointer == trt._buffers["video"].device and video.shape == shapes["video"]
    assert video.cuda is cuda and video.stream is trt._stream
    assert trt.device_input("logits") is None and trt.device_input("nope") is None
    assert OnnxRuntimeBackend().device_input("video") is None  # host memory only


# ------------------------------------------------------------------------------ frames into the binding


def test_frames_of_several_sizes_and_layouts_land_in_their_slots_as_the_reference_computes():
    cuda = FakeCuda()
    kernel, backend = FakeKernel(), BindingBackend(cuda)
    prep = cp.CudaFramePreprocessor(kernel, backend, backend.binding, G)
    cams = {"front": (72, 128, "bgr"), "rear": (20, 30, "rgb"), "side": (48, 64, "nv12")}
    frames, handles = {}, {}
    for name, (h, w, color) in cams.items():
        frames[name] = [_frame(h, w, 10 * i + len(name), color) for i in range(3)]
        handles[name] = [prep.preprocess(name, f, color=color, capacity=5) for f in frames[name]]
    assert kernel.launches == 9 and len(prep.taps) == 6  # one upload per size pair, not per frame
    order = ["side", "front", "rear"]  # slots follow the batch, not the order cameras were seen
    zeros = np.zeros((1, *backend.binding.shape[1:]), np.float32)  # a step without video
    out = prep.run([cp.DeviceClip(handles[n]) for n in order] + [zeros[0]],
                   {"audio": np.zeros((4, 8), np.float32)})
    video = out["video"]
    assert video.shape == (4, G.clip_frames, 3, G.height, G.width)
    for slot, name in enumerate(order):
        color = cams[name][2]
        for k, f in enumerate(frames[name]):
            np.testing.assert_allclose(video[slot, k], preprocess_frame_reference(f, G, color=color), atol=2e-5)
    assert np.array_equal(video[3], zeros[0])
    d2d = [c for c in cuda.copies if c[0] == "dtod"]
    assert len(d2d) == 9 and all(c[3] == backend.binding.frame_bytes for c in d2d)
    assert {c[1] for c in d2d} == {backend.binding.address(s, k) for s in range(3) for k in range(3)}
    prep.close()
    backend.buffer.free()
    assert cuda.live == {}


def test_a_frame_that_left_its_ring_is_refused_not_read():
    cuda = FakeCuda()
    backend = BindingBackend(cuda)
    prep = cp.CudaFramePreprocessor(FakeKernel(), backend, backend.binding, G)
    first = prep.preprocess("front", _frame(24, 40, 0, "bgr"), capacity=3)
    for i in range(3):
        last = prep.preprocess("front", _frame(24, 40, i + 1, "bgr"), capacity=3)
    prep.frame_address(last)
    with pytest.raises(BackendError, match="'front': frame 1 left the device ring of 3 frames"):
        prep.frame_address(first)
    with pytest.raises(InputError, match="NV12"):
        prep.preprocess("front", _frame(24, 40, 0, "bgr"), color="nv12", capacity=3)
    assert cp.ring_capacity(30, 2) == 37  # a 1 s window at 30 FPS + margin + steps in flight
    prep.close()


# ------------------------------------------------------------------------------ the decision


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def perception(bundle_dir):
    with Perception.load(bundle_dir, backend_options={"onnxruntime": {"intra_op_threads": 1}}) as p:
        yield p


class _Perception:
    def __init__(self, backend, attribution=False) -> None:
        self.backend, self.attribution, self.geometry = backend, attribution, G


def test_where_video_is_preprocessed_and_why_logged_once(perception, caplog, tmp_path):
    backend = BindingBackend(FakeCuda())
    prep, why = cp.plan_device_preprocessing(_Perception(backend), kernel=FakeKernel())
    assert isinstance(prep, cp.CudaFramePreprocessor) and "libfake_cuda.so into the binding" in why
    prep.close()
    assert cp.plan_device_preprocessing(_Perception(backend, attribution=True), kernel=FakeKernel()) == (
        None, "attribution withholds each sensor on host copies of the inputs")
    other = _Perception(backend)
    other.geometry = InputGeometry(clip_frames=3, height=48, width=40)  # not the binding's frame size
    prep, why = cp.plan_device_preprocessing(other, kernel=FakeKernel())
    assert prep is None and "frames are (3, 24, 40), the geometry says (3, 48, 40)" in why
    missing = {cp.ENV_VAR: str(tmp_path / "none.so")}
    prep, why = cp.plan_device_preprocessing(_Perception(backend), environ=missing)
    assert prep is None and why.startswith("FUSIONEDGE_CUDA_LIB=") and why.endswith("no such file")
    # the ONNX Runtime backend: the CPU path, its reason logged once however many streams start
    cp._logged.clear()
    with caplog.at_level(logging.INFO, logger="fusionedge.sdk.cuda_preprocess"):
        for _ in range(2):
            multi = MultiPipeline(perception, cameras=[("front", "x.mp4")])
            assert multi.device is None
            assert multi.stats()["preprocessing"] == "cpu"
    lines = [r.getMessage() for r in caplog.records if r.name == "fusionedge.sdk.cuda_preprocess"]
    assert lines == ["video preprocessing on the CPU: the onnxruntime backend takes its video input from host memory"]
    with pytest.raises(BackendError, match="CUDA video preprocessing cannot run: the onnxruntime backend"):
        MultiPipeline(perception, cameras=[("front", "x.mp4")], preprocessing="cuda")
    with pytest.raises(InputError, match="preprocessing must be one of auto, cpu, cuda"):
        MultiPipeline(perception, cameras=[("front", "x.mp4")], preprocessing="gpu")


class DeviceOnnxBackend(OnnxRuntimeBackend):
    """ONNX Runtime reading its video input from a (fake) device binding: the device path on a CPU."""

    def _load_impl(self, model_path, io) -> None:
        super()._load_impl(model_path, io)
        self.cuda = FakeCuda()
        video = next(s for s in io.inputs if s.name == "video")
        shape = (io.batch_max, *video.shape[1:])
        self.buffer = HostDeviceBuffer(self.cuda, shape, np.dtype(np.float32))
        self.binding = DeviceInput("video", self.buffer.device, shape, np.dtype(np.float32), self.cuda, object())
        self.device_runs = 0

    def device_input(self, name):
        return self.binding if name == "video" else None

    def _infer_device_impl(self, feeds, on_device):
        self.device_runs += 1
        return self._infer_impl({**feeds, "video": _read(self.binding.pointer, on_device["video"], np.float32)})


def test_two_cameras_through_the_device_path_give_the_cpu_paths_results(bundle_dir, tmp_path, monkeypatch):
    from fusionedge.sdk.bundle import load_bundle
    from fusionedge.sdk.streaming import multi as multi_mod
    from test_streaming_pipeline import write_clip

    video, _ = write_clip(tmp_path, 1.0, seed=4)
    cams = [("front", str(video)), ("rear", str(video))]
    config = PipelineConfig(policy="offline", realtime=False)
    bundle = load_bundle(bundle_dir)
    backend = DeviceOnnxBackend(intra_op_threads=1).load(bundle.model_path, bundle.manifest)
    kernel = FakeKernel()
    monkeypatch.setattr(multi_mod, "plan_device_preprocessing",
                        functools.partial(cp.plan_device_preprocessing, kernel=kernel))
    runs = {}
    # one inference per camera too: the cameras' threads then take turns in the one binding
    for where, batched in (("cuda", True), ("cuda", False), ("cpu", True)):
        results = []
        perception = Perception(bundle, backend)
        multi = MultiPipeline(perception, cameras=cams, sinks=[CallbackSink(results.append)], config=config,
                              max_wait=0.05, preprocessing=where, batched=batched)
        summary = multi.run()
        assert summary["preprocessing"] == where and summary["dropped"] == 0
        runs[where, batched] = {(r.camera, r.index): r.result.scores for r in results}
    assert backend.device_runs >= 50 and kernel.launches == 2 * 2 * 20  # every frame once, on its camera's ring
    for key, scores in runs["cpu", True].items():
        for mode in (("cuda", True), ("cuda", False)):
            assert runs[mode].keys() == runs["cpu", True].keys() and len(runs[mode]) == 40
            assert np.allclose(list(runs[mode][key].values()), list(scores.values()), atol=1e-4), (mode, key)
    backend.close()


# ------------------------------------------------------------------------------ on a GPU


def _real_gpu_reason() -> str | None:
    try:
        kernel = cp.load_kernel()
    except cp.CudaPreprocessUnavailable as e:
        return f"no CUDA preprocessing library: {e}"
    try:
        from fusionedge.sdk.backends.tensorrt import CudaRuntime

        CudaRuntime().compute_capability(0)
    except Exception as e:  # noqa: BLE001 - any reason there is no usable GPU
        return f"no usable CUDA GPU: {type(e).__name__}: {e}"
    return None if kernel else "unreachable"


def test_real_kernel_matches_the_reference():
    reason = _real_gpu_reason()
    if reason is not None:
        pytest.skip(reason)
    from fusionedge.sdk.backends.tensorrt import CudaRuntime

    cuda = CudaRuntime()
    shape = (2, TOY_GEOMETRY.clip_frames, 3, TOY_GEOMETRY.height, TOY_GEOMETRY.width)
    buf = HostDeviceBuffer(cuda, shape, np.dtype(np.float32))
    stream = cuda.stream_create()
    binding = DeviceInput("video", buf.device, shape, np.dtype(np.float32), cuda, stream)

    class Readback:
        name = "readback"

        def infer_on_device(self, feeds, on_device):
            cuda.dtoh_async(buf.host, buf.device, buf.capacity, stream)
            cuda.synchronize(stream)
            return {"video": buf.host_view(on_device["video"]).copy()}

    prep = cp.CudaFramePreprocessor(cp.load_kernel(), Readback(), binding, TOY_GEOMETRY)
    try:
        frames = [_frame(72, 128, i, "bgr") for i in range(TOY_GEOMETRY.clip_frames)]
        clip = cp.DeviceClip([prep.preprocess("front", f, capacity=8) for f in frames])
        got = prep.run([clip], {})["video"][0]
        for k, f in enumerate(frames):
            np.testing.assert_allclose(got[k], preprocess_frame_reference(f, TOY_GEOMETRY, color="bgr"), atol=1e-4)
    finally:
        prep.close()
        cuda.stream_destroy(stream)
        buf.free()


class FakeContext:
    """TensorRT's execution context over FakeCuda memory: ``out[b] = sum(video[b]) + sum(audio[b])``."""

    def __init__(self, buffers) -> None:
        self.buffers, self.shapes, self.runs = buffers, {}, 0

    def set_input_shape(self, name, shape) -> None:
        self.shapes[name] = tuple(shape)

    def get_tensor_shape(self, name):
        return (self.shapes["video"][0], 1)

    def execute_async_v3(self, stream) -> bool:
        self.runs += 1
        video = _read(self.buffers["video"].device, self.shapes["video"], np.float32)
        audio = _read(self.buffers["audio"].device, self.shapes["audio"], np.float32)
        out = (video.reshape(len(video), -1).sum(1) + audio.sum(1)).astype(np.float32)[:, None]
        ctypes.memmove(self.buffers["out"].device, out.ctypes.data, out.nbytes)
        return True


def test_tensorrt_runs_a_batch_whose_video_is_already_in_its_binding():
    from fusionedge.sdk.backends.base import ModelIO, TensorSpec

    cuda = FakeCuda()
    trt = TensorRTBackend()
    shapes = {"video": (4, 2, 3, 4, 5), "audio": (4, 8), "out": (4, 1)}
    trt._buffers = {n: HostDeviceBuffer(cuda, s, np.dtype(np.float32)) for n, s in shapes.items()}
    trt._cuda, trt._stream, trt._max_shapes = cuda, cuda.stream_create(), shapes
    trt._inputs, trt._outputs, trt._context = ["video", "audio"], ["out"], FakeContext(trt._buffers)
    trt._io = ModelIO(inputs=(TensorSpec("video", ("batch", 2, 3, 4, 5), "float32"),
                              TensorSpec("audio", ("batch", 8), "float32")),
                      outputs=(TensorSpec("out", ("batch", 1), "float32"),), batch_max=4)
    trt._state = "loaded"
    binding = trt.device_input("video")
    video = np.arange(2 * 120, dtype=np.float32).reshape(2, 2, 3, 4, 5)
    for slot in range(2):  # what the preprocessing puts in place, frame by frame
        for k in range(2):
            ctypes.memmove(binding.address(slot, k), video[slot, k].ctypes.data, binding.frame_bytes)
    audio = np.ones((2, 8), np.float32)
    out = trt.infer_on_device({"audio": audio}, {"video": (2, 2, 3, 4, 5)})
    np.testing.assert_allclose(out["out"][:, 0], video.reshape(2, -1).sum(1) + 8)
    video_buffer = trt._buffers["video"].device
    assert not [c for c in cuda.copies if c[0] == "htod" and c[1] == video_buffer]  # no host copy of video
    assert [c[3] for c in cuda.copies if c[0] == "htod"] == [audio.nbytes]
    with pytest.raises(InputError, match="does not match"):
        trt.infer_on_device({"audio": audio}, {"video": (2, 2, 3, 4, 6)})
    with pytest.raises(InputError, match=r"batch sizes \[2, 3\]"):
        trt.infer_on_device({"audio": audio}, {"video": (3, 2, 3, 4, 5)})
    ort = OnnxRuntimeBackend()
    ort._state, ort._io = "loaded", trt._io
    with pytest.raises(BackendError, match="input 'video' is not taken from device memory"):
        ort.infer_on_device({"audio": audio}, {"video": (2, 2, 3, 4, 5)})


def test_the_built_library_binds_and_refuses_bad_arguments_before_touching_a_device():
    try:
        kernel = cp.load_kernel()
    except cp.CudaPreprocessUnavailable as e:
        pytest.skip(f"no CUDA preprocessing library built here: {e}")
    # the host side checks its arguments first (no GPU needed): null pointers are CUDA error 1
    with pytest.raises(BackendError, match=r"CUDA error 1 \(invalid argument\) for a 640x480 bgr frame"):
        kernel.launch(src=0, h=480, w=640, color="bgr", ys=0, wy=0, ky=5, xs=0, wx=0, kx=4, mean=(0.5,) * 3,
                      std=(0.25,) * 3, dst=0, oh=96, ow=160, stream=0)
