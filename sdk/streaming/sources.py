"""Video and audio sources opened from URIs; a camera loop and a file replay are the same code.

Every source has ``open()``, ``read()`` and ``close()``. ``read()`` blocks until the next frame (or
audio chunk) and returns it stamped on the shared :class:`~fusionedge.sdk.streaming.clock.StreamClock`;
it returns ``None`` at the end of a replayed file and raises :class:`SensorError` when a sensor fails.
``close()`` may be called from another thread to unblock a ``read()``. ``open()`` raises
:class:`SensorError` for what may pass (a camera not there yet, a stream down) and any other
:class:`~fusionedge.sdk.errors.FusionEdgeError` for what will not (a missing file, a path that is not a
regular file, a scheme this OpenCV build cannot open): the supervisor retries the first kind only.

File replay runs at the file's native rate (``realtime=True``: frame ``i`` is released at ``i / fps``
on the clock) or as fast as it is read (``realtime=False``); either way a frame is stamped with its
container time (its presentation timestamp through PyAV, ``i / fps`` for a constant-rate file, see
:class:`~fusionedge.sdk.media.FrameTimes`) and audio sample ``j`` sits at ``j / rate``, so replay lines
up with offline inference. An audio file — WAV, FLAC, OGG, MP3, or the sound track of the replayed
video itself (:func:`~fusionedge.sdk.media.open_audio`) — is read chunk by chunk, never whole, on the
same time line as that video's frames.
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
from fusionedge.sdk import media_av
from fusionedge.sdk.errors import InputError, MediaError, SensorError
from fusionedge.sdk.media import (
    DEFAULT_FPS,
    IMAGE_EXTENSIONS,
    AudioReader,
    FrameTimes,
    open_audio,
    regular_file,
)
from fusionedge.sdk.streaming.clock import StreamClock
from fusionedge.sdk.streaming.uri import SourceURI, parse_uri

__all__ = [
    "AudioChunk",
    "AudioSource",
    "CaptureVideoSource",
    "FileAudioSource",
    "FileVideoSource",
    "Frame",
    "MicAudioSource",
    "VideoSource",
    "WavAudioSource",
    "csi_pipeline",
    "gstreamer_available",
    "open_audio_source",
    "open_video_source",
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
    """A microphone or replayed audio file giving mono float chunks (``read() -> AudioChunk | None``)."""

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
        self._av: media_av.ContainerVideo | None = None  # the file through PyAV, where installed
        self._av_frames: Any = None
        self._av_lock = threading.Lock()  # close() from another thread waits for the frame being decoded
        self._files: list[Path] = []
        self._times = FrameTimes(DEFAULT_FPS)
        self._i = 0
        self._closed = threading.Event()

    def open(self) -> None:
        """Open the file or folder.

        Raises:
            MediaError: the path is missing, is not a regular file or folder, the folder holds no
                images, or OpenCV cannot open the file (none of these pass by retrying).
        """
        path = Path(self.uri.target)
        self._closed.clear()
        self._i = 0
        if path.is_dir():
            self._files = sorted(f for f in path.iterdir()
                                 if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not self._files:
                raise MediaError(f"video source {self.uri.text!r}: the folder holds no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
            self.fps = DEFAULT_FPS
            return
        regular_file(path, "video file")  # its message names the path
        if media_av.available():
            try:
                video = media_av.ContainerVideo(path)
            except media_av.UnreadableMedia as e:
                log.debug("%s: %s; trying OpenCV", path, e)
            else:
                self.fps, self._av = video.fps, video
                self._av_frames = video.frames()
                return
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise MediaError(f"video source {self.uri.text!r}: OpenCV cannot open this file; check that "
                             f"it is a complete video in a codec this OpenCV build decodes")
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else DEFAULT_FPS
        self._times = FrameTimes(self.fps)
        self._cap = cap

    def read(self) -> Frame | None:
        if self._files:
            t = self._i / self.fps
            if self.realtime and not self.clock.sleep_until(t, self._closed):
                return None  # closed while waiting
            if self._closed.is_set() or self._i >= len(self._files):
                return None
            img = cv2.imread(str(self._files[self._i]), cv2.IMREAD_COLOR)
            if img is None:
                raise SensorError(f"video source {self.uri.text!r}: cannot read image "
                                  f"{self._files[self._i].name}; check the file")
        elif self._av is not None:
            if self._closed.is_set():
                return None
            with self._av_lock:
                if self._av is None:
                    return None  # closed meanwhile
                try:
                    t, decoded = next(self._av_frames)
                except StopIteration:
                    return None
                img = media_av.frame_to_array(decoded, "bgr")
            if self.realtime and not self.clock.sleep_until(t, self._closed):
                return None
        else:
            cap = self._cap
            if self._closed.is_set():
                return None
            if cap is None:
                raise SensorError(f"video source {self.uri.text!r}: read before open")
            ok, img = cap.read()
            if not ok or img is None:
                return None
            t = self._times.next(cap)  # the container's time: a variable-rate file stays in step
            if self.realtime and not self.clock.sleep_until(t, self._closed):
                return None
        frame = Frame(image=img, t=t, index=self._i, captured=time.monotonic())
        self._i += 1
        return frame

    def close(self) -> None:
        self._closed.set()
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()
        with self._av_lock:
            video, self._av, self._av_frames = self._av, None, None
        if video is not None:
            video.close()


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


def gstreamer_available() -> bool:
    """True when this OpenCV build can open GStreamer pipelines (``csi://``, ``gst://``)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return line.split(":", 1)[1].strip().upper().startswith("YES")
    return False


class CaptureVideoSource(VideoSource):
    """A live camera or stream read through OpenCV: v4l2://N, csi://N, rtsp://..., gst://...

    Args:
        uri: the parsed URI.
        clock: the stream clock.
        timeout: seconds an RTSP stream may take to deliver each frame (FFmpeg's read timeout; its
            open timeout is twice that plus 1 s, so that the supervisor, which gives an open
            ``timeout`` seconds, reports first and the abandoned open ends soon after); None for
            FFmpeg's defaults (about 30 s).
    """

    def __init__(self, uri: SourceURI, clock: StreamClock, *, timeout: float | None = None) -> None:
        super().__init__(uri, clock)
        self.timeout = timeout
        self._cap: cv2.VideoCapture | None = None
        self._i = 0
        self._generation = 0  # counts close() calls: an open() that outlived a close() drops its capture
        self._lock = threading.Lock()

    def open(self) -> None:
        """Open the device or stream.

        Raises:
            SensorError: the device or stream cannot be opened now (retried).
            InputError: the scheme needs GStreamer and this OpenCV build has none (not retried).
        """
        s = self.uri.scheme
        with self._lock:
            generation = self._generation
        if s in ("csi", "gst") and not gstreamer_available():
            raise InputError(f"video source {self.uri.text!r}: this OpenCV build has no GStreamer support, "
                             f"so {s}:// cannot be opened; install an OpenCV built with GStreamer (on a "
                             f"Jetson the system OpenCV, not the pip wheel)")
        if s == "v4l2":
            cap = cv2.VideoCapture(int(self.uri.target), cv2.CAP_V4L2)
            hint = f"that /dev/video{self.uri.target} exists, that you may read it (group 'video'), " \
                   f"and that no other program holds it"
        elif s == "csi":
            cap = cv2.VideoCapture(csi_pipeline(int(self.uri.target)), cv2.CAP_GSTREAMER)
            hint = "that this is a Jetson with the camera connected and nvargus-daemon runs"
        elif s == "rtsp":
            params: list[int] = []
            if self.timeout is not None:  # FFmpeg gives up a little after the supervisor reports
                ms = max(1, int(self.timeout * 1000))
                params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 2 * ms + 1000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(self.uri.target, cv2.CAP_FFMPEG, params)
            hint = "the address, credentials and that the stream is up (try it in ffplay)"
        elif s == "gst":
            cap = cv2.VideoCapture(self.uri.target, cv2.CAP_GSTREAMER)
            hint = "the pipeline with gst-launch-1.0"
        else:
            raise InputError(f"video source {self.uri.text!r}: scheme {s!r} is not a capture device")
        if not cap.isOpened():
            cap.release()
            raise SensorError(f"video source {self.uri.text!r} cannot be opened; check {hint}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        with self._lock:
            if generation != self._generation:  # closed while opening: the caller has given up on it
                cap.release()
                raise SensorError(f"video source {self.uri.text!r} was closed while it opened")
            self.fps = float(fps) if fps and np.isfinite(fps) and 0 < fps <= 240 else DEFAULT_FPS
            self._cap = cap
            self._i = 0

    def read(self) -> Frame | None:
        cap = self._cap
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
        with self._lock:
            self._generation += 1
            cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


# ------------------------------------------------------------------------------------------- audio


class FileAudioSource(AudioSource):
    """Replay an audio file (down-mixed to mono) in 20 ms chunks, paced or as fast as possible.

    Any file :func:`~fusionedge.sdk.media.open_audio` reads: WAV, FLAC, OGG, MP3, or the sound track of
    a video (mp4, mkv, mov), whose sample ``j`` sits at ``j / rate`` from the video's first frame. The
    file is read chunk by chunk (a container is decoded on as it goes, never sought back), so an
    hour-long recording costs the memory of one chunk.
    """

    def __init__(self, uri: SourceURI, clock: StreamClock, *, realtime: bool = True) -> None:
        super().__init__(uri, clock)
        self.realtime = realtime
        self._reader: AudioReader | None = None
        self._pos = 0
        self._closed = threading.Event()
        self._lock = threading.Lock()  # close() from another thread must not close the file mid-read

    def open(self) -> None:
        """Open the audio file.

        Raises:
            MediaError: the file is missing, not a regular file, not audio (or a video without sound),
                holds no samples, or needs ``fusionedge[media]`` which is not installed.
        """
        reader = open_audio(self.uri.target)  # its errors name the path
        if reader.frames == 0 and not isinstance(reader, media_av.ContainerAudio):
            reader.close()
            raise MediaError(f"audio source {self.uri.text!r}: the file holds no audio samples")
        with self._lock:
            self._reader, self.rate, self._pos = reader, int(reader.rate), 0
        self._closed.clear()

    def read(self) -> AudioChunk | None:
        reader = self._reader
        if reader is None:
            if self._closed.is_set():
                return None
            raise SensorError(f"audio source {self.uri.text!r}: read before open")
        exact = not isinstance(reader, media_av.ContainerAudio)  # a container's length is its claim
        if (exact and self._pos >= reader.frames) or self._closed.is_set():
            return None
        n = max(1, round(CHUNK_SECONDS * self.rate))
        end = min(self._pos + n, reader.frames) if exact else self._pos + n
        if self.realtime and not self.clock.sleep_until(end / self.rate, self._closed):
            return None
        with self._lock:
            if self._reader is None:
                return None  # closed meanwhile
            try:
                block = reader.read(self._pos, end - self._pos)  # (n, C)
            except MediaError as e:
                raise SensorError(f"audio source {self.uri.text!r}: {e}") from e
        if block.shape[0] == 0:
            return None  # the end of the track
        end = self._pos + block.shape[0]
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0].copy()
        chunk = AudioChunk(samples=mono.astype(np.float32, copy=False), rate=self.rate, t_end=end / self.rate)
        self._pos = end
        return chunk

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()


#: The name this source had when it read WAV files only.
WavAudioSource = FileAudioSource


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
            except Exception as e:  # noqa: BLE001 - closing a dead device must not take the pipeline down
                log.debug("closing %s: %s", self.uri.text, e)


# ----------------------------------------------------------------------------------------- factory


def open_video_source(uri: str | SourceURI, clock: StreamClock, *, realtime: bool = True,
                      timeout: float | None = None) -> VideoSource:
    """Make (not yet opened) the video source a URI names.

    Args:
        uri: a path or URI (see :mod:`fusionedge.sdk.streaming.uri`).
        clock: the pipeline's clock; frames are stamped on it.
        realtime: replay files at their native rate (True) or as fast as possible (False).
        timeout: seconds a network stream may take to open or to deliver a frame (None: FFmpeg's).

    Returns:
        A :class:`VideoSource`; call ``open()`` on it.

    Raises:
        InputError: the URI cannot be parsed.
    """
    u = uri if isinstance(uri, SourceURI) else parse_uri(uri, "video")
    if u.scheme in ("file", "folder"):
        return FileVideoSource(u, clock, realtime=realtime)
    return CaptureVideoSource(u, clock, timeout=timeout)


def open_audio_source(uri: str | SourceURI, clock: StreamClock, *, realtime: bool = True,
                      rate: int = 16000) -> AudioSource:
    """Make (not yet opened) the audio source a URI names.

    Args:
        uri: an audio file (WAV, FLAC, OGG, MP3, or a video whose sound to replay), ``mic://default``
            or ``alsa://hw:0,0``.
        clock: the pipeline's clock.
        realtime: replay files at their native rate (True) or as fast as possible (False).
        rate: Hz a microphone is captured at (the bundle's ``sample_rate``); a file keeps its own.

    Returns:
        An :class:`AudioSource`; call ``open()`` on it.

    Raises:
        InputError: the URI cannot be parsed.
    """
    u = uri if isinstance(uri, SourceURI) else parse_uri(uri, "audio")
    if u.scheme == "file":
        return FileAudioSource(u, clock, realtime=realtime)
    return MicAudioSource(u, clock, rate=rate)
