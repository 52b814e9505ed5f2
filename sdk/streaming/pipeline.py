"""The streaming pipeline: capture -> preprocess -> infer -> postprocess -> sinks over bounded queues.

::

    from fusionedge.sdk import Perception
    from fusionedge.sdk.streaming import Pipeline, PipelineConfig, JsonlEventSink

    with Perception.load("bundle/") as p:
        pipe = Pipeline(p, video="/dev/video0", audio="mic://default",
                        sinks=[JsonlEventSink("events.jsonl")], config=PipelineConfig(policy="live"))
        summary = pipe.run()          # until the sources end, stop(), Ctrl-C or SIGTERM
        print(summary["fps"], summary["latency_ms"]["capture_to_result"])

Each stage is a thread; between stages sit bounded queues. Policy ``live`` never blocks a producer:
a full queue drops its oldest item and counts the drop (the newest frame always gets through, so
latency stays bounded). Policy ``offline`` blocks the producer instead (back-pressure): nothing is
dropped, and replay runs as fast as the slowest stage. A live step does not wait for the microphone
chunk that covers its frame: it goes with the audio that has arrived once that is at most
``audio_lag`` (25 ms) behind the frame; offline every audio window ends at its frame.
:meth:`Pipeline.stats` gives live counters: frames captured, results, drops per queue, FPS, latency
percentiles per stage and capture->result, the audio lag taken, and where the time went
(``stages_ms``, :mod:`fusionedge.sdk.streaming.stages`).

A sensor that fails is supervised (:mod:`fusionedge.sdk.streaming.health`): while video is down, steps
are made from audio alone at the frame rate (video presence 0); while audio is down, frames run with
audio presence 0; fusion resumes when the sensor returns. A source that cannot work at all (a missing
file, a scheme this build cannot open) stops the pipeline at once with that error instead.

A sink that fails (a full disk, a closed pipe) is reported once — a ``failed`` health event with
modality ``sink`` to the other sinks, and an ERROR log line — and disabled; perception and the other
sinks go on, and the summary lists it under ``sinks_failed``.

The module is past 600 lines (about 740, with the per-stage timestamps) because the capture, inference and sink threads share the
pipeline's clock, queues and counters; the queues and signal handling already live in their own
modules, and what is left would only be split by passing that shared state around.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np

from fusionedge.sdk.attribution import attribute, withheld_inputs
from fusionedge.sdk.errors import FusionEdgeError, InputError
from fusionedge.sdk.media import DEFAULT_FPS
from fusionedge.sdk.preprocess import preprocess_frame
from fusionedge.sdk.streaming.clock import AudioRing, StreamClock, Synchronizer
from fusionedge.sdk.streaming.health import OK, HealthEvent, SourceSupervisor
from fusionedge.sdk.streaming.queues import END, POLICIES, BoundedQueue, Latencies
from fusionedge.sdk.streaming.signals import StopSignals
from fusionedge.sdk.streaming.sources import (
    AudioChunk,
    AudioSource,
    Frame,
    VideoSource,
    open_audio_source,
    open_video_source,
)
from fusionedge.sdk.streaming.stages import StageTimes

if TYPE_CHECKING:
    from fusionedge.sdk.perception import Perception, Result
    from fusionedge.sdk.streaming.sinks import Sink

__all__ = ["Pipeline", "PipelineConfig", "StreamResult", "BoundedQueue", "POLICIES"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    """How the pipeline runs. Units in the comments."""

    policy: Literal["live", "offline"] = "live"
    realtime: bool = True  # replay files at their native rate (False: as fast as possible)
    queue_size: int = 2  # items per inter-stage queue
    stall_timeout: float = 1.0  # s without data (or opening) before a sensor counts as stalled
    backoff_initial: float = 0.2  # s before the first retry of a failed sensor
    backoff_max: float = 5.0  # s, longest retry delay
    audio_wait: float = 0.2  # s a live step waits for audio to reach its window end
    # s a live step's audio window may end before its frame: the step goes with the audio that has
    # arrived once that is at most this far behind (a microphone delivers 20 ms chunks, so waiting for
    # the chunk that covers the frame costs up to a chunk of latency); 0 waits for the audio up to the
    # frame. Offline steps always end at the frame. The lag taken is in stats()["audio_lag_ms"].
    audio_lag: float = 0.025
    min_audio_coverage: float = 0.5  # fraction of captured samples below which audio counts as absent
    audio_buffer_seconds: float = 4.0  # s of audio kept (>= clip_seconds + latency)
    latency_window: int = 4096  # samples kept per latency percentile
    # s of stream time between attributed steps when the Perception attributes (0: every step; sooner
    # when a sensor comes or goes or the decided event changes); the results between carry the
    # latest attribution, its ``step`` naming the step it was computed on
    attribution_interval: float = 0.25

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise InputError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if int(self.queue_size) < 1:
            raise InputError(f"queue_size must be >= 1, got {self.queue_size!r}")
        for name in ("stall_timeout", "backoff_initial", "backoff_max", "audio_buffer_seconds"):
            if not float(getattr(self, name)) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= float(self.audio_lag) <= 0.1:
            raise InputError(f"audio_lag must be between 0 and 0.1 s, got {self.audio_lag!r}")
        if not float(self.attribution_interval) >= 0:
            raise InputError(f"attribution_interval must be >= 0, got {self.attribution_interval!r}")


@dataclass
class StreamResult:
    """One step's result, as the sinks receive it."""

    index: int  # step number since start
    t: float  # stream-clock time of the current frame (or of the step, audio-only)
    frame: np.ndarray | None  # the current BGR frame (None when video is missing)
    result: "Result"  # the model's output; result.missing lists absent modalities
    health: dict[str, str]  # modality -> sensor state ("ok", "stalled", ...) when the inputs were taken
    latency_ms: float  # capture of the current frame (or audio) -> result ready
    camera: str | None = None  # the camera's name in a multi-camera pipeline (None: the one camera)
    audio: np.ndarray | None = None  # the step's audio window at the model's rate (None: audio missing)
    # the camera's tracked boxes (track id, label, x1y1x2y2), set by a TrackSink before the sinks after it
    tracks: tuple | None = None
    # the step's model inputs (video (T, 3, H, W), audio (S,), presence (2,)), for a sink that runs another
    # model on the same clip (a standing question); None unless a sink sets ``needs_inputs``
    inputs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the event log (with ``camera`` when the result has one)."""
        head: dict[str, Any] = {"type": "result"}
        if self.camera is not None:
            head["camera"] = self.camera
        return {**head, "index": self.index, "t": round(self.t, 6),
                "latency_ms": round(self.latency_ms, 3), "health": dict(self.health), **self.result.to_dict()}


@dataclass
class _Step:
    index: int
    t: float
    captured: float  # monotonic time the newest input of the step arrived
    image: np.ndarray | None
    video: np.ndarray  # (T, 3, H, W) float32
    audio: np.ndarray  # (S,) float32
    presence: np.ndarray  # (2,) float32
    health: dict[str, str] = field(default_factory=dict)  # sensor states when the inputs were taken
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] | None = None
    model: Any = None  # the Perception that produced ``outputs``; it decodes them
    rows: tuple[str | None, ...] | None = None  # what each output row withheld (with attribution)
    marks: dict[str, float] = field(default_factory=dict)  # stage boundaries (:mod:`.stages`), monotonic s


def _sink_name(sink: Any) -> str:
    """A sink's output path where it has one, else its class name (for events and logs)."""
    for attr in ("path", "_path"):
        value = getattr(sink, attr, None)
        if value is not None:
            return str(value)
    return type(sink).__name__


