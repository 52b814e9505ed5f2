"""Multi-object tracking of the runtime's boxes: ByteTrack, so that a box keeps its identity over frames.

A :class:`~fusionedge.sdk.postprocess.Detection` has no identity: each clip window gives its boxes
afresh. :class:`Tracker` links them into tracks with the ByteTrack algorithm (Zhang et al., "ByteTrack:
Multi-Object Tracking by Associating Every Detection Box", ECCV 2022), following its reference
implementation (``byte_tracker.py``, ``kalman_filter.py``, ``matching.py``):

* each track's box is the state of a Kalman filter with constant velocity in ``(cx, cy, aspect, h)``,
  with noise proportional to the box height;
* the first association matches the confirmed and lost tracks, at their predicted boxes, with the
  high-score detections (score >= ``high_threshold``) by IoU distance (score-fused) and an optimal
  assignment; the second matches the tracks still unmatched with the low-score detections (the
  occluded or blurred objects a plain tracker drops); a track unconfirmed since its first frame
  can match only a high-score detection left over, and is removed otherwise;
* a high-score detection left unmatched starts a track when its score reaches ``new_track_threshold``;
  a track missed by both rounds is lost, kept predicting for ``buffer_seconds`` (an occlusion or a
  detector miss), and removed after that; a lost track that overlaps a tracked one is dropped.

Two changes to the reference: association runs per class (a car never takes a pedestrian's id), and
time is given per update in seconds, so the Kalman filter steps by the true gap between frames
(``dt`` in frames of ``fps``) and the buffer is in seconds; frames may come at an uneven rate.

The assignment solver is SciPy's ``linear_sum_assignment`` (a Jonker-Volgenant variant, the same
problem the reference solves with ``lap.lapjv``): SciPy is maintained, has wheels for x86-64 and
aarch64 and is a JetPack/Debian package, where ``lap`` is a smaller single-maintainer build. It is
the ``tracking`` extra (``pip install 'fusionedge[tracking]'``), imported when a tracker is made.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.postprocess import Detection

__all__ = ["KalmanBoxFilter", "Track", "Tracker", "iou_matrix"]

# Kalman noise, relative to the box height (the reference's values, per frame)
_STD_POSITION = 1.0 / 20
_STD_VELOCITY = 1.0 / 160


class KalmanBoxFilter:
    """Constant-velocity Kalman filter of a box ``(cx, cy, a, h)`` (``a`` = width / height).

    The state is the box and its velocity per frame (8 values); the noise of every term scales with
    the box height, as in ByteTrack's ``kalman_filter.py``. ``predict`` takes the step in frames, so
    an uneven frame rate or a skipped frame moves the box by the right amount.
    """

    def __init__(self) -> None:
        self._update = np.eye(4, 8)

    def initiate(self, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of a new track at ``measurement`` ``(cx, cy, a, h)``, velocity zero."""
        mean = np.r_[measurement, np.zeros(4)]
        h = measurement[3]
        std = [2 * _STD_POSITION * h, 2 * _STD_POSITION * h, 1e-2, 2 * _STD_POSITION * h,
               10 * _STD_VELOCITY * h, 10 * _STD_VELOCITY * h, 1e-5, 10 * _STD_VELOCITY * h]
        return mean, np.diag(np.square(std))

    def predict(self, mean: np.ndarray, covariance: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """Step the state ``dt`` frames ahead (``dt`` > 0)."""
        motion = np.eye(8)
        motion[:4, 4:] = dt * np.eye(4)
        h = mean[3]
        std = [_STD_POSITION * h, _STD_POSITION * h, 1e-2, _STD_POSITION * h,
               _STD_VELOCITY * h, _STD_VELOCITY * h, 1e-5, _STD_VELOCITY * h]
        noise = np.diag(np.square(std)) * dt
        return motion @ mean, motion @ covariance @ motion.T + noise

    def update(self, mean: np.ndarray, covariance: np.ndarray,
               measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Correct the state with a measured box ``(cx, cy, a, h)``."""
        h = mean[3]
        std = [_STD_POSITION * h, _STD_POSITION * h, 1e-1, _STD_POSITION * h]
        projected_mean = self._update @ mean
        projected_cov = self._update @ covariance @ self._update.T + np.diag(np.square(std))
        gain = np.linalg.solve(projected_cov, self._update @ covariance).T
        new_mean = mean + gain @ (measurement - projected_mean)
        new_cov = covariance - gain @ projected_cov @ gain.T
        return new_mean, new_cov


def _xyah(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return np.array([x1 + w / 2, y1 + h / 2, w / h, h], dtype=np.float64)


def _xyxy(state: np.ndarray) -> np.ndarray:
    cx, cy, a, h = state[:4]
    w = a * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float64)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` ``(N, 4)`` with every box in ``b`` ``(M, 4)``, boxes ``x1, y1, x2, y2``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _assign(cost: np.ndarray, limit: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Optimal assignment with costs above ``limit`` forbidden: (pairs, unmatched rows, unmatched cols)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = cost.shape
    if not rows or not cols:
        return [], list(range(rows)), list(range(cols))
    # the reference's lapjv(cost_limit=...): a pair over the limit is never taken
    masked = np.where(cost <= limit, cost, limit + 1.0)
    r, c = linear_sum_assignment(masked)
    pairs = [(int(i), int(j)) for i, j in zip(r, c) if cost[i, j] <= limit]
    used_r = {i for i, _ in pairs}
    used_c = {j for _, j in pairs}
    return pairs, [i for i in range(rows) if i not in used_r], [j for j in range(cols) if j not in used_c]


@dataclass
class Track:
    """One object followed over frames.

    ``box`` is the Kalman-filtered box ``x1, y1, x2, y2`` at ``t_last`` (after the update with its
    detection) in the detections' pixels; ``history`` holds ``(t, box)`` of every frame the track was
    matched in, over the tracker's ``history_seconds``. ``state`` is ``"tracked"`` (matched in the latest
    update), ``"lost"`` (missed, still predicted) or ``"removed"`` (ended). A track is ``confirmed``
    once matched in two frames (or at once when it starts in the tracker's first frame).
    """

    track_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    t_first: float
    t_last: float
    state: str = "tracked"
    confirmed: bool = False
    hits: int = 1
    history: deque[tuple[float, tuple[float, float, float, float]]] = field(default_factory=deque)
    _mean: np.ndarray = field(default_factory=lambda: np.zeros(8), repr=False)
    _cov: np.ndarray = field(default_factory=lambda: np.eye(8), repr=False)
    _t_state: float = 0.0  # the time the Kalman state refers to

    @property
    def height(self) -> float:
        """Height of :attr:`box` in pixels."""
        return self.box[3] - self.box[1]

    def predicted_box(self) -> np.ndarray:
        """The box of the current Kalman state ``(x1, y1, x2, y2)``."""
        return _xyxy(self._mean)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: id, label, score, box, first/last time, state."""
        return {"track_id": self.track_id, "label": self.label, "score": float(self.score),
                "box": [float(v) for v in self.box], "t_first": float(self.t_first),
                "t_last": float(self.t_last), "state": self.state, "confirmed": bool(self.confirmed)}


def _check_detections(detections: Iterable[Detection]) -> list[Detection]:
    out = []
    for i, d in enumerate(detections):
        values = (d.score, d.x1, d.y1, d.x2, d.y2)
        if not all(isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v))
                   for v in values):
            raise InputError(f"detection {i} ({d.label}) has a NaN, Inf or non-number: {values}")
        if d.x2 < d.x1 or d.y2 < d.y1:
            raise InputError(f"detection {i} ({d.label}) has a box of negative size: "
                             f"x1={d.x1} y1={d.y1} x2={d.x2} y2={d.y2}")
        if not 0.0 <= float(d.score) <= 1.0:
            raise InputError(f"detection {i} ({d.label}) has a score outside [0, 1]: {d.score}")
        if d.x2 > d.x1 and d.y2 > d.y1:  # a box clipped to nothing at the frame's edge has nothing to follow
            out.append(d)
    return out


