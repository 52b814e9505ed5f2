"""One annotated video of several cameras: a grid of tiles, one per camera, written beside the stream.

A :class:`MosaicSink` is shared by the cameras of a :class:`~fusionedge.sdk.streaming.multi.MultiPipeline`.
Its ``write`` only hands the result to the mosaic's own writer thread through a bounded queue, so a
slow encoder never holds up a camera: under the ``live`` policy a full queue drops its oldest result
(counted in :attr:`MosaicSink.dropped`), under ``offline`` it waits, as the pipeline's own queues do.
The writer lays the output on the cameras' shared stream clock: mosaic frame ``k`` shows, for each
camera, its newest result at or before the frame's time, drawn by
:func:`~fusionedge.sdk.annotate.draw_tile` (boxes, track ids when the camera is tracked, event, tags,
the camera's name); a camera whose video is down (past its last result), or whose newest result is
older than ``stale_after`` seconds, is a "no signal" tile (:func:`~fusionedge.sdk.annotate.no_signal_tile`).
Frames are written once the newest result of any camera is ``lag`` seconds past them, so a camera that
stopped never holds the mosaic back. Memory is bounded: the queue, and the last few results per camera.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.sdk.annotate import draw_tile, no_signal_tile
from fusionedge.sdk.errors import InputError, MediaError
from fusionedge.sdk.streaming.health import OK, HealthEvent
from fusionedge.sdk.streaming.pipeline import StreamResult
from fusionedge.sdk.streaming.queues import POLICIES
from fusionedge.sdk.streaming.sinks import Sink

__all__ = ["MosaicSink", "grid_shape"]


def grid_shape(cameras: int, columns: int | None = None) -> tuple[int, int]:
    """``(rows, columns)`` of the mosaic: ``columns`` as given, else the smallest square that holds them.

    Raises:
        InputError: no cameras, or columns < 1.
    """
    if cameras < 1:
        raise InputError(f"a mosaic needs at least one camera, got {cameras}")
    cols = math.ceil(math.sqrt(cameras)) if columns is None else int(columns)
    if cols < 1:
        raise InputError(f"columns must be >= 1, got {columns!r}")
    cols = min(cols, cameras)
    return math.ceil(cameras / cols), cols


class MosaicSink(Sink):
    """Write several cameras' annotated frames as one grid video.

    Args:
        path: the output file (``.mp4`` with mp4v, ``.avi`` with MJPG).
        cameras: the cameras' names, in grid order (left to right, top to bottom).
        fps: the mosaic's frame rate, or a callable giving it at the first result (a camera's rate is
            known once it is open).
        tile: each tile's (width, height) in pixels.
        columns: grid columns (default: a square).
        policy: ``live`` drops the oldest queued result when the writer falls behind; ``offline`` waits.
        stale_after: seconds of stream time after a camera's newest result before its tile says no signal.
        lag: seconds of stream time a frame waits for the other cameras' results before it is written.
        queue_size: results queued for the writer (default: 4 per camera).

    Raises:
        InputError: no or duplicate cameras, a bad tile size, policy, fps or time.
    """

    def __init__(self, path: str | os.PathLike, cameras: Sequence[str], fps: float | Callable[[], float], *,
                 tile: tuple[int, int] = (480, 270), columns: int | None = None, policy: str = "live",
                 stale_after: float = 1.0, lag: float = 0.25, queue_size: int | None = None) -> None:
        cameras = [str(c) for c in cameras]
        if len(set(cameras)) != len(cameras):
            raise InputError(f"mosaic cameras must be unique, got {cameras}")
        self.rows, self.columns = grid_shape(len(cameras), columns)
        tw, th = (int(v) for v in tile)
        if tw < 16 or th < 16 or tw % 2 or th % 2:
            raise InputError(f"tile must be even sides of at least 16 pixels, got {tile!r}")
        if policy not in POLICIES:
            raise InputError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if not (stale_after > 0 and lag >= 0):
            raise InputError(f"stale_after must be > 0 and lag >= 0, got {stale_after!r}, {lag!r}")
        self.path = Path(path)
        self.cameras = cameras
        self.tile = (tw, th)
        self.policy = policy
        self.stale_after, self.lag = float(stale_after), float(lag)
        self.max_queue = int(queue_size) if queue_size is not None else 4 * len(cameras)
        if self.max_queue < 1:
            raise InputError(f"queue_size must be >= 1, got {queue_size!r}")
        self._fps_source = fps
        self.fps: float | None = None
        self.frames_written = 0
        self.dropped = 0
        self.no_signal_tiles = 0
        self._cond = threading.Condition()
        self._queue: deque[StreamResult] = deque()
        self._closing = False
        self._error: BaseException | None = None
        self._down: dict[str, str] = {}  # camera -> its video's state while not ok
        self._recent: dict[str, deque] = {}  # camera -> its newest results, over ``lag`` and a few frames
        self._tiles: dict[str, tuple[int, np.ndarray]] = {}  # camera -> (result index, drawn tile)
        self._writer: Any = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------------------------- the sink

    def write(self, result: StreamResult) -> None:
        """Queue a camera's result for the mosaic (never waits under ``live``).

        Raises:
            MediaError: the writer thread failed (the pipeline then reports and disables this sink).
            InputError: a result of a camera that is not in the mosaic.
        """
        self._raise_error()
        if result.frame is None:
            return
        if result.camera not in self.cameras:
            raise InputError(f"mosaic: result of camera {result.camera!r}, not one of {', '.join(self.cameras)}")
        with self._cond:
            if self._thread is None:
                fps = self._fps_source() if callable(self._fps_source) else self._fps_source
                if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
                    raise InputError(f"mosaic fps must be > 0, got {fps!r}")
                self.fps = float(fps)
                keep = math.ceil(self.lag * self.fps) + 4  # the writer works up to ``lag`` behind the newest
                self._recent = {c: deque(maxlen=keep) for c in self.cameras}
                self._thread = threading.Thread(target=self._loop, name="mosaic", daemon=True)
                self._thread.start()
            while len(self._queue) >= self.max_queue:
                if self.policy == "live":
                    self._queue.popleft()
                    self.dropped += 1
                else:
                    self._cond.wait(0.1)
                    if self._error is not None:
                        break
            self._queue.append(result)
            self._cond.notify_all()

    def on_health(self, event: HealthEvent) -> None:
        """A camera whose video is not ``ok`` shows no signal until it is again."""
        if event.modality != "video" or event.camera not in self.cameras:
            return
        with self._cond:
            if event.state in (OK, "starting"):
                self._down.pop(event.camera, None)
            else:
                self._down[event.camera] = event.state

    def close(self) -> None:
        """Write the frames still due, then finish the file (idempotent).

        Raises:
            MediaError: the writer failed.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()
        self._raise_error()

    # ------------------------------------------------------------------------------ the writer

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise MediaError(f"{self.path}: the mosaic writer failed: {err}") from err

    def _loop(self) -> None:
        period = 1.0 / self.fps  # type: ignore[operator]
        next_t: float | None = None
        newest = -math.inf
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait(0.1)
                    if not self._queue:
                        break
                    result = self._queue.popleft()
                    self._cond.notify_all()
                self._recent[result.camera].append(result)  # type: ignore[index]
                newest = max(newest, result.t)
                if next_t is None:
                    next_t = result.t
                while next_t <= newest - self.lag + 1e-9:
                    self._emit(next_t, period)
                    next_t += period
            while next_t is not None and next_t <= newest + 1e-9:  # closing: the frames still due
                self._emit(next_t, period)
                next_t += period
        except BaseException as e:  # noqa: BLE001 - handed to the pipeline through write()/close()
            with self._cond:
                self._error = e
                self._queue.clear()
                self._cond.notify_all()

    def _emit(self, t: float, period: float) -> None:
        tw, th = self.tile
        grid = np.zeros((self.rows * th, self.columns * tw, 3), np.uint8)
        with self._cond:
            down = dict(self._down)
        for i, camera in enumerate(self.cameras):
            r, c = divmod(i, self.columns)
            grid[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = self._tile(camera, t, period, down.get(camera))
        if self._writer is None:
            import cv2

            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (grid.shape[1], grid.shape[0]))
            if not self._writer.isOpened():
                self._writer = None
                raise MediaError(f"{self.path}: OpenCV cannot write this video; check the folder and suffix")
        self._writer.write(grid)
        self.frames_written += 1

    def _tile(self, camera: str, t: float, period: float, down: str | None) -> np.ndarray:
        shown = None
        for result in reversed(self._recent[camera]):  # the newest at or before the frame's time
            if result.t <= t + period / 2:
                shown = result
                break
        recent = self._recent[camera]  # the newest results of this camera, oldest first
        # a sensor's state change reaches the sinks ahead of the results still in the queues: a camera
        # that went down keeps its last frames until the mosaic's time passes them
        gone = down is not None and (not recent or t > recent[-1].t + period)
        if gone or shown is None or t - shown.t > self.stale_after:
            self.no_signal_tiles += 1
            return no_signal_tile(self.tile, camera, "no signal" if down is None else f"no signal ({down})")
        cached = self._tiles.get(camera)
        if cached is not None and cached[0] == shown.index:
            return cached[1]
        tile = draw_tile(shown.frame, shown.result, self.tile, camera, shown.tracks)  # type: ignore[arg-type]
        self._tiles[camera] = (shown.index, tile)
        return tile
