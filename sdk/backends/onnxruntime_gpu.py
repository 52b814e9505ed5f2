"""ONNX Runtime on the GPU as explicit backend names: ``onnxruntime-cuda`` and ``onnxruntime-trt``.

Each asks for exactly its execution providers and is *unavailable* (``unavailable_reason`` says why,
``load`` raises BackendError) when the installed onnxruntime lacks one of them — e.g. the CPU-only
wheel. It never runs quietly on the CPU provider instead.

* ``onnxruntime-cuda``: ``CUDAExecutionProvider``.
* ``onnxruntime-trt``: ``TensorrtExecutionProvider`` with ``CUDAExecutionProvider`` for the nodes
  TensorRT does not take (ONNX Runtime partitions the graph; both must exist). Its engine and timing
  caches go to ``<bundle>/engines/ort-trt/`` — a cache like the native plans, rebuilt when missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Sequence

from fusionedge.sdk.backends.base import ModelIO
from fusionedge.sdk.backends.onnxruntime import OnnxRuntimeBackend
from fusionedge.sdk.errors import BackendError

__all__ = ["OnnxRuntimeCudaBackend", "OnnxRuntimeTensorRTBackend"]


class _OrtGpuBackend(OnnxRuntimeBackend):
    gpu_providers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, device_id: int = 0, intra_op_threads: int | None = None) -> None:
        super().__init__(providers=self.gpu_providers, intra_op_threads=intra_op_threads)
        self.device_id = int(device_id)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reason = super().unavailable_reason()
        if reason is not None:
            return reason
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in cls.gpu_providers if p not in available]
        if missing:
            return (f"{cls.name}: execution provider(s) {', '.join(missing)} not in this onnxruntime build "
                    f"(available: {', '.join(available)}); install onnxruntime-gpu")
        return None

    def _provider_options(self, model_path: Path) -> Sequence[dict[str, Any]]:
        return [{"device_id": self.device_id} for _ in self.gpu_providers]

    def _load_impl(self, model_path: Path, io: ModelIO) -> None:
        import onnxruntime as ort

        reason = self.unavailable_reason()
        if reason is not None:
            raise BackendError(reason)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.inter_op_num_threads = self.inter_op_threads
        if self.intra_op_threads is not None:
            options.intra_op_num_threads = self.intra_op_threads
        try:
            session = ort.InferenceSession(str(model_path), sess_options=options, providers=list(self.providers),
                                           provider_options=list(self._provider_options(model_path)))
        except Exception as e:
            raise BackendError(f"{self.name}: cannot load {model_path.name}: {e}") from e
        used = session.get_providers()
        if self.providers[0] not in used:  # ORT may drop a provider that failed to initialize
            raise BackendError(f"{self.name}: {self.providers[0]} did not initialize (session uses {used})")
        names_in = {i.name for i in session.get_inputs()}
        names_out = {o.name for o in session.get_outputs()}
        if names_in != set(io.input_names) or not set(io.output_names) <= names_out:
            raise BackendError(f"{self.name}: {model_path.name} has inputs {sorted(names_in)}, the manifest "
                               f"lists {list(io.input_names)}; the bundle is inconsistent")
        self._session = session
        self._output_names = list(io.output_names)


class OnnxRuntimeCudaBackend(_OrtGpuBackend):
    """ONNX Runtime with the CUDA execution provider only."""

    name = "onnxruntime-cuda"
    gpu_providers = ("CUDAExecutionProvider",)


class OnnxRuntimeTensorRTBackend(_OrtGpuBackend):
    """ONNX Runtime with the TensorRT execution provider (CUDA provider for what TensorRT does not take)."""

    name = "onnxruntime-trt"
    gpu_providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

    def _provider_options(self, model_path: Path) -> Sequence[dict[str, Any]]:
        cache = model_path.parent / "engines" / "ort-trt"
        trt_options = {
            "device_id": self.device_id, "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
        }
        return [trt_options, {"device_id": self.device_id}]
