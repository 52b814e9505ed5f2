"""Camera frames preprocessed on the GPU and placed in the engine's input binding, with no host round trip.

With several cameras on a TensorRT engine, each frame's resize + normalization runs in the CUDA kernel of
``native/preprocess.cu`` (CMake builds it into ``libfusionedge_cuda.so``, C interface
``fusionedge_preprocess_frame_cuda``), found beside this package or at ``$FUSIONEDGE_CUDA_LIB``. Per
frame, on the camera's own CUDA stream: the ``uint8`` frame is copied into a pinned host buffer and
uploaded, and the kernel, with the resize taps of that size pair (:func:`fusionedge.sdk.preprocess._resize_taps`,
uploaded once per pair and kept on the device), writes the model's ``(3, H, W)`` float32 frame into the
camera's ring of preprocessed frames on the device. Per tick, :meth:`CudaFramePreprocessor.place` puts
each camera's ``T`` clip frames into its batch slot of the engine's input binding
(:class:`~fusionedge.sdk.backends.base.DeviceInput`, ``address(slot, k)``) with device-to-device copies
on the engine's stream, and the engine runs from there (``Backend.infer_on_device``). A frame is part
of ``T`` consecutive clips at ``T`` different positions, so it is resized once into the ring and copied
into place per clip, and the ring holds model-size frames, not camera-size ones.

:func:`plan_device_preprocessing` decides per stream: the CUDA path needs a backend with device inputs
(TensorRT), the library, and no attribution (which withholds each sensor on host copies of the inputs);
otherwise the NumPy / native CPU path of :mod:`fusionedge.sdk.preprocess` runs as before, and the reason
is logged once. The kernel is held to the CPU reference by ``scripts/device_check.py`` on a GPU.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.sdk.backends.base import DeviceInput
from fusionedge.sdk.errors import BackendError
from fusionedge.sdk.preprocess import _COLOR_CODE, _check_frame, _check_mean_std, _resize_taps

__all__ = [
    "ENV_VAR",
    "LIBRARY_NAME",
    "CudaFramePreprocessor",
    "CudaPreprocessUnavailable",
    "DeviceClip",
    "DeviceFrame",
    "DeviceTaps",
    "PreprocessKernel",
    "library_folders",
    "library_path",
    "load_kernel",
    "log_cpu_preprocessing",
    "plan_device_preprocessing",
    "ring_capacity",
]

log = logging.getLogger(__name__)

#: The environment variable naming the library explicitly.
ENV_VAR = "FUSIONEDGE_CUDA_LIB"
#: The library's file name beside the package (where CMake installs it).
LIBRARY_NAME = "libfusionedge_cuda.so"
_SYMBOL = "fusionedge_preprocess_frame_cuda"
_CUDA_ERROR_INVALID_VALUE = 1


class CudaPreprocessUnavailable(BackendError):
    """The CUDA preprocessing library cannot be found or loaded here (the message says why)."""


def library_folders() -> list[Path]:
    """Where CMake installs the library: beside this module, and beside the native extension (which an
    editable install keeps in site-packages, apart from the sources)."""
    folders = [Path(__file__).parent]
    try:
        from fusionedge.sdk import _native

        folders.append(Path(_native.__file__).parent)
    except ImportError:  # no native build: only the package folder
        pass
    return list(dict.fromkeys(folders))


def library_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the CUDA preprocessing library is: ``$FUSIONEDGE_CUDA_LIB``, else in :func:`library_folders`.

    Args:
        environ: the environment to read (default: ``os.environ``).

    Returns:
        The library file.

    Raises:
        CudaPreprocessUnavailable: the variable names no file, or no library was built beside the package.
    """
    env = os.environ if environ is None else environ
    given = env.get(ENV_VAR)
    if given:
        path = Path(given)
        if not path.is_file():
            raise CudaPreprocessUnavailable(f"{ENV_VAR}={given}: no such file")
        return path
    folders = library_folders()
    for folder in folders:
        if (folder / LIBRARY_NAME).is_file():
            return folder / LIBRARY_NAME
    raise CudaPreprocessUnavailable(f"{LIBRARY_NAME} is not built in {' or '.join(map(str, folders))} (CMake "
                                    f"builds it where nvcc is found; or set {ENV_VAR})")


