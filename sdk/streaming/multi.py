"""Several cameras and microphones at once: one pipeline per camera, one batched inference per tick.

::

    from fusionedge.sdk import Perception
    from fusionedge.sdk.streaming import JsonlEventSink, MultiPipeline

    with Perception.load("bundle/") as p:
        multi = MultiPipeline(p, cameras=[("front", "rtsp://cam1/s"), ("rear", "/dev/video1")],
                              mics=[("cabin", "mic://default")], hears={"cabin": ["front", "rear"]},
                              sinks=[JsonlEventSink("events.jsonl")])
        print(multi.run()["cameras"]["front"]["results"])

Each camera runs the single-camera :class:`~fusionedge.sdk.streaming.pipeline.Pipeline` (its own capture
thread, supervisor, queues and policy) on one shared :class:`StreamClock`. Their inference stages meet in
a :class:`BatchGate`: a camera's step is inferred as soon as it is ready, and the steps that become ready
while an inference runs are stacked into one batch for the bundle's dynamic batch dimension and run
together when it ends, so a camera never waits on a slower one for more than one running inference and N
cameras under load cost fewer than N inferences. Cameras whose frames are taken together (a synchronized
rig) can be gathered into one batch per tick instead: ``max_wait`` > 0 lets a step wait up to that long
for the other live cameras' (a camera that is down or has ended is not waited for). On a TensorRT engine with the CUDA preprocessing library
(:mod:`fusionedge.sdk.cuda_preprocess`), each camera's frames are resized and normalized on the GPU and
each tick's clips are placed straight into the engine's input binding, so video makes no host round trip;
elsewhere frames are preprocessed on the CPU, and the reason is logged once. A microphone is opened once
and fanned out (:class:`~fusionedge.sdk.streaming.mics.MicHub`) to every camera that hears it. Results and health events carry the
camera's name; one camera failing is reported and retried by its own supervisor while the others go on.
Memory stays bounded: each camera's queues are bounded as in a single pipeline, and each listener of a
microphone keeps at most ``MIC_BACKLOG`` chunks.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from fusionedge.sdk.cuda_preprocess import (
    CudaFramePreprocessor,
    DeviceClip,
    log_cpu_preprocessing,
    plan_device_preprocessing,
    ring_capacity,
)
from fusionedge.sdk.errors import BackendError, FusionEdgeError, InputError
from fusionedge.sdk.streaming.clock import StreamClock
from fusionedge.sdk.streaming.health import OK
from fusionedge.sdk.streaming.mics import MIC_BACKLOG, MicHub
from fusionedge.sdk.streaming.pipeline import Pipeline, PipelineConfig, StreamResult
from fusionedge.sdk.streaming.signals import StopSignals
from fusionedge.sdk.streaming.sources import Frame, open_audio_source
from fusionedge.sdk.streaming.uri import parse_uri

if TYPE_CHECKING:
    from fusionedge.sdk.perception import Perception
    from fusionedge.sdk.streaming.clock import Synchronizer
    from fusionedge.sdk.streaming.health import HealthEvent
    from fusionedge.sdk.streaming.sinks import Sink

__all__ = ["MIC_BACKLOG", "PREPROCESSING", "BatchGate", "MicHub", "MultiPipeline", "batch_limits",
           "parse_named_source"]

#: Where video is preprocessed: ``auto`` (the GPU where it can, else the CPU), ``cpu``, ``cuda`` (required).
PREPROCESSING = ("auto", "cpu", "cuda")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse_named_source(text: str, kind: str) -> tuple[str, str]:
    """Split ``name=URI`` and check both; the URI is parsed as a ``kind`` (video / audio) source.

    Args:
        text: e.g. ``"front=rtsp://cam1/stream"`` or ``"cabin=mic://default"``.
        kind: ``"video"`` or ``"audio"``.

    Returns:
        ``(name, uri)``.

    Raises:
        InputError: no ``=``, a bad name (letters, digits, ``_ . -``; up to 64), or a bad URI (named).
    """
    name, sep, uri = str(text).partition("=")
    if not sep:
        raise InputError(f"{kind} source {text!r}: give it as NAME=URI, e.g. front=/dev/video0")
    if not _NAME.match(name):
        raise InputError(f"{kind} source name {name!r}: use letters, digits, '_', '.', '-' (up to 64)")
    parse_uri(uri, kind)  # type: ignore[arg-type]
    return name, uri


def batch_limits(perception: Any) -> tuple[int, int]:
    """``(min, max)`` of the loaded bundle's batch dimension (``(1, 1)`` when the backend does not say)."""
    io = getattr(getattr(perception, "backend", None), "io", None)
    if io is None:
        return 1, 1
    return int(io.batch_min), int(io.batch_max)


