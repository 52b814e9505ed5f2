"""What a tracked object does: approaching, receding or stationary, time to contact, entry and exit.

A box's height is inversely proportional to the object's distance (a pinhole camera), so the slope of
``ln h`` over time is the object's closing rate ``-d ln(distance)/dt``: positive when it approaches,
negative when it recedes, and its inverse is the time to contact (``TTC = h / (dh/dt)``). The slope is
a least-squares fit over a track's recent history (:func:`scale_rate`), so one jittery box does not
flip the answer, and it comes with its standard error.

A siren's level follows the same distance: by the inverse-distance law its level in dB changes by
``-20 log10(e) = -8.69`` dB per unit of ``d ln(distance)``. :class:`SirenLevels` measures the RMS in the
siren band of each audio window and fits its trend; :func:`estimate_motion` turns that trend into a
second closing-rate estimate and, for the emergency vehicle, combines the two weighted by the inverse
of their variances, which decides the many cases where the box alone is too small or too noisy.

:class:`TrackEventMonitor` reads a :class:`~fusionedge.sdk.tracking.Tracker`'s output frame by frame
and says when a track enters, when it ends, and when its motion changes, as :class:`TrackEvent`
dataclasses whose ``to_dict`` is one JSON line of an ``events.jsonl``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.tracking import Track

__all__ = ["DB_PER_LOG_DISTANCE", "MOTIONS", "MOTION_THRESHOLD", "SIREN_BAND_HZ", "MotionEstimate", "SirenLevels", "TrackEvent",
           "TrackEventMonitor", "estimate_motion", "scale_rate", "siren_band_level_db", "time_to_contact"]

MOTIONS: tuple[str, ...] = ("approaching", "receding", "stationary")
#: The band of a siren's fundamental (wail, yelp, hi-lo: 450-1800 Hz).
SIREN_BAND_HZ: tuple[float, float] = (400.0, 2000.0)
#: dB of level change per unit change of ln(distance) (inverse-distance law): 20 log10(e).
DB_PER_LOG_DISTANCE = 20.0 / math.log(10.0)
#: |closing rate| (1/s) below which an object is stationary: 0.015/s is a time to contact over a minute.
MOTION_THRESHOLD = 0.015
#: Emergency-vehicle label whose motion also reads the siren.
SIREN_LABEL = "emergency_vehicle"


def _fit_slope(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of ``y`` over ``t`` and its standard error (inf with < 3 points)."""
    tc = t - t.mean()
    sxx = float(np.sum(tc * tc))
    if len(t) < 2 or sxx <= 0:
        return 0.0, math.inf
    slope = float(np.sum(tc * (y - y.mean())) / sxx)
    if len(t) < 3:
        return slope, math.inf
    resid = y - y.mean() - slope * tc
    se = math.sqrt(float(np.sum(resid * resid)) / (len(t) - 2) / sxx)
    return slope, max(se, 1e-6)


def scale_rate(history: Iterable[tuple[float, Sequence[float]]], window_s: float = 3.0) -> tuple[float, float, int]:
    """The slope of ``ln(box height)`` over the last ``window_s`` seconds of a track's history.

    Args:
        history: ``(t, (x1, y1, x2, y2))`` per matched frame, oldest first (``Track.history``).
        window_s: how far back to fit, from the newest entry.

    Returns:
        ``(rate, standard_error, samples)``: ``rate`` in 1/s (> 0: growing, approaching); the error is
        inf with fewer than three samples.

    Raises:
        InputError: a height that is not a positive finite number, or times not increasing.
    """
    items = list(history)
    if not items:
        return 0.0, math.inf, 0
    t_end = items[-1][0]
    ts, hs = [], []
    for t, box in items:
        if t < t_end - window_s:
            continue
        h = float(box[3]) - float(box[1])
        if not (math.isfinite(h) and h > 0):
            raise InputError(f"box height must be a positive finite number, got {h!r} at t={t}")
        ts.append(float(t))
        hs.append(h)
    t_arr = np.asarray(ts)
    if np.any(np.diff(t_arr) <= 0):
        raise InputError("history times must increase")
    slope, se = _fit_slope(t_arr, np.log(np.asarray(hs)))
    return slope, se, len(ts)


