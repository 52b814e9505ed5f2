"""Where streaming results go: an annotated video file, a JSONL event log, a Python callback.

A sink has ``write(result)``, ``on_health(event)`` and ``close()``; the pipeline calls them from its
one sink thread, in order, and closes every sink at shutdown (also on Ctrl-C), so files are complete.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import cv2

from fusionedge.sdk.annotate import draw_result
from fusionedge.sdk.errors import InputError, MediaError
from fusionedge.sdk.fileio import dumps_json
from fusionedge.sdk.streaming.health import HealthEvent
from fusionedge.sdk.streaming.pipeline import StreamResult

__all__ = ["Sink", "VideoFileSink", "JsonlEventSink", "CallbackSink"]


class Sink(ABC):
    """Receives results (and sensor state changes) from a pipeline."""

    @abstractmethod
    def write(self, result: StreamResult) -> None:
        """Handle one result."""

    def on_health(self, event: HealthEvent) -> None:
        """Handle a sensor state change (default: ignore)."""

    def close(self) -> None:
        """Flush and release (idempotent)."""


class VideoFileSink(Sink):
    """Write each result's frame, annotated with :func:`~fusionedge.sdk.annotate.draw_result`, to a video.

    Boxes carry their track ids when a :class:`~fusionedge.sdk.streaming.tracks.TrackSink` runs before it.

    Results without a frame (video missing) are skipped. The size is fixed by the first frame; later
    frames of another size are resized to it.

    Args:
        path: output file (``.mp4`` with the mp4v codec, ``.avi`` with MJPG).
        fps: frame rate written in the file.

    Raises:
        InputError: fps not > 0.
    """

    def __init__(self, path: str | os.PathLike, fps: float) -> None:
        if not fps > 0:
            raise InputError(f"fps must be > 0, got {fps!r}")
        self.path = Path(path)
        self.fps = float(fps)
        self.frames_written = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, result: StreamResult) -> None:
        if result.frame is None:
            return
        img = draw_result(result.frame, result.result, result.tracks)
        if self._writer is None:
            h, w = img.shape[:2]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                raise MediaError(f"{self.path}: OpenCV cannot write this video; check the folder and suffix")
            self._size = (w, h)
        if (img.shape[1], img.shape[0]) != self._size:
            img = cv2.resize(img, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(img)
        self.frames_written += 1

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()  # writes the index: the file plays only after this


class JsonlEventSink(Sink):
    """Append one JSON object per line: ``{"type": "result", ...}`` and ``{"type": "health", ...}``.

    Each line is flushed as it is written, so a reader (or a crash) sees whole lines only. Lines are
    strict JSON (:func:`~fusionedge.sdk.fileio.dumps_json`: an undefined score is ``null``, not NaN).

    Args:
        path: the ``.jsonl`` file (created or truncated).
        every: write every n-th result only (health lines always), >= 1.
    """

    def __init__(self, path: str | os.PathLike, *, every: int = 1) -> None:
        if int(every) < 1:
            raise InputError(f"every must be >= 1, got {every!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.every = int(every)
        self.lines = 0
        self._lock = threading.Lock()  # several cameras' pipelines may share one log
        self._f = open(self.path, "w", encoding="utf-8")

    def _line(self, obj: dict) -> None:
        with self._lock:
            if self._f is None:
                return
            self._f.write(dumps_json(obj, indent=None) + "\n")
            self._f.flush()
            self.lines += 1

    def write_event(self, event: dict) -> None:
        """Write another kind of line (e.g. a track event: ``{"type": "track", ...}``) as it comes."""
        self._line(event)

    def write(self, result: StreamResult) -> None:
        if result.index % self.every == 0:
            self._line(result.to_dict())

    def on_health(self, event: HealthEvent) -> None:
        self._line(event.to_dict())

    def close(self) -> None:
        with self._lock:
            f, self._f = self._f, None
        if f is not None:
            f.flush()
            os.fsync(f.fileno())
            f.close()


class CallbackSink(Sink):
    """Call a function with each :class:`StreamResult` (and optionally each health event).

    Args:
        on_result: called with each result on the pipeline's sink thread; keep it quick.
        on_health: optional, called with each :class:`HealthEvent`.
    """

    def __init__(self, on_result: Callable[[StreamResult], None],
                 on_health: Callable[[HealthEvent], None] | None = None) -> None:
        self._on_result = on_result
        self._on_health = on_health

    def write(self, result: StreamResult) -> None:
        self._on_result(result)

    def on_health(self, event: HealthEvent) -> None:
        if self._on_health is not None:
            self._on_health(event)
