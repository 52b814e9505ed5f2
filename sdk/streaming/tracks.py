"""Tracks in the stream: ByteTrack per camera on each result's boxes, and track events in the event log.

A :class:`TrackSink` is a sink like the others: the pipeline hands it every result in order, it runs a
:class:`~fusionedge.sdk.tracking.Tracker` on the result's boxes at the result's stream time, and a
:class:`~fusionedge.sdk.track_events.TrackEventMonitor` turns the tracks into entry, exit and motion
events (approaching / receding / stationary, time to contact), written as ``{"type": "track", ...}``
lines to a :class:`~fusionedge.sdk.streaming.sinks.JsonlEventSink`. The audio window of each result
(the camera's microphone, shared by every camera that hears it) feeds the siren-band levels that the
emergency vehicle's motion estimate combines with its box. One TrackSink per camera: track ids are per
camera, and each line names its camera. It also puts the tracked boxes on the result (``tracks``), so
an annotated video or mosaic added after it draws the track ids.
"""

from __future__ import annotations

from collections.abc import Callable

from fusionedge.sdk.errors import InputError
from fusionedge.sdk.streaming.pipeline import StreamResult
from fusionedge.sdk.streaming.sinks import JsonlEventSink, Sink

__all__ = ["TrackSink"]


class TrackSink(Sink):
    """Track one camera's boxes and write its track events to an event log.

    Args:
        events: the event log the track lines go to (shared with the results is fine).
        fps: the camera's frame rate, or a callable giving it at the first result (a source's rate is
            known once it is open).
        sample_rate: Hz of the results' audio windows (the bundle geometry's), for the siren levels.
        camera: the camera's name written in each line (None: the results' own ``camera``).

    Raises:
        InputError: sample_rate not > 0.
        ImportError: SciPy (the ``tracking`` extra) is not installed.
    """

    def __init__(self, events: JsonlEventSink, fps: float | Callable[[], float], sample_rate: int,
                 camera: str | None = None) -> None:
        import scipy.optimize  # noqa: F401 - the tracker needs it: fail before the stream starts

        if not sample_rate > 0:
            raise InputError(f"sample_rate must be > 0, got {sample_rate!r}")
        self.events = events
        self.camera = camera
        self.sample_rate = int(sample_rate)
        self._fps = fps
        self._tracker = None
        self._monitor = None
        self._siren = None
        self._last_t: float | None = None
        self.lines = 0

    def write(self, result: StreamResult) -> None:
        from fusionedge.sdk.track_events import SirenLevels, TrackEventMonitor
        from fusionedge.sdk.tracking import Tracker

        if result.frame is None or (self._last_t is not None and result.t <= self._last_t):
            return  # no boxes without video; the tracker's time only goes forward
        if self._tracker is None:
            fps = self._fps() if callable(self._fps) else self._fps
            self._tracker, self._monitor = Tracker(float(fps)), TrackEventMonitor()
            self._siren = SirenLevels(self.sample_rate)
        self._last_t = result.t
        siren = None
        if result.audio is not None and result.audio.size:
            self._siren.add(result.audio, result.t)
            siren = self._siren
        tracks = self._tracker.update(result.result.boxes, result.t)
        result.tracks = tuple((tr.track_id, tr.label, tr.box) for tr in tracks)  # for the video sinks after it
        camera = self.camera if self.camera is not None else result.camera
        for event in self._monitor.update(tracks, self._tracker.ended, result.t, siren):
            head = {"type": "track"} if camera is None else {"type": "track", "camera": camera}
            self.events.write_event({**head, "index": result.index, **event.to_dict()})
            self.lines += 1
