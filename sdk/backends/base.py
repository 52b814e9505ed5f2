"""The inference backend interface: public methods check, subclasses implement.

A backend runs one model file. Its life is ``load -> infer* -> close`` (or a ``with`` block)::

    backend = get_backend("onnxruntime")
    with backend.load(bundle.model_path, ModelIO.from_manifest(bundle.manifest)):
        outputs = backend.infer({"video": v, "audio": a, "presence": p})

The public methods (:meth:`Backend.load`, :meth:`Backend.infer`, :meth:`Backend.close`) check the
state and every input against the manifest's tensor specs — names, dtypes, ranks, fixed dimensions,
a consistent batch within the bundle's batch range, finite values — and keep timings, so a backend
(ONNX Runtime, TensorRT, ...) writes only ``_load_impl``, ``_infer_impl`` and ``_close_impl``, and
every backend refuses bad input with the same :class:`~fusionedge.sdk.errors.InputError`. Outputs are
checked too: a model that computes NaN or Inf (a corrupted weight, an overflow in FP16) raises
:class:`~fusionedge.sdk.errors.NonFiniteOutputError` naming the output, because softmax, argmax and
thresholds would otherwise turn NaN into a confident-looking answer.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, cast

import numpy as np

from fusionedge.sdk.errors import BackendError, FusionEdgeError, InputError, NonFiniteOutputError

__all__ = ["TensorSpec", "ModelIO", "Backend", "DeviceInput", "check_feeds", "check_outputs", "non_finite"]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the manifest declares it."""

    name: str
    shape: tuple[int | str, ...]  # an int is a fixed dimension, a str a named dynamic one ("batch")
    dtype: str  # NumPy dtype name, e.g. "float32"

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any]) -> "TensorSpec":
        """Build a spec from a manifest ``inputs[i]`` / ``outputs[i]`` entry (dtype defaults to float32)."""
        return cls(
            name=str(entry["name"]), shape=tuple(entry["shape"]), dtype=str(entry.get("dtype", "float32"))
        )

    def describe(self) -> str:
        """The shape as people write it, e.g. ``(batch, 4, 3, 96, 160)``."""
        return "(" + ", ".join(str(d) for d in self.shape) + ")"


@dataclass(frozen=True)
class ModelIO:
    """What a backend needs to know about a model's interface: tensors and the batch range."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch_min: int = 1
    batch_opt: int = 1
    batch_max: int = 32

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> "ModelIO":
        """Build from a (schema-checked) manifest's ``inputs``, ``outputs`` and ``batch``."""
        batch = manifest.get("batch", {})
        return cls(
            inputs=tuple(TensorSpec.from_manifest(e) for e in manifest["inputs"]),
            outputs=tuple(TensorSpec.from_manifest(e) for e in manifest["outputs"]),
            batch_min=int(batch.get("min", 1)),
            batch_opt=int(batch.get("opt", 1)),
            batch_max=int(batch.get("max", 32)),
        )

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)