# ------------------------------------------------------------------------------------------ batching


class BatchGate:
    """Gathers one inference request per camera and runs them as one batch.

    With ``max_wait`` 0 a request runs as soon as no other batch is running, together with every request
    pending by then (those that arrived while the last batch ran). With ``max_wait`` > 0 a request also
    waits until every camera the gate is waiting for has one pending, or until ``max_wait`` seconds after
    the oldest pending request. One caller runs the whole batch and every caller gets its own rows back.
    ``batched=False`` runs each request alone (the baseline the benchmark compares).

    Args:
        perception: the loaded Perception (its ``run_batch``).
        waiting_for: called with a camera name: True while that camera is expected to send steps.
        max_wait: seconds a request waits for the other cameras (0: none, it goes with what is pending).
        batched: False to run one inference per request.
        device: the CUDA frame preprocessing: requests whose video is a
            :class:`~fusionedge.sdk.cuda_preprocess.DeviceClip` are placed in the engine's input binding.
    """

    def __init__(self, perception: Perception, waiting_for: Callable[[str], bool], max_wait: float,
                 batched: bool = True, device: CudaFramePreprocessor | None = None) -> None:
        self.perception = perception
        self.device = device
        self._device_lock = threading.Lock()  # one batch at a time in the device binding (also unbatched)
        self.max_wait = float(max_wait)
        self.batched = batched
        self._waiting_for = waiting_for
        self._cond = threading.Condition()
        self._pending: dict[str, dict] = {}
        self._names: list[str] = []
        self._retired: set[str] = set()
        self._busy = False
        self.batches = 0
        self.rows = 0
        self.started: dict[str, float] = {}  # camera -> monotonic time its last inference started running

    def register(self, name: str) -> None:
        """Expect requests from this camera."""
        self._names.append(name)

    def retire(self, name: str) -> None:
        """This camera sends no more requests (its inference stage ended)."""
        with self._cond:
            self._retired.add(name)
            self._cond.notify_all()

    def _ready(self, now: float) -> bool:
        if not self._pending or self._busy:
            return False
        if self.max_wait <= 0 or now - min(r["t"] for r in self._pending.values()) >= self.max_wait:
            return True
        expected = [n for n in self._names if n not in self._retired and self._waiting_for(n)]
        return all(n in self._pending for n in expected)

    def run(self, name: str, video: np.ndarray, audio: np.ndarray, presence: np.ndarray) -> tuple[dict, Any]:
        """Run ``name``'s batch of rows (as ``Perception.run_batch``) together with the other cameras'."""
        if not self.batched:
            self.started[name] = time.monotonic()
            outputs, model = self._infer([(video, audio, presence)])
            with self._cond:
                self.batches += 1
                self.rows += len(video)
            return outputs, model
        req = {"t": time.monotonic(), "inputs": (video, audio, presence), "out": None, "error": None}
        with self._cond:
            self._pending[name] = req
            self._cond.notify_all()
            while req["out"] is None and req["error"] is None:
                now = time.monotonic()
                if self._ready(now):
                    batch, self._pending, self._busy = self._pending, {}, True
                    for n in batch:
                        self.started[n] = now
                    self._cond.release()
                    try:
                        self._run_batch(batch)
                    finally:
                        self._cond.acquire()
                        self._busy = False
                        self._cond.notify_all()
                else:
                    # notified when a batch ends or a request comes; polls only for a max_wait deadline
                    self._cond.wait(self.max_wait / 4 + 1e-4 if self.max_wait > 0 else 0.1)
        if req["error"] is not None:
            raise req["error"]
        return req["out"]

    def _run_batch(self, batch: dict[str, dict]) -> None:
        reqs = list(batch.values())
        counts = [len(r["inputs"][0]) for r in reqs]
        try:
            outputs, model = self._infer([r["inputs"] for r in reqs])
        except BaseException as e:  # noqa: BLE001 - every waiting camera sees the failure
            for r in reqs:
                r["error"] = e
            return
        start = 0
        for r, n in zip(reqs, counts):
            r["out"] = ({k: v[start:start + n] for k, v in outputs.items()}, model)
            start += n
        self.batches += 1
        self.rows += start

    def _infer(self, inputs: list[tuple[Any, np.ndarray, np.ndarray]]) -> tuple[dict, Any]:
        """One inference over the requests' rows: on the device binding when the clips are there."""
        if self.device is None:
            stacked = [np.concatenate([r[k] for r in inputs]) for k in range(3)]
            return self.perception.run_batch(*stacked)
        clips = []
        for video, _, _ in inputs:
            if isinstance(video, DeviceClip):
                clips.append(video)
            else:  # a step without video (zeros), one row per request in a device stream
                clips.extend(np.asarray(video))
        audio = np.concatenate([r[1] for r in inputs])
        presence = np.concatenate([r[2] for r in inputs])
        with self._device_lock:
            return self.device.run(clips, {"audio": audio, "presence": presence}), self.perception