def time_to_contact(height: float, dh_dt: float) -> float | None:
    """``h / (dh/dt)`` in seconds for a growing box; None when it is not growing.

    Raises:
        InputError: a height that is not positive, or a non-finite value.
    """
    if not (math.isfinite(height) and math.isfinite(dh_dt)) or height <= 0:
        raise InputError(f"height must be > 0 and both finite, got height={height!r}, dh_dt={dh_dt!r}")
    return height / dh_dt if dh_dt > 0 else None


def siren_band_level_db(window: np.ndarray, sample_rate: int, band: tuple[float, float] = SIREN_BAND_HZ) -> float:
    """The RMS level (dB re full scale) of one audio window in the siren band.

    Args:
        window: ``(S,)`` or ``(S, C)`` float samples in [-1, 1] (channels are averaged).
        sample_rate: Hz.
        band: ``(low, high)`` Hz.

    Raises:
        InputError: an empty window, NaN/Inf samples, a bad rate or band.
    """
    x = np.asarray(window, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1 or x.size < 2:
        raise InputError(f"an audio window must be (S,) or (S, C) with S >= 2, got shape {np.shape(window)}")
    if not np.all(np.isfinite(x)):
        raise InputError("the audio window holds NaN or Inf")
    if not sample_rate > 0 or not 0 <= band[0] < band[1]:
        raise InputError(f"bad sample rate {sample_rate!r} or band {band!r}")
    spec = np.fft.rfft(x * np.hanning(x.size))
    freqs = np.fft.rfftfreq(x.size, 1.0 / sample_rate)
    keep = (freqs >= band[0]) & (freqs <= band[1])
    # Parseval with the Hann window's power gain (3/8)
    power = 2.0 * np.sum(np.abs(spec[keep]) ** 2) / (x.size ** 2 * 0.375)
    return 10.0 * math.log10(power + 1e-20)


class SirenLevels:
    """The siren-band level of each audio window as it comes, and the trend of the recent ones.

    Args:
        sample_rate: Hz of the windows.
        keep_seconds: how much level history to keep.
    """

    def __init__(self, sample_rate: int, keep_seconds: float = 10.0) -> None:
        if not sample_rate > 0:
            raise InputError(f"sample_rate must be > 0, got {sample_rate!r}")
        self.sample_rate = int(sample_rate)
        self.keep_seconds = float(keep_seconds)
        self._levels: deque[tuple[float, float]] = deque()

    def add(self, window: np.ndarray, t: float) -> float:
        """Measure the window that ends at ``t`` (seconds) and keep its level; returns the level in dB.

        Raises:
            InputError: as :func:`siren_band_level_db`, or ``t`` not after the previous window's.
        """
        if not math.isfinite(t) or (self._levels and t <= self._levels[-1][0]):
            raise InputError(f"window times must be finite and increase, got {t!r}")
        level = siren_band_level_db(window, self.sample_rate)
        self._levels.append((float(t), level))
        while self._levels and self._levels[0][0] < t - self.keep_seconds:
            self._levels.popleft()
        return level

    def trend(self, t_end: float, window_s: float = 3.0) -> tuple[float, float, int]:
        """``(dB per second, standard error, windows)`` of the levels in ``[t_end - window_s, t_end]``."""
        pts = [(t, v) for t, v in self._levels if t_end - window_s <= t <= t_end]
        if len(pts) < 2:
            return 0.0, math.inf, len(pts)
        arr = np.asarray(pts)
        slope, se = _fit_slope(arr[:, 0], arr[:, 1])
        return slope, se, len(pts)


@dataclass(frozen=True)
class MotionEstimate:
    """A track's motion relative to the camera.

    ``closing_rate`` is ``-d ln(distance)/dt`` in 1/s (> 0: approaching) as used for the decision: the
    box's alone, or the box's and the siren's combined; ``ttc_s`` is its inverse when approaching.
    """

    motion: str  # one of MOTIONS
    closing_rate: float
    ttc_s: float | None
    box_rate: float  # d ln h / dt of the box alone
    siren_db_per_s: float | None  # trend of the siren-band level, when audio was used
    samples: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict."""
        return {"motion": self.motion, "closing_rate": round(self.closing_rate, 5),
                "ttc_s": None if self.ttc_s is None else round(self.ttc_s, 3),
                "box_rate": round(self.box_rate, 5),
                "siren_db_per_s": None if self.siren_db_per_s is None else round(self.siren_db_per_s, 4),
                "samples": self.samples}


def estimate_motion(
    track: Track,
    *,
    window_s: float = 3.0,
    siren: SirenLevels | None = None,
    rate_threshold: float = MOTION_THRESHOLD,
) -> MotionEstimate:
    """Approaching, receding or stationary, from the box's scale rate (and the siren, for the EV).

    Args:
        track: a track with at least two matched frames for a rate (fewer: stationary, no rate).
        window_s: how much recent history to fit.
        siren: the siren-band levels of the audio; read only for an ``emergency_vehicle`` track.
        rate_threshold: ``|closing rate|`` (1/s) below which the object is stationary.

    Raises:
        InputError: a bad history (see :func:`scale_rate`).
    """
    t_end = track.history[-1][0] if track.history else track.t_last
    rate, se, n = scale_rate(track.history, window_s)
    closing, siren_slope = rate, None
    if siren is not None and track.label == SIREN_LABEL:
        slope, s_se, m = siren.trend(t_end, window_s)
        if m >= 3 and math.isfinite(s_se):
            siren_slope = slope
            a_rate, a_se = slope / DB_PER_LOG_DISTANCE, s_se / DB_PER_LOG_DISTANCE
            if math.isfinite(se):
                wv, wa = 1.0 / se**2, 1.0 / a_se**2
                closing = (wv * rate + wa * a_rate) / (wv + wa)
            else:
                closing = a_rate
    if n < 2 and siren_slope is None:
        return MotionEstimate("stationary", 0.0, None, 0.0, None, n)
    if closing > rate_threshold:
        motion = "approaching"
    elif closing < -rate_threshold:
        motion = "receding"
    else:
        motion = "stationary"
    ttc = 1.0 / closing if motion == "approaching" else None
    return MotionEstimate(motion, float(closing), ttc, float(rate), siren_slope, n)


@dataclass(frozen=True)
class TrackEvent:
    """Something that happened to a track: ``entry``, ``exit`` or ``motion`` (its motion changed)."""

    kind: str  # "entry" | "exit" | "motion"
    t: float
    track_id: int
    label: str
    box: tuple[float, float, float, float]
    motion: MotionEstimate | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict, one line of an ``events.jsonl``."""
        out: dict[str, Any] = {"event": f"track_{self.kind}", "t": round(self.t, 4), "track_id": self.track_id,
                               "label": self.label, "box": [round(float(v), 2) for v in self.box]}
        if self.motion is not None:
            out.update(self.motion.to_dict())
        return out


class TrackEventMonitor:
    """Turns the tracker's output, frame by frame, into entry, exit and motion-change events.

    Args:
        window_s: history fitted for the motion (see :func:`estimate_motion`).
        min_seconds: a track's motion is first reported once it has been followed this long.
        rate_threshold: see :func:`estimate_motion`.
    """

    def __init__(self, window_s: float = 3.0, min_seconds: float = 1.0, rate_threshold: float = MOTION_THRESHOLD) -> None:
        self.window_s = window_s
        self.min_seconds = min_seconds
        self.rate_threshold = rate_threshold
        self._seen: set[int] = set()
        self._motion: dict[int, str] = {}
        self.latest: dict[int, MotionEstimate] = {}  # the newest estimate per live track

    def update(self, tracks: Sequence[Track], ended: Sequence[Track], t: float,
               siren: SirenLevels | None = None) -> list[TrackEvent]:
        """The events of one frame: ``tracks`` from ``Tracker.update``, ``ended`` its ``Tracker.ended``."""
        events: list[TrackEvent] = []
        for tr in tracks:
            if tr.track_id not in self._seen:
                self._seen.add(tr.track_id)
                events.append(TrackEvent("entry", t, tr.track_id, tr.label, tr.box))
            if tr.t_last - tr.t_first < self.min_seconds:
                continue
            est = estimate_motion(tr, window_s=self.window_s, siren=siren, rate_threshold=self.rate_threshold)
            self.latest[tr.track_id] = est
            if self._motion.get(tr.track_id) != est.motion:
                self._motion[tr.track_id] = est.motion
                events.append(TrackEvent("motion", t, tr.track_id, tr.label, tr.box, est))
        for tr in ended:
            if tr.track_id in self._seen:
                events.append(TrackEvent("exit", t, tr.track_id, tr.label, tr.box, self.latest.get(tr.track_id)))
                self._seen.discard(tr.track_id)
                self._motion.pop(tr.track_id, None)
                self.latest.pop(tr.track_id, None)
        return events