class Pipeline:
    """Run a :class:`~fusionedge.sdk.Perception` on live or replayed sensors.

    Args:
        perception: a loaded Perception (its bundle geometry drives the synchronizer).
        video: a video URI, a callable ``clock -> VideoSource`` (e.g. a fake sensor), or None.
        audio: an audio URI, a callable ``clock -> AudioSource``, or None.
        sinks: where results go (:mod:`fusionedge.sdk.streaming.sinks`); closed at shutdown.
        config: a :class:`PipelineConfig`.
        name: the camera's name: results and health events carry it (``camera``); None for one camera.
        clock: a stream clock shared with other pipelines (:mod:`fusionedge.sdk.streaming.multi`): its
            owner restarts it; None makes one, restarted by :meth:`start`.

    Raises:
        InputError: neither video nor audio given, or a URI that cannot be parsed.
    """

    def __init__(self, perception: "Perception", video: Any = None, audio: Any = None,
                 sinks: Sequence["Sink"] = (), config: PipelineConfig | None = None, *,
                 name: str | None = None, clock: StreamClock | None = None) -> None:
        if video is None and audio is None:
            raise InputError("give a video source, an audio source, or both")
        reads = getattr(perception, "modalities", ("video", "audio"))  # a one-modality bundle needs that source
        if len(reads) == 1 and {"video": video, "audio": audio}[reads[0]] is None:
            raise InputError(f"{perception.model} reads {reads[0]} only; give a {reads[0]} source")
        self.perception = perception
        self.config = config or PipelineConfig()
        self.geometry = perception.geometry
        self.sinks = list(sinks)
        self.name = name
        self._own_clock = clock is None
        self.clock = StreamClock() if clock is None else clock
        self._stop = threading.Event()
        self._done = threading.Event()
        self._started = False
        self._closed = False
        self._error: BaseException | None = None
        c = self.config
        self._video_src: VideoSource | None = None
        self._audio_src: AudioSource | None = None
        if video is not None:
            self._video_src = video(self.clock) if callable(video) else \
                open_video_source(video, self.clock, realtime=c.realtime, timeout=c.stall_timeout)
        if audio is not None:
            self._audio_src = audio(self.clock) if callable(audio) else \
                open_audio_source(audio, self.clock, realtime=c.realtime, rate=self.geometry.sample_rate)
        q = lambda: BoundedQueue(c.queue_size, c.policy, self._stop)  # noqa: E731
        self._q_frames, self._q_steps, self._q_outputs = q(), q(), q()
        # results wait only on file writes: a deeper queue absorbs a slow first write (codec start-up)
        self._q_results = BoundedQueue(max(c.queue_size, 32), c.policy, self._stop)
        self._ring: AudioRing | None = None
        self._ring_lock = threading.Lock()
        self._audio_ended = threading.Event()
        self._lat = Latencies(c.latency_window)
        self._stages = StageTimes(c.latency_window)
        self._audio_lag = Latencies(c.latency_window)  # ms each live step's audio ended before its frame
        self._attributed_t = -float("inf")  # stream time of the last attributed step
        self._attributed_presence: tuple[float, ...] = ()  # its presence
        self._attribution: Any = None  # the latest Attribution, carried by the results after it
        self._attribution_stale = False  # a later result decided another event: attribute the next step
        self._counts = collections.Counter()
        self._result_times: collections.deque = collections.deque(maxlen=256)
        self._t_start = 0.0
        self._t_stop: float | None = None
        self._events: list[HealthEvent] = []
        self._events_lock = threading.Lock()
        self._pending_events: collections.deque = collections.deque()
        self._sup: dict[str, SourceSupervisor] = {}
        sup_args = dict(stall_timeout=c.stall_timeout, backoff_initial=c.backoff_initial,
                        backoff_max=c.backoff_max, on_fatal=self._on_fatal)
        self._failed_sinks: list[str] = []  # names, for the summary
        self._disabled_sinks: set[int] = set()  # id() of each failed sink
        self._signals: StopSignals | None = None
        if self._video_src is not None:
            self._sup["video"] = SourceSupervisor("video", self._video_src, self._on_frame, self._on_health,
                                                  self._on_video_end, self._stop, **sup_args)
        if self._audio_src is not None:
            self._sup["audio"] = SourceSupervisor("audio", self._audio_src, self._on_chunk, self._on_health,
                                                  self._audio_ended.set, self._stop, **sup_args)
        self._threads = [threading.Thread(target=self._guard(f), name=n, daemon=True) for n, f in (
            ("preprocess", self._preprocess_loop), ("infer", self._infer_loop),
            ("postprocess", self._postprocess_loop), ("sinks", self._sink_loop), ("monitor", self._monitor_loop))]

    # --------------------------------------------------------------------------------- public API

    def start(self) -> None:
        """Start capture and the stages (returns at once).

        Raises:
            InputError: the pipeline was already started.
        """
        if self._started:
            raise InputError("a Pipeline can be started once; make a new one")
        self._started = True
        if self._own_clock:
            self.clock.restart()
        self._t_start = time.monotonic()
        for s in self._sup.values():
            s.start()
        for t in self._threads:
            t.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every result is out (sources ended) or the pipeline stopped; True if so."""
        return self._done.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop capture and every stage, then flush and close the sinks. Idempotent.

        Args:
            timeout: seconds to wait for each thread.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for s in self._sup.values():
            s.close()
        stuck = []
        for t in self._threads:
            if t.ident is not None:
                t.join(timeout)
                if t.is_alive():
                    stuck.append(t.name)
        for name, s in self._sup.items():
            if not s.join(timeout):
                stuck.append(f"capture-{name}")
        if not self._threads[3].ident:  # the sink thread never ran: close the sinks here
            self._close_sinks()
        self._t_stop = self._t_stop or time.monotonic()
        self._done.set()
        if stuck:
            log.error("threads still running after stop: %s", ", ".join(stuck))
        self._counts["stuck_threads"] = len(stuck)

    def run(self, *, progress: Callable[[dict], None] | None = None, interval: float = 1.0,
            signals: StopSignals | None = None) -> dict:
        """Start, run until the sources end or SIGINT / SIGTERM, stop cleanly and return the summary.

        A stop signal (Ctrl-C, or SIGTERM from systemd / Docker / Kubernetes) ends the run the same
        way as the end of the sources: capture stops, the sinks are flushed and closed (an mp4 gets
        its index), and the summary is returned.

        Args:
            progress: called with :meth:`stats` every ``interval`` seconds.
            interval: seconds between progress calls.
            signals: an entered :class:`StopSignals` the caller owns (e.g. installed before loading
                the model); None installs one for the duration of the run.

        Returns:
            The final :meth:`stats`, with ``interrupted`` (True when stopped by a signal) and
            ``signal`` (``"SIGINT"``, ``"SIGTERM"`` or None).

        Raises:
            Exception: whatever a stage raised (e.g. BackendError), or the configuration error of a
                source that cannot work (e.g. MediaError for a missing file), after a clean stop.
        """
        own = signals is None
        stopper = StopSignals() if signals is None else signals
        if own:
            stopper.__enter__()
        self._signals = stopper
        try:
            self.start()
            next_progress = time.monotonic() + interval
            while not self._done.wait(0.05) and not stopper.requested:
                if progress is not None and time.monotonic() >= next_progress:
                    progress(self.stats())
                    next_progress += interval
        finally:
            self.stop()
            if own:
                stopper.__exit__(None, None, None)
        summary = self.stats()
        summary["interrupted"] = stopper.requested
        summary["signal"] = stopper.name
        if self._error is not None:
            raise self._error
        return summary

    def stats(self) -> dict:
        """Live counters: frames, results, drops per queue, FPS, latency percentiles (ms), sensor states."""
        end = self._t_stop or time.monotonic()
        elapsed = max(1e-9, end - self._t_start) if self._t_start else 0.0
        times = list(self._result_times)
        recent = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        drops = {"capture->preprocess": self._q_frames.dropped, "preprocess->infer": self._q_steps.dropped,
                 "infer->postprocess": self._q_outputs.dropped, "postprocess->sinks": self._q_results.dropped}
        ring = self._ring
        return {
            "policy": self.config.policy,
            "elapsed_s": round(elapsed, 3),
            "frames_captured": self._counts["frames"],
            "audio_chunks": self._counts["chunks"],
            "steps": self._counts["steps"],
            "results": self._counts["results"],
            "results_with_video": self._counts["results_video"],
            "results_with_audio": self._counts["results_audio"],
            "dropped": sum(drops.values()),
            "dropped_by_queue": drops,
            "discarded_at_stop": self._counts["discarded"],
            "fps": round(self._counts["results"] / elapsed, 2) if elapsed else 0.0,
            "fps_recent": round(recent, 2),
            "latency_ms": self._lat.summary(),
            "stages_ms": self._stages.summary(),
            "audio_lag_ms": self._audio_lag.summary().get("audio_lag", {}),
            "sensors": {k: {"state": s.state, "reason": s.reason, "failures": s.failures,
                            "recoveries": s.recoveries} for k, s in self._sup.items()},
            "audio_gaps": ring.gaps if ring else 0,
            "audio_resyncs": ring.resyncs if ring else 0,
            "stuck_threads": self._counts["stuck_threads"],
            "sinks_failed": list(self._failed_sinks),
        }

    @property
    def video_fps(self) -> float:
        """The video source's frame rate (its nominal rate once opened; ``DEFAULT_FPS`` without video)."""
        return self._fps()

    @property
    def health_events(self) -> list[HealthEvent]:
        """Every sensor state change so far, oldest first."""
        with self._events_lock:
            return list(self._events)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ capture side

    def _on_frame(self, frame: Frame) -> None:
        self._counts["frames"] += 1
        self._q_frames.put(frame)

    def _on_chunk(self, chunk: AudioChunk) -> None:
        self._counts["chunks"] += 1
        with self._ring_lock:
            if self._ring is None or self._ring.rate != chunk.rate:
                self._ring = AudioRing(chunk.rate, self.config.audio_buffer_seconds,
                                       tolerance=max(0.04, 2.0 * chunk.samples.size / chunk.rate))
            ring = self._ring
        ring.reopen()
        wait = self._stop if self.config.policy == "offline" else None
        ring.write(chunk.samples, chunk.t_end, wait=wait)

    def _on_fatal(self, error: FusionEdgeError) -> None:
        """A source can never work (e.g. a missing file): stop everything; run() raises the error."""
        if self._error is None:
            self._error = error
        self._stop.set()
        self._done.set()

    def _on_video_end(self) -> None:
        self._q_frames.put(END)

    def _on_health(self, event: HealthEvent) -> None:
        if self.name is not None:
            event = replace(event, camera=self.name)
        with self._events_lock:
            self._events.append(event)
        if event.modality == "audio" and event.state != OK:
            ring = self._ring
            if ring is not None and event.state != "ended":
                ring.close()  # wake a step waiting for audio that will not come
        with self._events_lock:
            self._pending_events.append(event)  # the sink thread writes it before its next item

    def _health(self) -> dict[str, str]:
        return {k: s.state for k, s in self._sup.items()}

    # ------------------------------------------------------------------------------------ stages

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as e:  # a stage failed: stop everything, re-raise from run()
                log.error("pipeline stage %s failed: %s", threading.current_thread().name, e)
                if self._error is None:
                    self._error = e
                self._stop.set()
                self._done.set()
        return run

    def _audio_live(self) -> bool:
        s = self._sup.get("audio")
        return s is not None and s.state in (OK, "starting") and not self._audio_ended.is_set()

    def _video_failed(self, health: dict[str, str] | None = None) -> bool:
        """Whether video is down, now or in a ``health`` snapshot (:meth:`_health`)."""
        if health is None:
            s = self._sup.get("video")
            state = None if s is None else s.state
        else:
            state = health.get("video")
        return state is None or state not in (OK, "starting", "ended")

    def _fps(self) -> float:
        return self._video_src.fps if self._video_src is not None and self._sup["video"].opened.is_set() \
            else DEFAULT_FPS

    def _preprocess_loop(self) -> None:
        g = self.geometry
        sync: Synchronizer | None = None
        index = 0
        last_t: float | None = None
        while not self._stop.is_set():
            if sync is None and (self._video_src is None or self._sup["video"].opened.wait(0.05)
                                 or self._video_failed()):
                sync = Synchronizer(g, self._fps(), min_coverage=self.config.min_audio_coverage)
            if sync is None:
                continue
            item = self._q_frames.get(timeout=sync.period)
            if item is END:
                break
            if item is None:  # no frame in one period: make audio-only steps while video is down
                health = self._health()  # taken with the decision: the steps say why they lack video
                if self._video_failed(health) or self._video_src is None:
                    done = self._audio_only_steps(sync, index, last_t, health)
                    if done is None:
                        break  # audio ended too: nothing left to run on
                    index, last_t = done
                continue
            frame: Frame = item
            dequeued = time.monotonic()
            t0 = time.perf_counter()
            sync.add_frame(frame.t, self._prepare_frame(frame, sync))
            prep_ms = (time.perf_counter() - t0) * 1e3
            prepared = time.monotonic()
            audio_end = self._wait_audio(sync.window_end(frame.t))
            audio_ready = time.monotonic()
            t0 = time.perf_counter()
            step = self._make_step(sync, index, frame.t, frame.captured, frame.image, video=True,
                                   audio_end=audio_end)
            step.timings["preprocess"] = prep_ms + (time.perf_counter() - t0) * 1e3
            step.marks.update(captured=frame.captured, dequeued=dequeued, prepared=prepared,
                              audio_ready=audio_ready, step_ready=time.monotonic())
            self._lat.add("preprocess", step.timings["preprocess"])
            index, last_t = index + 1, frame.t
            self._q_steps.put(step)
        self._q_steps.put(END)

    def _prepare_frame(self, frame: Frame, sync: Synchronizer) -> Any:
        """The frame as the synchronizer keeps it: the model's ``(3, H, W)`` float32 input."""
        g = self.geometry
        tensor = np.empty((3, g.height, g.width), np.float32)
        return preprocess_frame(frame.image, g, color="bgr", out=tensor)  # the model's one definition

    def _video_clip(self, sync: Synchronizer, t: float) -> Any:
        """The step's ``(T, 3, H, W)`` clip whose current frame is at ``t``."""
        return sync.video_clip(t)

    def _audio_only_steps(self, sync: Synchronizer, index: int, last_t: float | None,
                          health: dict[str, str]) -> tuple[int, float] | None:
        """Steps at the frame rate from audio alone, for as far as audio has arrived; None when it ended.

        Every step carries ``health``, the snapshot that found video down: a camera that comes back
        while the backlog of audio is turned into steps does not make those steps read "ok"."""
        ring = self._ring
        if ring is None:
            return (index, last_t if last_t is not None else -sync.period) \
                if self._audio_live() or "audio" not in self._sup else None
        newest = ring.newest_time()
        t = (last_t if last_t is not None else newest - sync.period) + sync.period
        while sync.window_end(t) <= newest + 1e-9 and not self._stop.is_set():
            step = self._make_step(sync, index, t, time.monotonic(), None, video=False, health=health)
            step.marks.update(captured=step.captured, step_ready=time.monotonic())
            self._q_steps.put(step)
            index, last_t = index + 1, t
            t += sync.period
        if not self._audio_live() and ring.closed and self._video_src is None:
            return None
        return index, (last_t if last_t is not None else t - sync.period)

    def _wait_audio(self, t_end: float) -> float:
        """Wait for the audio of a step ending at ``t_end``; returns where its audio window ends.

        Offline, and live with ``audio_lag`` 0, that is ``t_end``. Live, the step goes as soon as the
        audio is in up to ``t_end - audio_lag`` and its window ends with the newest sample (never past
        ``t_end``); audio that does not get that far within ``audio_wait`` leaves the window at
        ``t_end``, where its coverage says what is missing.
        """
        ring = self._ring
        if "audio" not in self._sup:
            return t_end
        if ring is None:  # audio has not started yet
            if not self._audio_live():
                return t_end
            deadline = time.monotonic() + (self.config.audio_wait if self.config.policy == "live" else 5.0)
            while self._ring is None and time.monotonic() < deadline and self._audio_live() \
                    and not self._stop.is_set():
                time.sleep(0.005)
            ring = self._ring
            if ring is None:
                return t_end
        if self.config.policy == "live":
            lag = float(self.config.audio_lag)
            if self._audio_live() and ring.wait_until(t_end - lag, self.config.audio_wait, self._stop) and lag:
                end = min(t_end, ring.newest_time())
                self._audio_lag.add("audio_lag", (t_end - end) * 1e3)
                return end
            return t_end
        while self._audio_live() and not self._stop.is_set():  # offline: wait as long as audio comes
            if ring.wait_until(t_end, 0.1, self._stop):
                break
        return t_end

    def _make_step(self, sync: Synchronizer, index: int, t: float, captured: float,
                   image: np.ndarray | None, *, video: bool, audio_end: float | None = None,
                   health: dict[str, str] | None = None) -> _Step:
        g = self.geometry
        if video:
            clip = self._video_clip(sync, t)  # (T, 3, H, W)
        else:
            clip = np.zeros((g.clip_frames, 3, g.height, g.width), np.float32)
        ring = self._ring
        win = sync.audio_window(ring, t, end=audio_end)
        audio_present = win.coverage >= self.config.min_audio_coverage
        if ring is not None:
            ring.release_before(sync.window_end(t) - g.clip_seconds - 0.5)
        self._counts["steps"] += 1
        return _Step(index=index, t=t, captured=captured, image=image, video=clip,
                     audio=win.samples if audio_present else np.zeros_like(win.samples),
                     presence=np.array([float(video), float(audio_present)], np.float32),
                     health=self._health() if health is None else health)

    def _infer_loop(self) -> None:
        while not self._stop.is_set():
            step = self._q_steps.get(timeout=0.1)
            if step is None:
                continue
            if step is END:
                break
            step.marks["infer_start"] = time.monotonic()
            t0 = time.perf_counter()
            presence = tuple(step.presence.tolist())
            if getattr(self.perception, "attribution", False) and (  # the step and each modality withheld
                    step.t - self._attributed_t >= self.config.attribution_interval - 1e-9
                    or presence != self._attributed_presence or self._attribution_stale):
                self._attributed_t, self._attributed_presence, self._attribution_stale = step.t, presence, False
                video, audio, presence, step.rows = withheld_inputs(step.video, step.audio, step.presence)
                step.outputs, step.model = self.perception.run_batch(video, audio, presence)
            else:
                step.outputs, step.model = self.perception.run_batch(
                    step.video[None], step.audio[None], step.presence[None])
            step.marks["infer_end"] = time.monotonic()
            step.marks["batch_start"] = self._batch_started(step.marks["infer_start"])
            step.timings["infer"] = (time.perf_counter() - t0) * 1e3
            self._lat.add("infer", step.timings["infer"])
            self._q_outputs.put(step)
        self._q_outputs.put(END)

    def _batch_started(self, default: float) -> float:
        """When the last inference of this pipeline started running (after any wait for a batch)."""
        return default

    def _postprocess_loop(self) -> None:
        while not self._stop.is_set():
            step = self._q_outputs.get(timeout=0.1)
            if step is None:
                continue
            if step is END:
                break
            step.marks["post_start"] = time.monotonic()
            t0 = time.perf_counter()
            has_video, has_audio = bool(step.presence[0]), bool(step.presence[1])
            frame_wh = None
            if has_video and step.image is not None:
                frame_wh = (step.image.shape[1], step.image.shape[0])
            timings = step.timings
            result = step.model.decode(step.outputs, frame_wh=frame_wh, has_audio=has_audio, timings=timings)
            if step.rows is not None:
                found = attribute(step.outputs, step.rows, step.model.labels, step.presence)
                self._attribution = None if found is None else replace(found, step=step.index)
            if self._attribution is not None:
                result = replace(result, attribution=self._attribution)
                self._attribution_stale = self._attribution_stale or self._attribution.event != result.event
            timings["postprocess"] = (time.perf_counter() - t0) * 1e3
            self._lat.add("postprocess", timings["postprocess"])
            for k, v in timings.items():
                timings[k] = round(v, 3)
            step.marks["result"] = time.monotonic()
            latency = (step.marks["result"] - step.captured) * 1e3
            self._lat.add("capture_to_result", latency)
            keep = any(getattr(s, "needs_inputs", False) for s in self.sinks)
            sr = StreamResult(index=step.index, t=step.t, frame=step.image if has_video else None,
                              result=result, health=step.health, latency_ms=latency, camera=self.name,
                              audio=step.audio if has_audio else None,
                              inputs=(step.video, step.audio, step.presence) if keep else None)
            self._q_results.put((sr, step.marks))
        self._q_results.put(END)

    def _sink_loop(self) -> None:
        try:
            while True:
                item = self._q_results.get(timeout=0.1)
                self._write_health_events()
                if item is END:
                    self._t_stop = time.monotonic()
                    break
                if item is None:
                    if self._stop.is_set():
                        break
                    continue
                item, marks = item
                marks["sink_start"] = time.monotonic()
                t0 = time.perf_counter()
                for sink in self._live_sinks():
                    self._call_sink(sink, "write", item)
                self._lat.add("sinks", (time.perf_counter() - t0) * 1e3)
                marks["sink_end"] = time.monotonic()
                self._stages.add(marks)
                self._counts["results"] += 1  # delivered to every working sink
                self._counts["results_video"] += int(item.frame is not None)
                self._counts["results_audio"] += int("audio" not in item.result.missing)
                self._result_times.append(time.monotonic())
        finally:
            self._write_health_events()
            self._counts["discarded"] += sum(len(q) for q in (self._q_frames, self._q_steps, self._q_outputs,
                                                               self._q_results))
            self._close_sinks()
            self._done.set()

    def _write_health_events(self) -> None:
        while True:
            with self._events_lock:
                if not self._pending_events:
                    return
                event = self._pending_events.popleft()
            for sink in self._live_sinks():
                self._call_sink(sink, "on_health", event)

    def _live_sinks(self) -> list[Sink]:
        return [s for s in self.sinks if id(s) not in self._disabled_sinks]

    def _call_sink(self, sink: Sink, method: str, arg: Any) -> bool:
        """Call ``sink.method(arg)``; a sink that raises is reported once and disabled. True if it worked."""
        try:
            getattr(sink, method)(arg)
            return True
        except Exception as e:  # noqa: BLE001 - any failure of one output (disk full, pipe) is isolated
            self._sink_failed(sink, f"{method} failed: {type(e).__name__}: {e}")
            return False

    def _sink_failed(self, sink: Sink, reason: str) -> None:
        self._disabled_sinks.add(id(sink))
        name = _sink_name(sink)
        self._failed_sinks.append(name)
        log.error("sink %s failed and is disabled; the other outputs go on: %s", name, reason)
        event = HealthEvent("sink", name, "failed", reason, failures=1)
        with self._events_lock:
            self._events.append(event)
        try:
            sink.close()  # release what it holds; its own errors are already reported
        except Exception as e:  # noqa: BLE001 - a sink broken enough to fail on close too
            log.debug("closing failed sink %s: %s", name, e)
        for other in self._live_sinks():
            self._call_sink(other, "on_health", event)

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            if id(sink) in self._disabled_sinks:
                continue  # closed when it failed
            try:
                sink.close()
            except Exception as e:  # one broken sink must not keep the others from flushing
                self._sink_failed(sink, f"close failed: {type(e).__name__}: {e}")

    def _monitor_loop(self) -> None:
        while not self._stop.wait(0.05):
            now = time.monotonic()
            for s in self._sup.values():
                s.check(now)
            if self._done.is_set():
                return