@dataclass(frozen=True)
class DeviceInput:
    """An input binding's device memory, for a producer that fills it on the device (a CUDA kernel).

    The buffer holds the input at its largest shape (``shape[0]`` is the bundle's maximum batch), C
    order. :meth:`offset` is the byte offset of one sample, or of one frame of a sample's clip, so a
    producer writes camera ``slot``'s frame ``k`` straight into place.

    Attributes:
        name: the input's name.
        pointer: the device address of element ``[0, 0, ...]``.
        shape: the largest shape, batch first.
        dtype: the element type.
        cuda: the CUDA API the backend allocated it with (``CudaRuntime``).
        stream: the backend's CUDA stream; work queued on it runs before the next inference.
    """

    name: str
    pointer: int
    shape: tuple[int, ...]
    dtype: np.dtype
    cuda: Any
    stream: Any

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample (one batch slot)."""
        return int(np.prod(self.shape[1:], dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def frame_bytes(self) -> int:
        """Bytes of one frame of a clip input ``(batch, T, ...)``: one slot over ``T``."""
        if len(self.shape) < 3:
            raise BackendError(f"input '{self.name}' of shape {self.shape} has no frame axis")
        return self.sample_bytes // int(self.shape[1])

    def offset(self, slot: int, frame: int | None = None) -> int:
        """Byte offset of batch slot ``slot`` (and, for a clip input, of its frame ``frame``).

        Raises:
            BackendError: ``slot`` outside ``[0, shape[0])`` or ``frame`` outside ``[0, shape[1])``.
        """
        if not 0 <= int(slot) < int(self.shape[0]):
            raise BackendError(f"input '{self.name}': batch slot {slot} is outside [0, {self.shape[0]})")
        base = int(slot) * self.sample_bytes
        if frame is None:
            return base
        if not 0 <= int(frame) < int(self.shape[1]) or len(self.shape) < 3:
            raise BackendError(f"input '{self.name}' of shape {self.shape}: frame {frame} is out of range")
        return base + int(frame) * self.frame_bytes

    def address(self, slot: int, frame: int | None = None) -> int:
        """The device address of :meth:`offset`."""
        return self.pointer + self.offset(slot, frame)


class Backend(ABC):
    """Base of every inference backend. Subclasses set ``name``/``requires`` and write the ``_impl`` methods.

    Attributes:
        name: the registry name ("onnxruntime", "tensorrt", ...).
        requires: modules that must import for this backend to be available.
        builds_engines: the backend compiles a device-specific engine from the ONNX model; it then
            takes a ``build="first"|"never"`` option and raises ``NoEngineError`` under "never" when
            this device has no engine yet (``Perception`` can build it in the background).
        last_timings: milliseconds of the last ``load`` / ``infer`` call, by stage.
    """

    name: ClassVar[str] = "base"
    requires: ClassVar[tuple[str, ...]] = ()
    builds_engines: ClassVar[bool] = False

    def __init__(self) -> None:
        self._state = "new"  # new -> loaded -> closed
        self._io: ModelIO | None = None
        self._model_path: Path | None = None
        self.last_timings: dict[str, float] = {}

    # ------------------------------------------------------------------------------ availability

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run here (a module that does not import), or None when it can."""
        for module in cls.requires:
            try:
                importlib.import_module(module)
            except Exception as e:  # an ImportError, or an OSError from a missing shared library
                return f"{cls.name}: cannot import {module!r} ({type(e).__name__}: {e})"
        return None

    @classmethod
    def is_available(cls) -> bool:
        """True when every module in ``requires`` imports."""
        return cls.unavailable_reason() is None

    # ------------------------------------------------------------------------------- public API

    @property
    def loaded(self) -> bool:
        return self._state == "loaded"

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    @property
    def io(self) -> ModelIO:
        """The loaded model's interface."""
        self._require_loaded()
        return cast(ModelIO, self._io)  # set together with the "loaded" state

    def load(self, model_path: str | Path, manifest_io: ModelIO | Mapping[str, Any]) -> "Backend":
        """Load a model file for inference.

        Args:
            model_path: the model file (``model.onnx`` of a bundle; a backend may look beside it,
                e.g. for cached engines).
            manifest_io: a :class:`ModelIO`, or the bundle manifest to build one from.

        Returns:
            ``self``, so ``with get_backend("onnxruntime").load(path, io) as b:`` works.

        Raises:
            BackendError: already loaded or closed, the file is missing, the backend's library is
                unavailable, or the backend cannot load this model (the cause is chained).
        """
        if self._state != "new":
            raise BackendError(f"{self.name}: load() called on a backend that is already {self._state}")
        io = manifest_io if isinstance(manifest_io, ModelIO) else ModelIO.from_manifest(manifest_io)
        path = Path(model_path)
        if not path.is_file():
            raise BackendError(f"{self.name}: model file {path} does not exist")
        reason = self.unavailable_reason()
        if reason is not None:
            raise BackendError(reason)
        t0 = time.perf_counter()
        try:
            self._load_impl(path, io)
        except FusionEdgeError:
            raise
        except Exception as e:
            raise BackendError(f"{self.name}: cannot load {path.name}: {type(e).__name__}: {e}") from e
        self._io, self._model_path, self._state = io, path, "loaded"
        self.last_timings = {"load": (time.perf_counter() - t0) * 1e3}
        return self

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on one batch.

        Args:
            feeds: ``{input name: array}`` for exactly the model's inputs, with the manifest's
                dtypes and shapes (the same batch size in every input, within the bundle's range).

        Returns:
            ``{output name: array}`` for every output the manifest lists.

        Raises:
            BackendError: not loaded, closed, or the backend failed to run (the cause is chained).
            NonFiniteOutputError: an output holds NaN or Inf (names the output and the first index).
            InputError: a missing or unknown input, a wrong dtype, rank, dimension or batch size,
                or NaN/Inf in an input (each names the input).
        """
        self._require_loaded()
        io = self.io
        checked = check_feeds(feeds, io)
        t0 = time.perf_counter()
        try:
            outputs = self._infer_impl(checked)
        except FusionEdgeError:
            raise
        except Exception as e:
            raise BackendError(f"{self.name}: inference failed: {type(e).__name__}: {e}") from e
        elapsed = (time.perf_counter() - t0) * 1e3
        missing = [n for n in io.output_names if n not in outputs]
        if missing:
            raise BackendError(f"{self.name}: the model did not return output(s) {', '.join(missing)}")
        self.last_timings = {"infer": elapsed}
        result = {n: outputs[n] for n in io.output_names}
        check_outputs(result, where=self.name)
        return result

    def device_input(self, name: str) -> DeviceInput | None:
        """The device memory of input ``name`` when this backend runs from device buffers, else None.

        A backend that returns one takes that input from the device in :meth:`infer_on_device`.
        """
        return None

    def infer_on_device(self, feeds: Mapping[str, np.ndarray],
                        on_device: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        """Run one batch whose inputs named in ``on_device`` are already in :meth:`device_input` memory.

        Args:
            feeds: the other inputs, as for :meth:`infer`.
            on_device: input name -> the shape written into its device buffer (same batch as ``feeds``).

        Returns:
            As :meth:`infer`.

        Raises:
            BackendError: this backend has no device inputs, or it failed to run.
            InputError: as :meth:`infer` for ``feeds``; a device shape that does not match its spec or
                batch.
            NonFiniteOutputError: an output holds NaN or Inf.
        """
        self._require_loaded()
        io = self.io
        unknown = [n for n in on_device if n not in io.input_names]
        if unknown:
            raise InputError(f"unknown device input(s) {', '.join(map(repr, unknown))}")
        for name in on_device:
            if self.device_input(name) is None:
                raise BackendError(f"{self.name}: input '{name}' is not taken from device memory")
        host_io = ModelIO(inputs=tuple(s for s in io.inputs if s.name not in on_device), outputs=io.outputs,
                          batch_min=io.batch_min, batch_opt=io.batch_opt, batch_max=io.batch_max)
        checked = check_feeds(feeds, host_io)
        batches = {int(a.shape[0]) for a in checked.values()}
        for spec in io.inputs:
            if spec.name in on_device:
                shape = tuple(int(d) for d in on_device[spec.name])
                fixed = all(isinstance(w, str) or w == g for w, g in zip(spec.shape, shape))
                if len(shape) != len(spec.shape) or not fixed:
                    raise InputError(f"device input '{spec.name}': shape {shape} does not match {spec.describe()}")
                batches.add(shape[0])
        if len(batches) != 1 or not io.batch_min <= next(iter(batches)) <= io.batch_max:
            raise InputError(f"batch sizes {sorted(batches)}: one size in [{io.batch_min}, {io.batch_max}] needed")
        t0 = time.perf_counter()
        try:
            outputs = self._infer_device_impl(checked, {k: tuple(v) for k, v in on_device.items()})
        except FusionEdgeError:
            raise
        except Exception as e:
            raise BackendError(f"{self.name}: inference failed: {type(e).__name__}: {e}") from e
        self.last_timings = {"infer": (time.perf_counter() - t0) * 1e3}
        result = {n: outputs[n] for n in io.output_names}
        check_outputs(result, where=self.name)
        return result

    def close(self) -> None:
        """Release the model and its memory. Safe to call more than once."""
        if self._state == "loaded":
            try:
                self._close_impl()
            finally:
                self._state = "closed"
        else:
            self._state = "closed"

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f" {self._model_path}" if self._model_path else ""
        return f"<{type(self).__name__} {self._state}{where}>"

    # ------------------------------------------------------------------------- for subclasses

    @abstractmethod
    def _load_impl(self, model_path: Path, io: ModelIO) -> None:
        """Create the session/engine for ``model_path``. Raise BackendError (or anything: it is wrapped)."""

    @abstractmethod
    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Run checked, C-contiguous feeds; return at least every output in ``io.outputs``."""

    def _infer_device_impl(self, feeds: dict[str, np.ndarray],
                           on_device: dict[str, tuple[int, ...]]) -> Mapping[str, np.ndarray]:
        """Run with ``on_device`` inputs already in device memory (only backends with device inputs)."""
        raise BackendError(f"{self.name}: this backend takes its inputs from host memory only")

    @abstractmethod
    def _close_impl(self) -> None:
        """Release what ``_load_impl`` created."""

    def _require_loaded(self) -> None:
        if self._state == "new":
            raise BackendError(f"{self.name}: call load() before infer()")
        if self._state == "closed":
            raise BackendError(f"{self.name}: the backend is closed")


def check_feeds(feeds: Mapping[str, Any], io: ModelIO) -> dict[str, np.ndarray]:
    """Check feeds against a model's input specs; return them C-contiguous.

    Args:
        feeds: ``{input name: array}``.
        io: the model's interface.

    Returns:
        The same arrays (C-contiguous), keyed in the model's input order.

    Raises:
        InputError: see :meth:`Backend.infer`; the message names the input and what was expected.
    """
    if not isinstance(feeds, Mapping):
        raise InputError(f"feeds must be a mapping of input name to array, got {type(feeds).__name__}")
    expected = ", ".join(io.input_names)
    missing = [n for n in io.input_names if n not in feeds]
    if missing:
        raise InputError(f"missing input(s) {', '.join(map(repr, missing))} (the model takes {expected})")
    unknown = [str(n) for n in feeds if n not in io.input_names]
    if unknown:
        raise InputError(f"unknown input(s) {', '.join(map(repr, unknown))} (the model takes {expected})")
    dims: dict[str, tuple[int, str]] = {}  # named dimension -> (size, first input that set it)
    out: dict[str, np.ndarray] = {}
    for spec in io.inputs:
        arr = feeds[spec.name]
        _check_array(arr, spec, dims)
        out[spec.name] = np.ascontiguousarray(arr)
    if "batch" in dims:
        batch = dims["batch"][0]
        if not io.batch_min <= batch <= io.batch_max:
            raise InputError(
                f"batch size {batch} is outside the bundle's range [{io.batch_min}, {io.batch_max}]; "
                f"split the batch"
            )
    return out


def check_outputs(outputs: Mapping[str, np.ndarray], *, where: str) -> None:
    """Refuse model outputs that hold NaN or Inf.

    Args:
        outputs: ``{output name: array}``.
        where: who produced them, for the message (a backend name, a file name).

    Raises:
        NonFiniteOutputError: ``<where>: output '<name>' holds NaN (first at index (i, j))`` for the
            first output, in order, that holds a non-finite value.
    """
    for name, arr in outputs.items():
        what = non_finite(arr)
        if what is not None:
            raise NonFiniteOutputError(
                f"{where}: output '{name}' holds {what}; the model or its backend is broken, no result is "
                f"made from it"
            )


def non_finite(arr: Any) -> str | None:
    """Describe the NaN/Inf in an array (``"NaN (first at index (0, 3), 4 of 16 values)"``), or None.

    Integer and boolean arrays are always finite.
    """
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fc" or np.isfinite(arr).all():
        return None
    bad = ~np.isfinite(arr)
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    kind = "NaN" if np.isnan(arr[first]) else "Inf"
    return f"{kind} (first at index {first}, {int(bad.sum())} of {arr.size} values)"


def _check_array(arr: Any, spec: TensorSpec, dims: dict[str, tuple[int, str]]) -> None:
    where = f"input '{spec.name}'"
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{where}: expected a numpy array, got {type(arr).__name__}")
    if arr.dtype != np.dtype(spec.dtype):
        raise InputError(f"{where}: expected dtype {spec.dtype}, got {arr.dtype} (convert with .astype)")
    if arr.ndim != len(spec.shape):
        raise InputError(
            f"{where}: expected {len(spec.shape)} dimensions {spec.describe()}, got shape {tuple(arr.shape)}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
        if isinstance(want, str):
            if got < 1:
                raise InputError(f"{where}: dimension {axis} ({want}) must be >= 1, got {got}")
            if want in dims and dims[want][0] != got:
                size, other = dims[want]
                raise InputError(
                    f"{where}: dimension {axis} ({want}) is {got} but input '{other}' has {size}"
                )
            dims.setdefault(want, (got, spec.name))
        elif want != got:
            raise InputError(
                f"{where}: dimension {axis} must be {want}, got {got} (expected {spec.describe()}, "
                f"got {tuple(arr.shape)})"
            )
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        kind = "NaN" if np.isnan(arr).any() else "Inf"
        raise InputError(f"{where} holds {kind} values (first at index {first})")
