"""One clock for every sensor, an audio ring buffer, and the synchronizer that assembles a step.

Time convention (as in :mod:`fusionedge.sdk.preprocess`, with the window ending at the current frame):
a step for the frame taken at ``t`` covers the window ``(t - clip_seconds, t]``: the clip's ``T``
frames are spread over it with the current frame last (:func:`clip_frame_indices` positions), and the
audio is the ``clip_seconds`` of samples ending at the same instant ``t``. For a replayed file this is
the offline preprocessing of frame window ``start = (k + 1) / fps - clip_seconds`` and of the audio
window ``start = k / fps - clip_seconds`` (the audio ends at the current frame's capture instant, not
one frame period later, so a live step never waits for audio from the future). A live step may
instead close on the audio that has arrived, ending its window up to ``PipelineConfig.audio_lag``
before the frame (a microphone delivers whole chunks; see :meth:`Synchronizer.audio_window`).

The audio ring maps sample indices to clock time through an anchor (the time of the newest sample).
Each chunk's timestamp is checked against where the samples already written put it:

* within ``tolerance``: sensor-clock drift, corrected slowly (the anchor moves 5% of the error);
* later by more: a **gap** (a dropped USB transfer, a sensor that came back): zeros marked invalid
  fill it, so windows over it report low coverage;
* earlier by more: the sensor clock jumped; the timeline is re-anchored on the new timestamp.

A window whose valid fraction is under ``min_coverage`` is treated as absent (presence 0).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fusionedge.sdk.errors import InputError
from fusionedge.sdk.preprocess import clip_frame_indices, frame_window, preprocess_audio

if TYPE_CHECKING:
    from fusionedge.sdk.spec import InputGeometry

__all__ = ["StreamClock", "AudioRing", "Synchronizer", "AudioWindow"]


class StreamClock:
    """Monotonic seconds since the clock was started; every source stamps on it."""

    def __init__(self) -> None:
        self._epoch = time.monotonic()

    def restart(self) -> None:
        """Make now() 0 again (the pipeline calls this just before its sources start)."""
        self._epoch = time.monotonic()

    def now(self) -> float:
        """Seconds since start, from ``time.monotonic()`` (never goes back)."""
        return time.monotonic() - self._epoch

    def to_monotonic(self, t: float) -> float:
        """The ``time.monotonic()`` value of clock time ``t``."""
        return self._epoch + t

    def sleep_until(self, t: float, cancel: threading.Event | None = None) -> bool:
        """Wait until ``now() >= t``. Returns False if ``cancel`` was set first."""
        while True:
            left = t - self.now()
            if left <= 0:
                return True
            if cancel is not None:
                if cancel.wait(min(left, 0.1)):
                    return False
            else:
                time.sleep(min(left, 0.1))


@dataclass
class AudioWindow:
    """The audio of one step."""

    samples: np.ndarray  # (geometry.audio_samples,) float32, model rate
    coverage: float  # fraction of the window's samples that were really captured, [0, 1]


class AudioRing:
    """A bounded buffer of mono samples with a clock-time mapping; thread-safe.

    Args:
        rate: sample rate in Hz.
        capacity_seconds: how much audio is kept.
        tolerance: seconds of timestamp error accepted as drift before a gap or a re-anchor.
    """

    def __init__(self, rate: int, capacity_seconds: float = 4.0, tolerance: float = 0.04) -> None:
        if int(rate) <= 0 or capacity_seconds <= 0:
            raise InputError(f"AudioRing needs a positive rate and capacity, got {rate!r}, {capacity_seconds!r}")
        self.rate = int(rate)
        self.capacity = int(round(capacity_seconds * self.rate))
        self.tolerance = float(tolerance)
        self._buf = np.zeros(self.capacity, np.float32)
        self._valid = np.zeros(self.capacity, bool)
        self._total = 0  # samples written since creation (absolute index of the next one)
        self._anchor_t: float | None = None  # clock time just after sample _total - 1
        self._cond = threading.Condition()
        self._consumed_t = -np.inf  # offline back-pressure: the consumer is done before this time
        self.closed = False
        self.gaps = 0  # number of gaps filled with zeros
        self.gap_seconds = 0.0
        self.resyncs = 0  # timeline re-anchors (clock jumped back)

    # ------------------------------------------------------------------------------------- writing

    def write(self, samples: np.ndarray, t_end: float, *, wait: threading.Event | None = None) -> None:
        """Append a chunk whose last sample ends at clock time ``t_end``.

        Args:
            samples: ``(S,)`` float32 mono.
            t_end: clock time just after the last sample.
            wait: offline back-pressure: block (until this event is set) while the chunk would
                overwrite audio the consumer has not used yet. None never blocks (live: oldest is lost).
        """
        x = np.asarray(samples, np.float32).reshape(-1)
        n = x.shape[0]
        with self._cond:
            if wait is not None:
                while not wait.is_set() and self._anchor_t is not None and \
                        (self._anchor_t + n / self.rate) - self._consumed_t > self.capacity / self.rate * 0.9:
                    self._cond.wait(0.05)
            if self._anchor_t is None:
                self._anchor_t = t_end - n / self.rate
                self._consumed_t = max(self._consumed_t, self._anchor_t)
            err = t_end - (self._anchor_t + n / self.rate)
            if err > self.tolerance:  # a gap: fill with invalid zeros so the timeline stays true
                missing = int(round(err * self.rate))
                self._append(np.zeros(min(missing, self.capacity), np.float32), valid=False, skip=missing)
                self.gaps += 1
                self.gap_seconds += missing / self.rate
                self._anchor_t = t_end - n / self.rate
            elif err < -self.tolerance:  # the sensor's clock jumped back: re-anchor
                self.resyncs += 1
                self._anchor_t = t_end - n / self.rate
            else:  # drift within tolerance: follow it slowly
                self._anchor_t += 0.05 * err
            self._append(x, valid=True, skip=n)
            self._anchor_t += n / self.rate
            self._cond.notify_all()

    def _append(self, x: np.ndarray, *, valid: bool, skip: int) -> None:
        """Write ``x`` as the last ``len(x)`` of ``skip`` new samples (older ones fall out anyway)."""
        if x.shape[0] > self.capacity:
            x = x[-self.capacity:]
        start = self._total + skip - x.shape[0]
        if skip > x.shape[0]:  # samples that would already have been overwritten: just invalidate
            self._clear(self._total, start)
        idx = np.arange(start, start + x.shape[0]) % self.capacity
        self._buf[idx] = x
        self._valid[idx] = valid
        self._total += skip

    def _clear(self, lo: int, hi: int) -> None:
        hi = min(hi, lo + self.capacity)
        idx = np.arange(lo, hi) % self.capacity
        self._buf[idx] = 0.0
        self._valid[idx] = False

    def close(self) -> None:
        """No more audio will come (end of file): wake every waiter."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        """Audio is coming again (a sensor came back)."""
        with self._cond:
            self.closed = False

    # ------------------------------------------------------------------------------------- reading

    def newest_time(self) -> float:
        """Clock time just after the newest sample (-inf before any)."""
        with self._cond:
            return -np.inf if self._anchor_t is None else self._anchor_t

    def wait_until(self, t: float, timeout: float, cancel: threading.Event | None = None) -> bool:
        """Wait until audio up to clock time ``t`` is in, the ring is closed, or ``timeout`` passes.

        Returns:
            True when the audio up to ``t`` is in.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._anchor_t is None or self._anchor_t < t - 0.5 / self.rate:
                left = deadline - time.monotonic()
                if self.closed or left <= 0 or (cancel is not None and cancel.is_set()):
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def release_before(self, t: float) -> None:
        """The consumer no longer needs audio before clock time ``t`` (lets a blocked writer go on)."""
        with self._cond:
            if t > self._consumed_t:
                self._consumed_t = t
                self._cond.notify_all()

    def extract(self, t_start: float, t_stop: float) -> tuple[np.ndarray, np.ndarray, int]:
        """Samples whose times lie in ``[t_start, t_stop)``, zero and invalid where none was kept.

        Returns:
            ``(samples, valid, first)``: float32 and bool arrays, and the absolute index of the
            first sample (so a window can be placed to the sample).
        """
        with self._cond:
            if self._anchor_t is None:
                return np.zeros(0, np.float32), np.zeros(0, bool), 0
            # absolute index of clock time t: _total - (anchor - t) * rate
            lo = int(round(self._total - (self._anchor_t - t_start) * self.rate))
            hi = int(round(self._total - (self._anchor_t - t_stop) * self.rate))
            hi = max(hi, lo)
            out = np.zeros(hi - lo, np.float32)
            valid = np.zeros(hi - lo, bool)
            a, b = max(lo, self._total - self.capacity, 0), min(hi, self._total)
            if b > a:
                idx = np.arange(a, b) % self.capacity
                out[a - lo:b - lo] = self._buf[idx]
                valid[a - lo:b - lo] = self._valid[idx]
            return out, valid, lo