class PreprocessKernel:
    """The library's ``fusionedge_preprocess_frame_cuda``, typed.

    Args:
        path: the shared library.

    Raises:
        CudaPreprocessUnavailable: the file does not load (e.g. no CUDA runtime) or lacks the function.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            lib = ctypes.CDLL(str(self.path))
        except OSError as e:
            raise CudaPreprocessUnavailable(f"{self.path}: cannot load: {e}") from e
        try:
            fn = getattr(lib, _SYMBOL)
        except AttributeError as e:
            raise CudaPreprocessUnavailable(f"{self.path}: has no {_SYMBOL}; rebuild it from native/preprocess.cu") from e
        p, i = ctypes.c_void_p, ctypes.c_int
        fn.argtypes = [p, i, i, i, p, p, i, p, p, i, p, p, p, i, i, p]
        fn.restype = ctypes.c_int
        self._lib, self._fn = lib, fn

    def launch(self, *, src: int, h: int, w: int, color: str, ys: int, wy: int, ky: int, xs: int, wx: int,
               kx: int, mean: Sequence[float], std: Sequence[float], dst: int, oh: int, ow: int,
               stream: int) -> None:
        """Queue one frame's preprocessing on ``stream`` (device pointers; ``mean``/``std`` on the host).

        Raises:
            BackendError: the kernel refused its arguments or the launch failed (the CUDA error code).
        """
        mean3, std3 = (ctypes.c_double * 3)(*mean), (ctypes.c_double * 3)(*std)
        code = self._fn(src, h, w, _COLOR_CODE[color], ys, wy, ky, xs, wx, kx, ctypes.cast(mean3, ctypes.c_void_p),
                        ctypes.cast(std3, ctypes.c_void_p), dst, oh, ow, stream)
        if code != 0:
            what = " (invalid argument)" if code == _CUDA_ERROR_INVALID_VALUE else ""
            raise BackendError(f"{_SYMBOL} failed with CUDA error {code}{what} for a {w}x{h} {color} frame")


def load_kernel(environ: Mapping[str, str] | None = None) -> PreprocessKernel:
    """Find (:func:`library_path`) and load the kernel.

    Raises:
        CudaPreprocessUnavailable: not found or not loadable (the message says which and where).
    """
    return PreprocessKernel(library_path(environ))


@dataclass(frozen=True)
class AxisTaps:
    """One axis's taps on the device: ``starts`` (n_out,) int32 and ``taps`` (n_out, k) float32, row-major."""

    starts: int
    taps: int
    k: int


class DeviceTaps:
    """The resize taps of each (input size, output size) pair, uploaded once and kept on the device.

    Args:
        cuda: the CUDA API (``CudaRuntime``).
    """

    def __init__(self, cuda: Any) -> None:
        from fusionedge.sdk.backends.tensorrt import HostDeviceBuffer

        self._cuda, self._buffer = cuda, HostDeviceBuffer
        self._lock = threading.Lock()
        self._axes: dict[tuple[int, int], tuple[AxisTaps, list]] = {}

    def get(self, n_in: int, n_out: int, stream: Any) -> AxisTaps:
        """The taps for ``n_in -> n_out``, uploaded on ``stream`` (and waited for) the first time."""
        key = (int(n_in), int(n_out))
        with self._lock:
            found = self._axes.get(key)
            if found is not None:
                return found[0]
            starts, taps = _resize_taps(*key)
            bufs = []
            try:
                for arr in (np.ascontiguousarray(starts, np.int32), np.ascontiguousarray(taps, np.float32)):
                    buf = self._buffer(self._cuda, arr.shape, arr.dtype)
                    bufs.append(buf)
                    buf.host_view(arr.shape)[...] = arr
                    self._cuda.htod_async(buf.device, buf.host, arr.nbytes, stream)
                self._cuda.synchronize(stream)
            except BaseException:
                for buf in bufs:
                    buf.free()
                raise
            axis = AxisTaps(starts=bufs[0].device, taps=bufs[1].device, k=int(taps.shape[1]))
            self._axes[key] = (axis, bufs)
            return axis

    def __len__(self) -> int:
        return len(self._axes)

    def free(self) -> None:
        """Release every uploaded pair."""
        with self._lock:
            for _, bufs in self._axes.values():
                for buf in bufs:
                    buf.free()
            self._axes.clear()


@dataclass(frozen=True)
class DeviceFrame:
    """A preprocessed frame in a camera's device ring: ``index`` in the ring, ``generation`` of the write."""

    camera: str
    index: int
    generation: int


class DeviceClip:
    """A step's clip as device frames (``T`` of them, oldest first), standing in for a ``(T, 3, H, W)`` array.

    ``clip[None]`` is the one-row batch of it, as for an array; ``len()`` of that batch is 1.
    """

    def __init__(self, frames: Sequence[DeviceFrame]) -> None:
        self.frames = tuple(frames)

    def __getitem__(self, item: None) -> DeviceClip:
        if item is not None:
            raise TypeError("a DeviceClip is indexed only by None (one batch row)")
        return self

    def __len__(self) -> int:
        return 1