class Tracker:
    """ByteTrack over the runtime's detections, per class (see the module docstring).

    Args:
        fps: the nominal frame rate (> 0); the Kalman filter's step unit and the reference for
            ``buffer_seconds``.
        high_threshold: a detection at or above this score is "high" (first association); below, "low".
        low_threshold: detections below this score are ignored.
        new_track_threshold: an unmatched high detection starts a track at or above this score.
        match_iou: first association: a pair needs IoU >= this (the reference's ``match_thresh`` 0.8
            as a distance is IoU >= 0.2).
        low_match_iou: second association (low detections): IoU >= this.
        unconfirmed_match_iou: a new, unconfirmed track matches a leftover high detection at IoU >= this.
        buffer_seconds: how long a lost track is kept for re-identification.
        history_seconds: how far back each track keeps its matched boxes (for
            :mod:`fusionedge.sdk.track_events`, which fits the last few seconds).

    Raises:
        InputError: a parameter out of range.
        ImportError: SciPy (the ``tracking`` extra) is not installed.
    """

    def __init__(
        self,
        fps: float,
        *,
        high_threshold: float = 0.5,
        low_threshold: float = 0.1,
        new_track_threshold: float = 0.6,
        match_iou: float = 0.2,
        low_match_iou: float = 0.5,
        unconfirmed_match_iou: float = 0.3,
        buffer_seconds: float = 1.0,
        history_seconds: float = 10.0,
    ) -> None:
        import scipy.optimize  # noqa: F401 - fail at construction, not at the first update

        if not (math.isfinite(fps) and fps > 0):
            raise InputError(f"fps must be a finite number > 0, got {fps!r}")
        for name, v in (("high_threshold", high_threshold), ("low_threshold", low_threshold),
                        ("new_track_threshold", new_track_threshold), ("match_iou", match_iou),
                        ("low_match_iou", low_match_iou), ("unconfirmed_match_iou", unconfirmed_match_iou)):
            if not 0.0 <= v <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {v!r}")
        if low_threshold > high_threshold:
            raise InputError(f"low_threshold {low_threshold} is above high_threshold {high_threshold}")
        if not (math.isfinite(buffer_seconds) and buffer_seconds >= 0):
            raise InputError(f"buffer_seconds must be >= 0, got {buffer_seconds!r}")
        if not (math.isfinite(history_seconds) and history_seconds > 0):
            raise InputError(f"history_seconds must be > 0, got {history_seconds!r}")
        self.fps = float(fps)
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.new_track_threshold = new_track_threshold
        self.match_iou = match_iou
        self.low_match_iou = low_match_iou
        self.unconfirmed_match_iou = unconfirmed_match_iou
        self.buffer_seconds = buffer_seconds
        self.history_len = max(2, math.ceil(history_seconds * self.fps) + 1)
        self._kf = KalmanBoxFilter()
        self._tracks: list[Track] = []  # tracked and lost
        self._next_id = 1
        self._t: float | None = None
        self.ended: list[Track] = []  # the tracks removed by the latest update

    @property
    def tracks(self) -> list[Track]:
        """Every live track (tracked and lost), oldest first."""
        return list(self._tracks)

    def update(self, detections: Sequence[Detection], t: float) -> list[Track]:
        """Take one frame's detections at time ``t`` (seconds) and return the confirmed tracks matched in it.

        Args:
            detections: the frame's boxes (any classes), e.g. ``Result.boxes``.
            t: the frame's time in seconds; strictly increasing from call to call.

        Returns:
            The confirmed tracks that were matched in this frame (state ``"tracked"``), by id. The
            tracks that ended in this update are in :attr:`ended`.

        Raises:
            InputError: ``t`` is not finite or not after the previous frame's; a detection has a
                NaN/Inf coordinate or score, a negative size, or a score outside [0, 1]. A box of zero
                width or height (clipped to nothing at the frame's edge) is skipped.
        """
        t = float(t)
        if not math.isfinite(t):
            raise InputError(f"time must be finite, got {t!r}")
        if self._t is not None and t <= self._t:
            raise InputError(f"time must increase from frame to frame: {t} after {self._t}")
        dets = _check_detections(detections)
        first_frame = self._t is None
        self._t = t
        self.ended = []
        for track in self._tracks:
            dt = (t - track._t_state) * self.fps
            if track.state != "tracked":
                track._mean[7] = 0.0  # the reference: a lost track's height stops changing
            track._mean, track._cov = self._kf.predict(track._mean, track._cov, dt)
            track._t_state = t
        labels = sorted({d.label for d in dets} | {tr.label for tr in self._tracks})
        for label in labels:
            self._update_class([d for d in dets if d.label == label],
                               [tr for tr in self._tracks if tr.label == label], t, first_frame)
        for track in self._tracks:
            if track.state == "lost" and t - track.t_last > self.buffer_seconds:
                track.state = "removed"
        self._remove_duplicates()
        self.ended = [tr for tr in self._tracks if tr.state == "removed" and tr.confirmed]
        self._tracks = [tr for tr in self._tracks if tr.state != "removed"]
        out = [tr for tr in self._tracks if tr.state == "tracked" and tr.confirmed and tr.t_last == t]
        return sorted(out, key=lambda tr: tr.track_id)

    def _update_class(self, dets: list[Detection], tracks: list[Track], t: float, first_frame: bool) -> None:
        high = [d for d in dets if d.score >= self.high_threshold]
        low = [d for d in dets if self.low_threshold <= d.score < self.high_threshold]
        pool = [tr for tr in tracks if tr.confirmed]  # tracked and lost
        unconfirmed = [tr for tr in tracks if not tr.confirmed]

        # 1st association: confirmed/lost tracks with the high detections (IoU fused with the score)
        iou = iou_matrix(np.array([tr.predicted_box() for tr in pool]), _boxes(high))
        fused = 1.0 - iou * np.array([d.score for d in high])[None, :] if len(pool) and len(high) else 1.0 - iou
        pairs, left_tracks, left_high = _assign(np.where(iou > 0, fused, 1.0), 1.0 - self.match_iou)
        for i, j in pairs:
            self._match(pool[i], high[j], t)
        # 2nd association: tracks still tracked but unmatched, with the low detections (IoU only)
        rest = [pool[i] for i in left_tracks if pool[i].state == "tracked"]
        iou = iou_matrix(np.array([tr.predicted_box() for tr in rest]), _boxes(low))
        pairs, still, _ = _assign(1.0 - iou, 1.0 - self.low_match_iou)
        for i, j in pairs:
            self._match(rest[i], low[j], t)
        for i in still:
            rest[i].state = "lost"
        # unconfirmed tracks with the high detections left over
        high = [high[j] for j in left_high]
        iou = iou_matrix(np.array([tr.predicted_box() for tr in unconfirmed]), _boxes(high))
        pairs, gone, left_high = _assign(1.0 - iou, 1.0 - self.unconfirmed_match_iou)
        for i, j in pairs:
            self._match(unconfirmed[i], high[j], t)
        for i in gone:
            unconfirmed[i].state = "removed"
        # new tracks
        for j in left_high:
            d = high[j]
            if d.score >= self.new_track_threshold:
                self._start(d, t, confirmed=first_frame)

    def _match(self, track: Track, d: Detection, t: float) -> None:
        track._mean, track._cov = self._kf.update(track._mean, track._cov,
                                                  _xyah(np.array([d.x1, d.y1, d.x2, d.y2])))
        box = tuple(float(v) for v in _xyxy(track._mean))
        track.box = box  # type: ignore[assignment]
        track.score = float(d.score)
        track.t_last = t
        track.hits += 1
        track.state = "tracked"
        track.confirmed = True
        track.history.append((t, box))  # type: ignore[arg-type]

    def _start(self, d: Detection, t: float, confirmed: bool) -> None:
        box = (float(d.x1), float(d.y1), float(d.x2), float(d.y2))
        mean, cov = self._kf.initiate(_xyah(np.array(box)))
        track = Track(track_id=self._next_id, label=d.label, score=float(d.score), box=box, t_first=t,
                      t_last=t, confirmed=confirmed, history=deque([(t, box)], maxlen=self.history_len),
                      _mean=mean, _cov=cov, _t_state=t)
        self._next_id += 1
        self._tracks.append(track)

    def _remove_duplicates(self) -> None:
        """The reference's ``remove_duplicate_stracks``: a tracked and a lost track on one object."""
        tracked = [tr for tr in self._tracks if tr.state == "tracked"]
        lost = [tr for tr in self._tracks if tr.state == "lost"]
        if not tracked or not lost:
            return
        iou = iou_matrix(np.array([tr.predicted_box() for tr in tracked]),
                         np.array([tr.predicted_box() for tr in lost]))
        for i, j in zip(*np.nonzero(iou > 0.85)):
            a, b = tracked[i], lost[j]
            if a.label != b.label:
                continue
            # keep the one followed longer
            if (a.t_last - a.t_first) >= (b.t_last - b.t_first):
                b.state = "removed"
            else:
                a.state = "removed"


def _boxes(dets: list[Detection]) -> np.ndarray:
    return np.array([[d.x1, d.y1, d.x2, d.y2] for d in dets], dtype=np.float64).reshape(-1, 4)