class _GatedPerception:
    """The Perception as one camera's pipeline sees it: ``run_batch`` goes through the gate."""

    def __init__(self, perception: Perception, gate: BatchGate, name: str) -> None:
        self._perception, self._gate, self._name = perception, gate, name

    def run_batch(self, video: np.ndarray, audio: np.ndarray, presence: np.ndarray) -> tuple[dict, Any]:
        return self._gate.run(self._name, video, audio, presence)

    def __getattr__(self, item: str) -> Any:
        return getattr(self._perception, item)


class _CameraPipeline(Pipeline):
    """A camera's pipeline that leaves the batch gate when its inference stage ends.

    With ``device`` set, its frames go to the GPU: the synchronizer keeps device-frame handles and each
    step's clip is a :class:`~fusionedge.sdk.cuda_preprocess.DeviceClip`.
    """

    gate: BatchGate
    device: CudaFramePreprocessor | None = None

    def _prepare_frame(self, frame: Frame, sync: Synchronizer) -> Any:
        if self.device is None:
            return super()._prepare_frame(frame, sync)
        return self.device.preprocess(self.name or "", frame.image, color="bgr",
                                      capacity=ring_capacity(sync.window_frames, self.config.queue_size))

    def _video_clip(self, sync: Synchronizer, t: float) -> Any:
        if self.device is None:
            return super()._video_clip(sync, t)
        return DeviceClip(sync.clip_items(t))

    def _batch_started(self, default: float) -> float:
        return self.gate.started.get(self.name or "", default)

    def _infer_loop(self) -> None:
        try:
            super()._infer_loop()
        finally:
            self.gate.retire(self.name or "")


class _SharedSink:
    """A sink shared by all cameras: calls are serialized; the multi-pipeline closes it once."""

    def __init__(self, sink: Sink, lock: threading.Lock) -> None:
        self.sink, self._lock = sink, lock
        self.path = getattr(sink, "path", None)

    def write(self, result: StreamResult) -> None:
        with self._lock:
            self.sink.write(result)

    def on_health(self, event: HealthEvent) -> None:
        with self._lock:
            self.sink.on_health(event)

    def close(self) -> None:
        """Closed by :meth:`MultiPipeline.stop` after every camera stopped."""


# ------------------------------------------------------------------------------------ the pipeline