def ring_capacity(window_frames: int, queue_size: int) -> int:
    """Frames a camera's ring keeps: one clip window, the synchronizer's margin and the steps in flight.

    A frame stays referenced while its window is kept (``window_frames`` + 3 frames) and while a step
    holding it waits in the queues (``queue_size``) or in the batch gate (1 more), plus one being written.
    """
    return int(window_frames) + 3 + int(queue_size) + 2


class _Camera:
    """One camera's stream, pinned upload buffer, device frame buffer and ring of preprocessed frames."""

    def __init__(self, cuda: Any, frame_bytes: int, capacity: int) -> None:
        self.cuda = cuda
        self.stream = cuda.stream_create()
        self.upload: Any = None  # HostDeviceBuffer of the raw frame, grown to the largest frame
        self.capacity = int(capacity)
        self.frame_bytes = int(frame_bytes)
        self.ring = cuda.malloc(self.capacity * self.frame_bytes)
        self.generations = [0] * self.capacity
        self.next = 0
        self.written = 0

    def free(self) -> None:
        if self.upload is not None:
            self.upload.free()
        self.cuda.free(self.ring)
        self.cuda.stream_destroy(self.stream)


class CudaFramePreprocessor:
    """Preprocess each camera's frames into its device ring; place each tick's clips in the input binding.

    Args:
        kernel: the loaded :class:`PreprocessKernel`.
        backend: the backend whose input ``binding`` it fills (its ``infer_on_device`` runs the batch).
        binding: the video input's :class:`DeviceInput` (``(batch, T, 3, H, W)`` float32).
        geometry: the model's input geometry (``height``, ``width``, ``mean``, ``std``).
    """

    def __init__(self, kernel: PreprocessKernel, backend: Any, binding: DeviceInput, geometry: Any) -> None:
        if len(binding.shape) != 5 or np.dtype(binding.dtype) != np.float32:
            raise BackendError(f"input '{binding.name}' is {binding.shape} {binding.dtype}; the CUDA frame "
                               f"preprocessing fills a (batch, T, 3, H, W) float32 input")
        if tuple(binding.shape[2:]) != (3, int(geometry.height), int(geometry.width)):
            raise BackendError(f"input '{binding.name}' frames are {binding.shape[2:]}, the geometry says "
                               f"(3, {geometry.height}, {geometry.width})")
        self.kernel, self.backend, self.binding, self.geometry = kernel, backend, binding, geometry
        self.cuda = binding.cuda
        self.mean, self.std = _check_mean_std(geometry.mean, geometry.std)
        self.taps = DeviceTaps(self.cuda)
        self._cameras: dict[str, _Camera] = {}
        self._lock = threading.Lock()
        self.frames = 0

    def _camera(self, name: str, capacity: int) -> _Camera:
        with self._lock:
            cam = self._cameras.get(name)
            if cam is None:
                cam = self._cameras[name] = _Camera(self.cuda, self.binding.frame_bytes, capacity)
            return cam

    def preprocess(self, camera: str, image: np.ndarray, *, color: str = "bgr", capacity: int) -> DeviceFrame:
        """Upload one frame of ``camera`` and preprocess it into the camera's ring; returns its handle.

        Called from the camera's own thread (one per camera); it returns once the frame is in the ring.

        Args:
            camera: the camera's name.
            image: ``(h, w, 3)`` uint8 RGB / BGR, or ``(h * 3 / 2, w)`` uint8 NV12.
            color: ``"rgb"``, ``"bgr"`` or ``"nv12"``.
            capacity: the ring's size in frames (:func:`ring_capacity`), used when the camera is first seen.

        Raises:
            InputError: a bad frame for ``color``.
            BackendError: a CUDA call or the kernel failed.
        """
        from fusionedge.sdk.backends.tensorrt import HostDeviceBuffer

        h, w = _check_frame(image, color, "frame")
        cam = self._camera(camera, capacity)
        src = np.ascontiguousarray(image)
        if cam.upload is None or cam.upload.capacity < src.nbytes:
            if cam.upload is not None:
                cam.upload.free()
                cam.upload = None
            cam.upload = HostDeviceBuffer(self.cuda, (src.nbytes,), np.dtype(np.uint8))
        cam.upload.host_view(src.shape)[...] = src
        self.cuda.htod_async(cam.upload.device, cam.upload.host, src.nbytes, cam.stream)
        oh, ow = int(self.geometry.height), int(self.geometry.width)
        ys, xs = self.taps.get(h, oh, cam.stream), self.taps.get(w, ow, cam.stream)
        index = cam.next
        cam.next = (cam.next + 1) % cam.capacity
        cam.written += 1
        cam.generations[index] = cam.written
        self.kernel.launch(src=cam.upload.device, h=h, w=w, color=color, ys=ys.starts, wy=ys.taps, ky=ys.k,
                           xs=xs.starts, wx=xs.taps, kx=xs.k, mean=self.mean, std=self.std,
                           dst=cam.ring + index * cam.frame_bytes, oh=oh, ow=ow,
                           stream=self.cuda.stream_handle(cam.stream))
        self.cuda.synchronize(cam.stream)  # the frame is in the ring before a step can refer to it
        self.frames += 1
        return DeviceFrame(camera, index, cam.written)

    def frame_address(self, frame: DeviceFrame) -> int:
        """The device address of a ring frame.

        Raises:
            BackendError: the frame was overwritten (the ring was too small for the steps in flight).
        """
        cam = self._cameras.get(frame.camera)
        if cam is None or cam.generations[frame.index] != frame.generation:
            raise BackendError(f"camera {frame.camera!r}: frame {frame.generation} left the device ring of "
                               f"{cam.capacity if cam else 0} frames before its clip ran")
        return cam.ring + frame.index * cam.frame_bytes

    def place(self, slot: int, clip: DeviceClip | np.ndarray) -> None:
        """Put one step's clip into batch ``slot`` of the input binding, on the engine's stream.

        A :class:`DeviceClip` is copied frame by frame from the rings (device to device); an array (a
        step made without video: zeros) is copied from the host.

        Raises:
            BackendError: a wrong clip length, a frame that left its ring, or a failed copy.
        """
        b, t = self.binding, int(self.binding.shape[1])
        if isinstance(clip, DeviceClip):
            if len(clip.frames) != t:
                raise BackendError(f"a clip of {len(clip.frames)} frames for an input of {t}")
            for k, frame in enumerate(clip.frames):
                self.cuda.dtod_async(b.address(slot, k), self.frame_address(frame), b.frame_bytes, b.stream)
            return
        arr = np.ascontiguousarray(clip, dtype=np.float32).reshape(b.shape[1:])
        # from pageable memory the copy is staged before the call returns, so ``arr`` may go after it
        self.cuda.htod_async(b.address(slot), arr.ctypes.data, arr.nbytes, b.stream)

    def run(self, clips: Sequence[DeviceClip | np.ndarray], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Place ``clips`` in slots 0.. and run the batch with the other inputs ``feeds`` from the host."""
        for slot, clip in enumerate(clips):
            self.place(slot, clip)
        shape = (len(clips), *self.binding.shape[1:])
        return self.backend.infer_on_device(feeds, {self.binding.name: shape})

    def close(self) -> None:
        """Release the rings, upload buffers, streams and taps."""
        with self._lock:
            cams, self._cameras = list(self._cameras.values()), {}
        for cam in cams:
            cam.free()
        self.taps.free()


_logged: set[str] = set()
_logged_lock = threading.Lock()


def log_cpu_preprocessing(reason: str) -> bool:
    """Log once per process and reason that video is preprocessed on the CPU, and why; True if logged now."""
    with _logged_lock:
        if reason in _logged:
            return False
        _logged.add(reason)
    log.info("video preprocessing on the CPU: %s", reason)
    return True


def plan_device_preprocessing(perception: Any, *, environ: Mapping[str, str] | None = None,
                              kernel: PreprocessKernel | None = None) -> tuple[CudaFramePreprocessor | None, str]:
    """Decide where a multi-camera stream preprocesses video: on the GPU into the engine's input, or on the CPU.

    Args:
        perception: the loaded Perception (its ``backend``, ``geometry``, ``attribution``).
        environ: the environment for :func:`library_path` (default: ``os.environ``).
        kernel: an already loaded kernel (default: :func:`load_kernel`).

    Returns:
        ``(preprocessor, why)``: a :class:`CudaFramePreprocessor`, or None and the reason the CPU path runs.
    """
    backend = getattr(perception, "backend", None)
    binding = backend.device_input("video") if backend is not None else None
    if binding is None:
        name = getattr(backend, "name", "this")
        return None, f"the {name} backend takes its video input from host memory"
    if getattr(perception, "attribution", False):
        return None, "attribution withholds each sensor on host copies of the inputs"
    try:
        found = kernel if kernel is not None else load_kernel(environ)
        return CudaFramePreprocessor(found, backend, binding, perception.geometry), \
            f"CUDA kernel {found.path.name} into the {backend.name} input binding"
    except BackendError as e:  # no library, or a binding this preprocessing cannot fill
        return None, str(e)
