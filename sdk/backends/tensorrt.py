"""TensorRT backend: runs a device-built plan from ``bundle/engines/`` — only one whose fingerprint matches.

Loading computes this device's :class:`~fusionedge.sdk.engine_fingerprint.EngineFingerprint` for the
bundle (compute capability, TensorRT version, L4T release, precision, shape profile, ONNX sha256), looks
for ``engines/<key>.plan`` and checks its sidecar; a plan for another GPU, TensorRT version, precision,
profile or model is refused with the reason (:class:`EngineMismatchError`), never deserialized. Build
plans with ``fusionedge engine build`` (:mod:`fusionedge.sdk.engine_build`).

Memory: one pinned host buffer and one device buffer per I/O tensor, sized for the profile's max batch,
allocated once at load through cuda-python (``cuda.bindings.runtime``, as TensorRT's samples do) or, with
``cuda_api="pycuda"``, pycuda. :meth:`TensorRTBackend.device_input` hands an input's device buffer to a
producer that fills it on the GPU (the CUDA frame preprocessing of several cameras), and
:meth:`~fusionedge.sdk.backends.base.Backend.infer_on_device` then skips that input's host copy.
Inference uses the named-tensor API: ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3`` on
one CUDA stream, async copies in and out, one synchronize. With ``cuda_graph=True`` the copy-in → execute
→ copy-out sequence is captured into a CUDA graph per batch size (after one ordinary run, which TensorRT
needs after a shape change) and replayed.

``tensorrt`` and ``cuda`` are imported when a model is loaded, never at module import.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fusionedge.sdk.backends.base import Backend, DeviceInput, ModelIO
from fusionedge.sdk.engine_fingerprint import (
    EngineMismatchError,
    NoEngineError,
    check_fingerprint,
    device_fingerprint,
    plan_paths,
)
from fusionedge.sdk.errors import BackendError

__all__ = ["TensorRTBackend", "CudaError", "CudaRuntime", "PycudaRuntime", "HostDeviceBuffer", "cuda_runtime"]

log = logging.getLogger(__name__)


class CudaError(BackendError):
    """A CUDA runtime call failed (the message names the call and the CUDA error)."""


class CudaRuntime:
    """The few CUDA runtime calls the backend needs, through cuda-python (``cuda.bindings.runtime``)."""

    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:  # cuda-python < 12.6 layout
            try:
                from cuda import cudart  # type: ignore[no-redef]
            except ImportError as e:
                raise BackendError(f"cuda-python is not installed: {e}") from e
        self._rt = cudart

    def _check(self, result: Any, call: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{call} failed: {err}")
        return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)

    def malloc_host(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))

    def free_host(self, ptr: int) -> None:
        self._check(self._rt.cudaFreeHost(ptr), "cudaFreeHost")

    def free(self, ptr: int) -> None:
        self._check(self._rt.cudaFree(ptr), "cudaFree")

    def stream_create(self) -> Any:
        return self._check(self._rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_destroy(self, stream: Any) -> None:
        self._check(self._rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def synchronize(self, stream: Any) -> None:
        self._check(self._rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def htod_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync(H2D)")

    def dtoh_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync(D2H)")

    def dtod_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self._check(self._rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync(D2D)")

    def begin_capture(self, stream: Any) -> None:
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self._rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream: Any) -> Any:
        graph = self._check(self._rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            return self._check(self._rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            self._rt.cudaGraphDestroy(graph)

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        self._check(self._rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def graph_destroy(self, graph_exec: Any) -> None:
        self._rt.cudaGraphExecDestroy(graph_exec)

    def compute_capability(self, device: int = 0) -> str:
        props = self._check(self._rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        return f"{props.major}.{props.minor}"


class PycudaRuntime(CudaRuntime):
    """The same calls through pycuda (for device images that ship it instead of cuda-python).

    CUDA-graph capture is not offered through pycuda here (``cuda_graph=True`` needs cuda-python).
    """

    name = "pycuda"

    def __init__(self) -> None:  # noqa: D107 - no super(): pycuda replaces cudart entirely
        try:
            import pycuda.autoinit  # noqa: F401  (creates the context)
            import pycuda.driver as drv
        except ImportError as e:
            raise BackendError(f"pycuda is not installed: {e}") from e
        self._drv = drv
        self._keep: dict[int, Any] = {}

    def malloc_host(self, nbytes: int) -> int:
        arr = self._drv.pagelocked_empty(max(nbytes, 1), np.uint8)
        ptr = int(arr.ctypes.data)
        self._keep[ptr] = arr
        return ptr

    def malloc(self, nbytes: int) -> int:
        alloc = self._drv.mem_alloc(max(nbytes, 1))
        self._keep[int(alloc)] = alloc
        return int(alloc)

    def free_host(self, ptr: int) -> None:
        self._keep.pop(ptr, None)

    def free(self, ptr: int) -> None:
        alloc = self._keep.pop(ptr, None)
        if alloc is not None:
            alloc.free()

    def stream_create(self) -> Any:
        return self._drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_destroy(self, stream: Any) -> None:
        return None

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def htod_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        host = np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(src))
        self._drv.memcpy_htod_async(dst, host, stream)

    def dtoh_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        host = np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(dst))
        self._drv.memcpy_dtoh_async(host, src, stream)

    def dtod_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self._drv.memcpy_dtod_async(dst, src, nbytes, stream)

    def begin_capture(self, stream: Any) -> None:
        raise BackendError("CUDA-graph replay needs cuda-python; pass cuda_graph=False with pycuda")

    def compute_capability(self, device: int = 0) -> str:
        major, minor = self._drv.Device(device).compute_capability()
        return f"{major}.{minor}"


def cuda_runtime(name: str = "cuda-python") -> CudaRuntime:
    """Open the CUDA API named ``cuda-python`` or ``pycuda``.

    Raises:
        BackendError: an unknown name or the library is not installed.
    """
    if name == "cuda-python":
        return CudaRuntime()
    if name == "pycuda":
        return PycudaRuntime()
    raise BackendError(f"cuda_api must be 'cuda-python' or 'pycuda', got {name!r}")


class HostDeviceBuffer:
    """A pinned host buffer and a device buffer of the same size, for one tensor at its largest shape.

    Args:
        cuda: the CUDA API.
        shape: the largest shape the tensor takes.
        dtype: its NumPy dtype.
    """

    def __init__(self, cuda: CudaRuntime, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.cuda = cuda
        self.dtype = np.dtype(dtype)
        self.capacity = int(np.prod(shape)) * self.dtype.itemsize
        self.host = cuda.malloc_host(self.capacity)
        try:
            self.device = cuda.malloc(self.capacity)
        except BaseException:
            cuda.free_host(self.host)
            raise

    def host_view(self, shape: tuple[int, ...]) -> np.ndarray:
        """A NumPy array over the pinned host memory with ``shape`` (must fit)."""
        nbytes = int(np.prod(shape)) * self.dtype.itemsize
        if nbytes > self.capacity:
            raise BackendError(f"tensor of shape {shape} needs {nbytes} bytes, the buffer holds {self.capacity}")
        raw = (ctypes.c_ubyte * max(nbytes, 1)).from_address(self.host)
        return np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(self.dtype).reshape(shape)

    def free(self) -> None:
        if self.device:
            self.cuda.free(self.device)
            self.device = 0
        if self.host:
            self.cuda.free_host(self.host)
            self.host = 0


class TensorRTBackend(Backend):
    """Run a bundle's TensorRT plan from ``<bundle>/engines/`` (only one whose fingerprint matches).

    Args:
        device: the CUDA device index.
        cuda_api: ``cuda-python`` (default) or ``pycuda``.
        cuda_graph: capture and replay copy-in/execute/copy-out as a CUDA graph per batch size.
        plan: an explicit plan path (its fingerprint is still checked).
        build: ``"first"`` (default) builds the plan on load when this device has none (minutes on a
            Jetson; see :class:`~fusionedge.sdk.perception.Perception` for building in the background
            instead); ``"never"`` raises :class:`NoEngineError`.
        build_progress: show the build's progress on stderr.
    """

    name = "tensorrt"
    requires = ("tensorrt",)
    builds_engines = True

    def __init__(self, *, device: int = 0, cuda_api: str = "cuda-python", cuda_graph: bool = False,
                 plan: str | Path | None = None, build: str = "first", build_progress: bool = True) -> None:
        super().__init__()
        if cuda_api not in ("cuda-python", "pycuda"):
            raise BackendError(f"{self.name}: cuda_api must be 'cuda-python' or 'pycuda', got {cuda_api!r}")
        if build not in ("first", "never"):
            raise BackendError(f"{self.name}: build must be 'first' or 'never', got {build!r}")
        self.build = build
        self.build_progress = bool(build_progress)
        self.device = int(device)
        self.cuda_api = cuda_api
        self.cuda_graph = bool(cuda_graph)
        self.plan = Path(plan) if plan is not None else None
        self._cuda: CudaRuntime | None = None
        self._buffers: dict[str, HostDeviceBuffer] = {}
        self._graphs: dict[tuple, Any] = {}
        self._seen_batches: set[tuple] = set()
        self._max_shapes: dict[str, tuple[int, ...]] = {}
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self.fingerprint: Any = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reason = super().unavailable_reason()
        if reason is not None:
            return reason
        for module in ("cuda.bindings", "pycuda.driver"):
            try:
                __import__(module)
                return None
            except Exception:
                continue
        return f"{cls.name}: neither cuda-python (cuda.bindings) nor pycuda imports"

    def _find_plan(self, model_path: Path, manifest: Mapping[str, Any]) -> tuple[Path, Any]:
        cc = self._cuda.compute_capability(self.device)  # type: ignore[union-attr]
        expected = device_fingerprint(manifest, compute_capability=cc)
        engines = model_path.parent / "engines"
        plan = self.plan or plan_paths(engines, expected)[0]
        if not plan.is_file():
            others = sorted(engines.glob("*.plan")) if engines.is_dir() else []
            reasons = []
            for other in others:
                try:
                    check_fingerprint(other, expected)
                except EngineMismatchError as e:
                    reasons.append(str(e))
            detail = ("; other plans: " + " | ".join(reasons)) if reasons else ""
            raise NoEngineError(
                f"{self.name}: no plan for this device ({expected.key}) in {engines}{detail}; build one with "
                f"'fusionedge engine build --bundle {model_path.parent}'"
            )
        return plan, check_fingerprint(plan, expected)

    def _load_impl(self, model_path: Path, io: ModelIO) -> None:
        import tensorrt as trt

        from fusionedge.sdk.bundle import load_bundle

        manifest = load_bundle(model_path.parent, verify=False).manifest
        self._cuda = cuda_runtime(self.cuda_api)
        try:
            plan, self.fingerprint = self._find_plan(model_path, manifest)
        except NoEngineError:
            if self.build != "first" or self.plan is not None:
                raise
            from fusionedge.sdk.engine_build import build_engine

            log.warning("%s: no TensorRT plan for this device yet; building one now (minutes on a Jetson)",
                        model_path.parent)
            build_engine(model_path.parent, progress=self.build_progress)
            plan, self.fingerprint = self._find_plan(model_path, manifest)
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise BackendError(f"{self.name}: TensorRT could not deserialize {plan.name}")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if set(inputs) != set(io.input_names) or not set(io.output_names) <= set(names):
            raise BackendError(f"{self.name}: {plan.name} has tensors {names}, the manifest lists inputs "
                               f"{list(io.input_names)} and outputs {list(io.output_names)}")
        context = engine.create_execution_context()
        for spec in io.inputs:  # largest shapes, to size the buffers
            context.set_input_shape(spec.name, (io.batch_max, *spec.shape[1:]))
        try:
            for n in names:
                shape = tuple(int(d) for d in context.get_tensor_shape(n))
                self._max_shapes[n] = shape
                buf = HostDeviceBuffer(self._cuda, shape, np.dtype(trt.nptype(engine.get_tensor_dtype(n))))
                self._buffers[n] = buf
                context.set_tensor_address(n, buf.device)
            self._stream = self._cuda.stream_create()
        except BaseException:
            self._close_impl()
            raise
        self._engine, self._context, self._inputs = engine, context, inputs
        self._outputs = [n for n in names if n not in inputs]

    def device_input(self, name: str) -> DeviceInput | None:
        """Input ``name``'s device buffer (at the profile's max batch) and the stream inference runs on.

        A producer (the CUDA frame preprocessing) writes a batch straight into it on this stream, then
        calls :meth:`infer_on_device`; the input then makes no host round trip.
        """
        buf = self._buffers.get(name)
        if buf is None or name not in getattr(self, "_inputs", ()):
            return None
        return DeviceInput(name=name, pointer=int(buf.device), shape=self._max_shapes[name], dtype=buf.dtype,
                           cuda=self._cuda, stream=self._stream)

    def _enqueue(self, feeds: Mapping[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
        cuda = self._cuda
        for n in self._inputs:
            if n not in feeds:
                continue  # already in device memory (infer_on_device)
            buf = self._buffers[n]
            cuda.htod_async(buf.device, buf.host, int(np.prod(feeds[n].shape)) * buf.dtype.itemsize,  # type: ignore[union-attr]
                            self._stream)
        if not self._context.execute_async_v3(cuda.stream_handle(self._stream)):  # type: ignore[union-attr]
            raise BackendError(f"{self.name}: execute_async_v3 returned False")
        for n in self._outputs:
            buf = self._buffers[n]
            cuda.dtoh_async(buf.host, buf.device, int(np.prod(shapes[n])) * buf.dtype.itemsize, self._stream)  # type: ignore[union-attr]

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return self._run(feeds, {})

    def _infer_device_impl(self, feeds: dict[str, np.ndarray],
                           on_device: dict[str, tuple[int, ...]]) -> Mapping[str, np.ndarray]:
        return self._run(feeds, on_device)

    def _run(self, feeds: dict[str, np.ndarray], on_device: dict[str, tuple[int, ...]]) -> Mapping[str, np.ndarray]:
        """Copy the host ``feeds`` in (the ``on_device`` inputs are in place already), execute, copy out."""
        cuda = self._cuda
        shapes_in = [a.shape for a in feeds.values()] + list(on_device.values())
        batch = int(shapes_in[0][0])
        for n in self._inputs:
            if n in on_device:
                self._context.set_input_shape(n, on_device[n])
                continue
            arr = feeds[n]
            if arr.dtype != self._buffers[n].dtype:
                arr = arr.astype(self._buffers[n].dtype)
            self._context.set_input_shape(n, arr.shape)
            self._buffers[n].host_view(arr.shape)[...] = arr
        shapes = {n: tuple(self._context.get_tensor_shape(n)) for n in self._outputs}
        key = (batch, tuple(sorted(on_device)))  # a graph copies in exactly the host inputs it captured
        if self.cuda_graph and key in self._graphs:
            cuda.graph_launch(self._graphs[key], self._stream)  # type: ignore[union-attr]
        elif self.cuda_graph and key in self._seen_batches:
            cuda.begin_capture(self._stream)  # type: ignore[union-attr]
            try:
                self._enqueue(feeds, shapes)
            finally:
                graph = cuda.end_capture(self._stream)  # type: ignore[union-attr]
            self._graphs[key] = graph
            cuda.graph_launch(graph, self._stream)  # type: ignore[union-attr]
        else:
            self._enqueue(feeds, shapes)  # TensorRT needs one plain run after a shape change
            self._seen_batches.add(key)
        cuda.synchronize(self._stream)  # type: ignore[union-attr]
        return {n: self._buffers[n].host_view(shapes[n]).astype(np.float32, copy=True) for n in self._outputs}

    def _close_impl(self) -> None:
        cuda = self._cuda
        if cuda is not None:
            for g in self._graphs.values():
                cuda.graph_destroy(g)
            if self._stream is not None:
                cuda.stream_destroy(self._stream)
            for buf in self._buffers.values():
                buf.free()
        self._graphs, self._buffers, self._stream = {}, {}, None
        self._context = self._engine = None