class MultiPipeline:
    """Run one Perception on several cameras (and microphones) with one batched inference per tick.

    Args:
        perception: a loaded Perception whose bundle's batch range takes ``len(cameras)``.
        cameras: ``(name, video URI or callable clock -> VideoSource)`` pairs, names unique.
        mics: ``(name, audio URI or callable clock -> AudioSource)`` pairs, names unique.
        hears: microphone name -> the cameras that hear it. Default: with one microphone, every camera
            hears it; with several, each must be given. A camera hears at most one microphone.
        sinks: shared by all cameras (results and health events carry ``camera``); closed at the end.
        camera_sinks: camera name -> sinks of that camera only (e.g. its annotated video).
        config: the :class:`PipelineConfig` of every camera.
        batched: False runs one inference per camera (for comparison).
        max_wait: seconds a camera's ready step may wait for the other cameras' to batch with them
            (default 0: it is inferred at once, with whatever other steps are pending).
        preprocessing: ``auto`` preprocesses video on the GPU into the engine's input binding where the
            backend and the CUDA library allow (:func:`~fusionedge.sdk.cuda_preprocess.plan_device_preprocessing`)
            and on the CPU otherwise, logging why once; ``cpu`` always on the CPU; ``cuda`` requires the GPU.

    Raises:
        InputError: no cameras, a duplicate or unknown name, a camera hearing two microphones, more
            cameras than the bundle's batch range takes (each named), or an unknown ``preprocessing``.
        BackendError: ``preprocessing="cuda"`` where the GPU path cannot run (the reason).
    """

    def __init__(self, perception: Perception, cameras: Sequence[tuple[str, Any]],
                 mics: Sequence[tuple[str, Any]] = (), hears: Mapping[str, Sequence[str]] | None = None,
                 sinks: Sequence[Sink] = (), camera_sinks: Mapping[str, Sequence[Sink]] | None = None,
                 config: PipelineConfig | None = None, *, batched: bool = True,
                 max_wait: float | None = None, preprocessing: str = "auto") -> None:
        cameras, mics = list(cameras), list(mics)
        if preprocessing not in PREPROCESSING:
            raise InputError(f"preprocessing must be one of {', '.join(PREPROCESSING)}, got {preprocessing!r}")
        if not cameras:
            raise InputError("give at least one camera (NAME=URI)")
        seen: set[str] = set()
        for name, _ in cameras + mics:
            if not _NAME.match(str(name)):
                raise InputError(f"source name {name!r}: use letters, digits, '_', '.', '-' (up to 64)")
            if name in seen:
                raise InputError(f"source name {name!r} is given twice; each camera and microphone needs its own")
            seen.add(name)
        for name, uri in cameras:
            if not callable(uri):
                parse_uri(uri, "video")
        for name, uri in mics:
            if not callable(uri):
                parse_uri(uri, "audio")
        lo, hi = batch_limits(perception)
        if batched and not lo <= len(cameras) <= hi:
            raise InputError(f"{len(cameras)} cameras, but bundle {getattr(perception, 'model', '?')!r} takes a "
                             f"batch of {lo} to {hi}; give at most {hi} cameras or re-export with a larger batch")
        camera_names = [n for n, _ in cameras]
        mic_names = [n for n, _ in mics]
        if hears is None:
            if len(mics) > 1:
                raise InputError(f"{len(mics)} microphones: say which cameras hear each (hears / --hears)")
            hears = {mics[0][0]: camera_names} if mics else {}
        heard_by: dict[str, str] = {}
        for mic, cams in hears.items():
            if mic not in mic_names:
                raise InputError(f"hears: unknown microphone {mic!r}; microphones: {', '.join(mic_names) or 'none'}")
            for cam in cams:
                if cam not in camera_names:
                    raise InputError(f"hears: {mic!r} is heard by unknown camera {cam!r}; cameras: "
                                     f"{', '.join(camera_names)}")
                if cam in heard_by:
                    raise InputError(f"camera {cam!r} hears two microphones ({heard_by[cam]!r}, {mic!r})")
                heard_by[cam] = mic
        self.perception = perception
        self.config = config or PipelineConfig()
        self.clock = StreamClock()
        self.batched = batched
        self._sinks = list(sinks)
        lock = threading.Lock()
        shared = [_SharedSink(s, lock) for s in self._sinks]
        self._hubs: dict[str, MicHub] = {}
        for name, uri in mics:
            src = uri(self.clock) if callable(uri) else open_audio_source(
                uri, self.clock, realtime=self.config.realtime, rate=perception.geometry.sample_rate)
            self._hubs[name] = MicHub(src)
        wait = 0.0 if max_wait is None else float(max_wait)
        if not wait >= 0:
            raise InputError(f"max_wait must be >= 0 seconds, got {max_wait!r}")
        self.device: CudaFramePreprocessor | None = None
        if preprocessing == "cpu":
            self.preprocessing_reason = "asked for (preprocessing='cpu')"
        else:
            self.device, self.preprocessing_reason = plan_device_preprocessing(perception)
            if self.device is None and preprocessing == "cuda":
                raise BackendError(f"CUDA video preprocessing cannot run: {self.preprocessing_reason}")
        if self.device is None:
            log_cpu_preprocessing(self.preprocessing_reason)
        self.gate = BatchGate(perception, self._waiting_for, wait, batched=batched, device=self.device)
        self.pipelines: dict[str, Pipeline] = {}
        camera_sinks = camera_sinks or {}
        for name in camera_sinks:
            if name not in camera_names:
                raise InputError(f"sinks for unknown camera {name!r}; cameras: {', '.join(camera_names)}")
        for name, uri in cameras:
            mic = heard_by.get(name)
            audio = (lambda _clock, hub=self._hubs[mic]: hub.listener()) if mic is not None else None
            pipe = _CameraPipeline(_GatedPerception(perception, self.gate, name), video=uri, audio=audio,
                                   sinks=[*shared, *camera_sinks.get(name, ())], config=self.config,
                                   name=name, clock=self.clock)
            pipe.gate = self.gate
            pipe.device = self.device
            self.gate.register(name)
            self.pipelines[name] = pipe
        self.hears = {cam: mic for cam, mic in heard_by.items()}
        self._sink_lock = lock
        self._camera_sinks: list[Sink] = []
        self._closed = False

    def add_sink(self, sink: Sink, camera: str | None = None) -> None:
        """Add an output before :meth:`start`: shared by every camera, or ``camera``'s only.

        Raises:
            InputError: an unknown camera, or the pipeline already started.
        """
        if any(p._started for p in self.pipelines.values()):
            raise InputError("add sinks before the pipeline starts")
        if camera is None:
            self._sinks.append(sink)
            for pipe in self.pipelines.values():
                pipe.sinks.append(_SharedSink(sink, self._sink_lock))
            return
        if camera not in self.pipelines:
            raise InputError(f"sink for unknown camera {camera!r}; cameras: {', '.join(self.pipelines)}")
        self.pipelines[camera].sinks.append(sink)

    def _waiting_for(self, name: str) -> bool:
        sup = self.pipelines[name]._sup
        video, audio = sup.get("video"), sup.get("audio")
        return any(s is not None and s.state in (OK, "starting") for s in (video, audio))

    def start(self) -> None:
        """Start every camera on the shared clock (returns at once)."""
        self.clock.restart()
        for pipe in self.pipelines.values():
            pipe.start()

    def request_stop(self) -> None:
        """Ask every camera to stop (from any thread; returns at once): :meth:`run` then ends cleanly."""
        for pipe in self.pipelines.values():
            pipe._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every camera, then flush and close the shared sinks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for pipe in self.pipelines.values():
            pipe.stop(timeout)
        if self.device is not None:
            self.device.close()
        for sink in self._sinks:
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001 - one broken output must not keep the others open
                import logging

                logging.getLogger(__name__).error("closing sink failed: %s", e)

    def run(self, *, progress: Callable[[dict], None] | None = None, interval: float = 1.0,
            signals: StopSignals | None = None) -> dict:
        """Start, run until every camera's sources end or SIGINT / SIGTERM, stop and return the summary.

        Returns:
            :meth:`stats` with ``interrupted`` and ``signal``.

        Raises:
            FusionEdgeError: a source that can never work (e.g. a missing file), or a stage's failure.
        """
        own = signals is None
        stopper = StopSignals() if own else signals
        if own:
            stopper.__enter__()
        try:
            self.start()
            next_progress = time.monotonic() + interval
            while not stopper.requested:
                if all(p._done.wait(0) for p in self.pipelines.values()):
                    break
                if any(p._error is not None for p in self.pipelines.values()):
                    break
                time.sleep(0.05)
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
        for name, pipe in self.pipelines.items():
            if pipe._error is not None:
                err = pipe._error
                if isinstance(err, FusionEdgeError):
                    raise type(err)(f"camera {name!r}: {err}") from err
                raise err
        return summary

    def stats(self) -> dict:
        """Totals over the cameras, each camera's :meth:`Pipeline.stats` under ``cameras``, and the batching."""
        per = {name: pipe.stats() for name, pipe in self.pipelines.items()}
        worst: dict[str, float] = {}
        for s in per.values():
            lat = s["latency_ms"].get("capture_to_result", {})
            for k in ("p50", "p99", "max"):
                if k in lat:
                    worst[k] = max(worst.get(k, 0.0), lat[k])
        elapsed = max((s["elapsed_s"] for s in per.values()), default=0.0)
        results = sum(s["results"] for s in per.values())
        return {
            "policy": self.config.policy,
            "elapsed_s": elapsed,
            "cameras": per,
            "frames_captured": sum(s["frames_captured"] for s in per.values()),
            "results": results,
            "dropped": sum(s["dropped"] for s in per.values()),
            "fps": round(sum(s["fps"] for s in per.values()), 2),
            "fps_recent": round(sum(s["fps_recent"] for s in per.values()), 2),
            "latency_ms": {"capture_to_result": worst},  # the worst camera's percentiles
            "sensors": {f"{cam}/{k}": v for cam, s in per.items() for k, v in s["sensors"].items()},
            "batched": self.batched,
            "preprocessing": "cpu" if self.device is None else "cuda",
            "preprocessing_reason": self.preprocessing_reason,
            "batches": self.gate.batches,
            "mean_batch": round(self.gate.rows / self.gate.batches, 3) if self.gate.batches else 0.0,
            "hears": dict(self.hears),
        }
