"""ONNX Runtime backend: runs ``model.onnx`` in an ``InferenceSession`` (CPU by default).

``onnxruntime`` is imported when a model is loaded, not when this module is. Execution providers are
explicit: the backend asks for exactly the providers it was given and refuses to load if one of them
is not available in this onnxruntime build — it never quietly runs on a slower provider.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fusionedge.sdk.backends.base import Backend, ModelIO
from fusionedge.sdk.errors import BackendError

__all__ = ["OnnxRuntimeBackend"]

log = logging.getLogger(__name__)


class OnnxRuntimeBackend(Backend):
    """Run a bundle's ONNX model with ONNX Runtime.

    Args:
        providers: execution providers in priority order (default: CPU only). Each must be
            available in the installed onnxruntime, or ``load`` raises BackendError.
        intra_op_threads: threads for one operator; None lets ONNX Runtime choose (all cores).
        inter_op_threads: threads across operators (the session runs sequentially; default 1).
        allow_spinning: False makes idle worker threads sleep instead of spin-waiting for work (ONNX
            Runtime's ``session.intra_op.allow_spinning``): on a device with few cores, spinning workers
            take CPU from capture, decode and encode threads; None keeps ONNX Runtime's default (spin).
        stop_spinning: True (default) stops the workers' spinning at the end of each run (ONNX Runtime's
            ``session.force_spinning_stop``); they still spin between the operators of one run. A
            process holding several sessions (a bundle's perception and question models, several
            bundles) otherwise has one session's workers spin on the cores the next session's run
            needs: on 2 CPU cores ``ask`` after ``infer`` took 1.38-1.61x ``infer`` with the spin
            left running, 1.24-1.37x with it stopped, while ``infer`` alone changed by 0-3%
            (``training/EXPERIMENTS.md``). False keeps ONNX Runtime's default.
    """

    name = "onnxruntime"
    requires = ("onnxruntime",)

    def __init__(
        self,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        allow_spinning: bool | None = None,
        stop_spinning: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(providers, str) or not providers:
            raise BackendError(f"{self.name}: providers must be a non-empty list of names, got {providers!r}")
        if intra_op_threads is not None and intra_op_threads < 1:
            raise BackendError(f"{self.name}: intra_op_threads must be >= 1 or None, got {intra_op_threads}")
        self.providers = tuple(providers)
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = int(inter_op_threads)
        self.allow_spinning = allow_spinning
        if not isinstance(stop_spinning, bool):
            raise BackendError(f"{self.name}: stop_spinning must be True or False, got {stop_spinning!r}")
        self.stop_spinning = stop_spinning
        self._session: Any = None
        self._output_names: list[str] = []

    def _load_impl(self, model_path: Path, io: ModelIO) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise BackendError(
                f"{self.name}: execution provider(s) {', '.join(missing)} not available in this onnxruntime "
                f"build (available: {', '.join(available)})"
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
        options.inter_op_num_threads = self.inter_op_threads
        if self.intra_op_threads is not None:
            options.intra_op_num_threads = self.intra_op_threads
        if self.allow_spinning is not None:
            flag = "1" if self.allow_spinning else "0"
            options.add_session_config_entry("session.intra_op.allow_spinning", flag)
            options.add_session_config_entry("session.inter_op.allow_spinning", flag)
        if self.stop_spinning:
            options.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=list(self.providers)
            )
        except Exception as e:  # ORT raises its own Fail / InvalidGraph / NoSuchFile types
            raise BackendError(f"{self.name}: cannot load {model_path.name}: {e}") from e
        model_inputs = {i.name for i in session.get_inputs()}
        model_outputs = {o.name for o in session.get_outputs()}
        if model_inputs != set(io.input_names) or not set(io.output_names) <= model_outputs:
            raise BackendError(
                f"{self.name}: {model_path.name} has inputs {sorted(model_inputs)} and outputs "
                f"{sorted(model_outputs)}, but the manifest lists inputs {list(io.input_names)} and outputs "
                f"{list(io.output_names)}; the bundle is inconsistent"
            )
        self._session = session
        self._output_names = list(io.output_names)
        log.debug("onnxruntime session for %s on %s", model_path, session.get_providers())

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        try:
            outputs = self._session.run(self._output_names, feeds)
        except Exception as e:
            raise BackendError(f"{self.name}: inference failed: {e}") from e
        return dict(zip(self._output_names, outputs))

    def _close_impl(self) -> None:
        self._session = None