class Synchronizer:
    """Assembles, per step, the clip of frames and the audio window ending at the same instant.

    Frames are kept preprocessed (``(3, H, W)`` float32, one resize + normalize per frame); a clip
    picks, for each of the ``T`` positions :func:`clip_frame_indices` gives, the kept frame nearest in
    time — so dropped frames and a stream's first second are covered by neighbours.

    Args:
        geometry: the model's input geometry.
        fps: the video's nominal frame rate (sets the window's frame count and period).
        min_coverage: a window with less captured audio than this fraction is absent (presence 0).
    """

    def __init__(self, geometry: "InputGeometry", fps: float, *, min_coverage: float = 0.5) -> None:
        self.geometry = geometry
        self.fps = float(fps)
        self.period = 1.0 / self.fps
        first, stop = frame_window(self.fps, 0.0, geometry.clip_seconds)
        self.window_frames = int(stop - first)  # N frames in one clip window
        idx = clip_frame_indices(self.window_frames, self.fps, geometry)
        self._back = (self.window_frames - 1 - idx).astype(np.int64)  # (T,) frames before the current one
        self.min_coverage = float(min_coverage)
        self._times: deque[float] = deque()
        self._tensors: deque[np.ndarray] = deque()

    def add_frame(self, t: float, tensor: np.ndarray) -> None:
        """Keep a preprocessed frame taken at clock time ``t`` (older than one window are dropped)."""
        if self._times and t <= self._times[-1]:  # out of order or repeated: a camera reset; start over
            self._times.clear()
            self._tensors.clear()
        self._times.append(t)
        self._tensors.append(tensor)
        horizon = t - self.geometry.clip_seconds - 2 * self.period
        while self._times and self._times[0] < horizon:
            self._times.popleft()
            self._tensors.popleft()

    def video_clip(self, t: float, out: np.ndarray | None = None) -> np.ndarray:
        """The ``(T, 3, H, W)`` clip whose current frame is the one at ``t`` (must have been added).

        Raises:
            InputError: no frame has been added.
        """
        g = self.geometry
        items = self.clip_items(t)
        if out is None:
            out = np.empty((len(items), 3, g.height, g.width), np.float32)
        for k, item in enumerate(items):
            out[k] = item
        return out

    def clip_items(self, t: float) -> list:
        """What was added for each of the ``T`` clip positions of the step at ``t``, oldest first.

        :meth:`video_clip` stacks these; a producer that keeps its frames elsewhere (on a GPU) adds
        handles instead of tensors and places them itself.

        Raises:
            InputError: no frame has been added.
        """
        if not self._times:
            raise InputError("no frame in the synchronizer yet")
        times = list(self._times)
        items = []
        for back in self._back:
            target = t - back * self.period
            j = bisect.bisect_left(times, target)
            if j == len(times) or (j > 0 and target - times[j - 1] <= times[j] - target):
                j -= 1
            items.append(self._tensors[j])
        return items

    def window_end(self, t: float) -> float:
        """Clock time at which the step for a frame at ``t`` ends (audio is needed up to here): ``t``."""
        return t

    def audio_window(self, ring: AudioRing | None, t: float, end: float | None = None) -> AudioWindow:
        """The model's audio input for the step of the frame at ``t``, with its captured fraction.

        Args:
            ring: the audio, or None (no audio: zeros, coverage 0).
            t: the step's frame time.
            end: where the window ends instead of :meth:`window_end` (a live step that goes with the
                audio that has arrived, at most ``PipelineConfig.audio_lag`` before ``t``).
        """
        g = self.geometry
        if ring is None:
            return AudioWindow(np.zeros(g.audio_samples, np.float32), 0.0)
        end = self.window_end(t) if end is None else end
        start = end - g.clip_seconds
        # filter context either side for the resampler (none needed at the model's own rate)
        ctx = 0.0 if ring.rate == g.sample_rate else 64.0 / min(ring.rate, g.sample_rate) + 1.0 / ring.rate
        samples, valid, _ = ring.extract(start - ctx, end + ctx)
        offset = int(round(ctx * ring.rate))  # the window starts this many samples into the span
        n_win = int(round(g.clip_seconds * ring.rate))
        win_valid = valid[offset:offset + n_win]
        coverage = float(win_valid.mean()) if win_valid.size else 0.0
        if samples.size == 0:
            return AudioWindow(np.zeros(g.audio_samples, np.float32), 0.0)
        audio = preprocess_audio(samples, ring.rate, g, start_seconds=offset / ring.rate)
        return AudioWindow(audio, coverage)
