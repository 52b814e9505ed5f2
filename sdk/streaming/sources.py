"""Video and audio sources opened from URIs; a camera loop and a file replay are the same code.

Every source has ``open()``, ``read()`` and ``close()``. ``read()`` blocks until the next frame (or
audio chunk) and returns it stamped on the shared :class:`~fusionedge.sdk.streaming.clock.StreamClock`;
it returns ``None`` at the end of a replayed file and raises :class:`SensorError` when a sensor fails.
``close()`` may be called from another thread to unblock a ``read()``.

File replay runs at the file's native rate (``realtime=True``: frame ``i`` is released at ``i / fps``
on the clock) or as fast as it is read (``realtime=False``); either way frame ``i`` is stamped
``i / fps`` and audio sample ``j`` sits at ``j / rate``, so replay lines up with offline inference.
Live sensors are stamped with the clock at the moment the frame was delivered.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fusionedge.sdk.errors import FusionEdgeError, SensorError
from fusionedge.sdk.media import DEFAULT_FPS, IMAGE_EXTENSIONS, read_audio
from fusionedge.sdk.streaming.clock import StreamClock
from fusionedge.sdk.streaming.uri import SourceURI, parse_uri

__all__ = [
    "Frame",
    "AudioChunk",
    "VideoSource",
    "AudioSource",
    "FileVideoSource",
    "CaptureVideoSource",
    "WavAudioSource",
    "MicAudioSource",
    "open_video_source",
    "open_audio_source",
    "csi_pipeline",
]

log = logging.getLogger(__name__)

#: Audio chunk length of file replay and of the microphone stream, in seconds.
CHUNK_SECONDS = 0.02


@dataclass
class Frame:
    """One camera frame."""

    image: np.ndarray  # (H, W, 3) uint8 BGR (OpenCV order)
    t: float  # seconds on the stream clock: when the frame was taken
    index: int  # frame counter of the source since it was opened
    captured: float  # time.monotonic() when the pipeline received it (for latency)


@dataclass
class AudioChunk:
    """A block of consecutive audio samples."""

    samples: np.ndarray  # (S,) float32 mono in [-1, 1]
    rate: int  # Hz
    t_end: float  # stream-clock time just after the last sample


class Source(ABC):
    """What every sensor has: a URI, the stream clock, open/read/close."""

    def __init__(self, uri: SourceURI, clock: StreamClock) -> None:
        self.uri = uri
        self.clock = clock

    @property
    def live(self) -> bool:
        """True for a sensor (the end of data is a failure)."""
        return self.uri.live

    @abstractmethod
    def open(self) -> None:
        """Open the device or file. Raises SensorError naming the URI and what to check."""

    @abstractmethod
    def read(self) -> Any:
        """The next frame or chunk; None at the end of a file. Raises SensorError when the sensor fails."""

    @abstractmethod
    def close(self) -> None:
        """Release the device (idempotent; may be called from another thread)."""


class VideoSource(Source):
    """A camera, stream or replayed file giving BGR frames (``read() -> Frame | None``)."""

    def __init__(self, uri: SourceURI, clock: StreamClock) -> None:
        super().__init__(uri, clock)
        self.fps: float = DEFAULT_FPS  # nominal frames per second (known after open)


class AudioSource(Source):
    """A microphone or replayed WAV file giving mono float chunks (``read() -> AudioChunk | None``)."""

    def __init__(self, uri: SourceURI, clock: StreamClock) -> None:
        super().__init__(uri, clock)
        self.rate: int = 0  # Hz (known after open)


# ------------------------------------------------------------------------------------------- video


class FileVideoSource(VideoSource):
    """Replay a video file or a folder of images (at ``DEFAULT_FPS``), paced or as fast as possible."""

    def __init__(self, uri: SourceURI, clock: StreamClock, *, realtime: bool = True) -> None:
        super().__init__(uri, clock)
        self.realtime = realtime
        self._cap: cv2.VideoCapture | None = None
        self._files: list[Path] = []
        self._i = 0
        self._closed = threading.Event()

    def open(self) -> None:
        path = Path(self.uri.target)
        if not path.exists():
            raise SensorError(f"video source {self.uri.text!r}: no such file or folder; check the path")
        self._closed.clear()
        self._i = 0
        if path.is_dir():
            self._files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
            if not self._files:
                raise SensorError(f"video source {self.uri.text!r}: the folder holds no images "
                                  f"({', '.join(IMAGE_EXTENSIONS)})")
            self.fps = DEFAULT_FPS
            return
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise SensorError(f"video source {self.uri.text!r}: OpenCV cannot open this file; check that "
                              f"it is a complete video in a codec this OpenCV build decodes")
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else DEFAULT_FPS
        self._cap = cap

    def read(self) -> Frame | None:
        t = self._i / self.fps
        if self.realtime and not self.clock.sleep_until(t, self._closed):
            return None  # closed while waiting
        if self._closed.is_set():
            return None
        if self._files:
            if self._i >= len(self._files):
                return None
            img = cv2.imread(str(self._files[self._i]), cv2.IMREAD_COLOR)
            if img is None:
                raise SensorError(f"video source {self.uri.text!r}: cannot read image "
                                  f"{self._files[self._i].name}; check the file")
        else:
            if self._cap is None:
                raise SensorError(f"video source {self.uri.text!r}: read before open")
            ok, img = self._cap.read()
            if not ok or img is None:
                return None
        frame = Frame(image=img, t=t, index=self._i, captured=time.monotonic())
        self._i += 1
        return frame

    def close(self) -> None:
        self._closed.set()
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


def csi_pipeline(sensor_id: int, width: int = 1280, height: int = 720, fps: int = 30) -> str:
    """The GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc), ending in a BGR appsink.

    Args:
        sensor_id: the CSI sensor number (``csi://N``).
        width: capture width in pixels.
        height: capture height in pixels.
        fps: capture frame rate.

    Returns:
        A pipeline string for ``cv2.VideoCapture(..., cv2.CAP_GSTREAMER)``.
    """
    return (
        f"nvarguscamerasrc sensor-id={int(sensor_id)} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1,format=NV12 ! "
        f"nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        f"appsink drop=true max-buffers=2 sync=false"
    )


class CaptureVideoSource(VideoSource):
    """A live camera or stream read through OpenCV: v4l2://N, csi://N, rtsp://..., gst://..."""

    def open(self) -> None:
        s = self.uri.scheme
        if s == "v4l2":
            cap = cv2.VideoCapture(int(self.uri.target), cv2.CAP_V4L2)
            hint = f"that /dev/video{self.uri.target} exists, that you may read it (group 'video'), " \
                   f"and that no other program holds it"
        elif s == "csi":
            cap = cv2.VideoCapture(csi_pipeline(int(self.uri.target)), cv2.CAP_GSTREAMER)
            hint = "that this is a Jetson with the camera connected, nvargus-daemon runs, and OpenCV " \
                   "was built with GStreamer (the pip opencv wheels are not: use the system OpenCV)"
        elif s == "rtsp":
            cap = cv2.VideoCapture(self.uri.target, cv2.CAP_FFMPEG)
            hint = "the address, credentials and that the stream is up (try it in ffplay)"
        elif s == "gst":
            cap = cv2.VideoCapture(self.uri.target, cv2.CAP_GSTREAMER)
            hint = "the pipeline with gst-launch-1.0, and that OpenCV was built with GStreamer"
        else:
            raise SensorError(f"video source {self.uri.text!r}: scheme {s!r} is not a capture device")
        if not cap.isOpened():
            cap.release()
            raise SensorError(f"video source {self.uri.text!r} cannot be opened; check {hint}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and 0 < fps <= 240 else DEFAULT_FPS
        self._cap: cv2.VideoCapture | None = cap
        self._i = 0

    def read(self) -> Frame | None:
        cap = getattr(self, "_cap", None)
        if cap is None:
            raise SensorError(f"video source {self.uri.text!r} is closed")
        try:
            ok, img = cap.read()
        except cv2.error as e:
            raise SensorError(f"video source {self.uri.text!r}: read failed: {e}") from e
        if not ok or img is None:
            raise SensorError(f"video source {self.uri.text!r} stopped delivering frames; check the "
                              f"cable / network and that the device is still present")
        frame = Frame(image=img, t=self.clock.now(), index=self._i, captured=time.monotonic())
        self._i += 1
        return frame

    def close(self) -> None:
        cap, self._cap = getattr(self, "_cap", None), None
        if cap is not None:
            cap.release()


# ------------------------------------------------------------------------------------------- audio


class WavAudioSource(AudioSource):
    """Replay a WAV file (down-mixed to mono) in 20 ms chunks, paced or as fast as possible."""

    def __init__(self, uri: SourceURI, clock: StreamClock, *, realtime: bool = True) -> None:
        super().__init__(uri, clock)
        self.realtime = realtime
        self._mono: np.ndarray | None = None
        self._pos = 0
        self._closed = threading.Event()

    def open(self) -> None:
        try:
            samples, rate = read_audio(self.uri.target)
        except FusionEdgeError as e:
            raise SensorError(f"audio source {self.uri.text!r}: {e}") from e
        self._mono = samples.mean(axis=1).astype(np.float32) if samples.ndim == 2 else samples.astype(np.float32)
        self.rate = int(rate)
        self._pos = 0
        self._closed.clear()

    def read(self) -> AudioChunk | None:
        if self._mono is None:
            raise SensorError(f"audio source {self.uri.text!r}: read before open")
        if self._pos >= self._mono.shape[0] or self._closed.is_set():
            return None
        n = max(1, int(round(CHUNK_SECONDS * self.rate)))
        end = min(self._pos + n, self._mono.shape[0])
        t_end = end / self.rate
        if self.realtime and not self.clock.sleep_until(t_end, self._closed):
            return None
        chunk = AudioChunk(samples=self._mono[self._pos:end].copy(), rate=self.rate, t_end=t_end)
        self._pos = end
        return chunk

    def close(self) -> None:
        self._closed.set()


class MicAudioSource(AudioSource):
    """A microphone through the optional ``sounddevice`` package: ``mic://default``, ``alsa://hw:0,0``."""

    def __init__(self, uri: SourceURI, clock: StreamClock, *, rate: int = 16000) -> None:
        super().__init__(uri, clock)
        self.rate = int(rate)
        self._q: queue.Queue = queue.Queue(maxsize=500)
        self._stream = None

    def open(self) -> None:
        try:
            import sounddevice  # optional: only microphones need it
        except ImportError as e:
            raise SensorError(
                f"audio source {self.uri.text!r} needs the 'sounddevice' package (and PortAudio); install "
                f"it with `pip install sounddevice` (and `apt install libportaudio2`), or use a WAV file"
            ) from e
        target = self.uri.target
        device: str | int | None
        if self.uri.scheme == "mic":
            device = None if target == "default" else (int(target) if target.isdigit() else target)
        else:
            device = target  # ALSA name such as hw:0,0 (PortAudio matches it in the device name)

        def callback(indata, frames, time_info, status):  # runs on the PortAudio thread
            mono = indata.mean(axis=1).astype(np.float32) if indata.ndim == 2 else indata.astype(np.float32)
            try:
                self._q.put_nowait(AudioChunk(samples=mono.copy(), rate=self.rate, t_end=self.clock.now()))
            except queue.Full:
                pass  # the reader is gone; the ring buffer shows the gap

        try:
            self._stream = sounddevice.InputStream(
                device=device, channels=1, samplerate=self.rate, dtype="float32",
                blocksize=int(CHUNK_SECONDS * self.rate), callback=callback)
            self._stream.start()
        except Exception as e:  # PortAudioError / ValueError: wrap at the seam
            raise SensorError(f"audio source {self.uri.text!r} cannot be opened: {e}; check the device name "
                              f"(python -m sounddevice lists them) and that no other program holds it") from e

    def read(self) -> AudioChunk | None:
        if self._stream is None:
            raise SensorError(f"audio source {self.uri.text!r} is closed")
        try:
            return self._q.get(timeout=1.0)
        except queue.Empty as e:
            raise SensorError(f"audio source {self.uri.text!r} delivered nothing for 1 s; check the "
                              f"microphone") from e

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except Exception as e:  # closing a dead device must not take the pipeline down
                log.debug("closing %s: %s", self.uri.text, e)


# ----------------------------------------------------------------------------------------- factory


def open_video_source(uri: str | SourceURI, clock: StreamClock, *, realtime: bool = True) -> VideoSource:
    """Make (not yet opened) the video source a URI names.

    Args:
        uri: a path or URI (see :mod:`fusionedge.sdk.streaming.uri`).
        clock: the pipeline's clock; frames are stamped on it.
        realtime: replay files at their native rate (True) or as fast as possible (False).

    Returns:
        A :class:`VideoSource`; call ``open()`` on it.

    Raises:
        InputError: the URI cannot be parsed.
    """
    u = uri if isinstance(uri, SourceURI) else parse_uri(uri, "video")
    if u.scheme in ("file", "folder"):
        return FileVideoSource(u, clock, realtime=realtime)
    return CaptureVideoSource(u, clock)


def open_audio_source(uri: str | SourceURI, clock: StreamClock, *, realtime: bool = True) -> AudioSource:
    """Make (not yet opened) the audio source a URI names.

    Args:
        uri: a WAV path, ``mic://default`` or ``alsa://hw:0,0``.
        clock: the pipeline's clock.
        realtime: replay files at their native rate (True) or as fast as possible (False).

    Returns:
        An :class:`AudioSource`; call ``open()`` on it.

    Raises:
        InputError: the URI cannot be parsed.
    """
    u = uri if isinstance(uri, SourceURI) else parse_uri(uri, "audio")
    if u.scheme == "file":
        return WavAudioSource(u, clock, realtime=realtime)
    return MicAudioSource(u, clock)
