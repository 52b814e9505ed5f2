"""Real-time streaming: sensors by URI, one clock, a staged pipeline with live/offline policies, sinks.

::

    from fusionedge.sdk import Perception
    from fusionedge.sdk.streaming import Pipeline, PipelineConfig, JsonlEventSink, VideoFileSink

    with Perception.load("bundle/") as p:
        pipe = Pipeline(p, video="csi://0", audio="mic://default",
                        sinks=[JsonlEventSink("events.jsonl")], config=PipelineConfig(policy="live"))
        print(pipe.run())

The parts, one file each: :mod:`.uri` (parse a sensor URI), :mod:`.sources` (open it), :mod:`.clock`
(timestamps, audio ring buffer, synchronizer), :mod:`.health` (failure detection and retry),
:mod:`.queues` (bounded queues, latency percentiles), :mod:`.pipeline` (stages, stats), :mod:`.multi`
(several cameras and microphones, one batched inference per tick), :mod:`.mics` (one microphone shared
by several cameras), :mod:`.stages` (where each result's latency goes), :mod:`.sinks`
(outputs), :mod:`.mosaic` (several cameras in one grid video), :mod:`.signals` (SIGINT / SIGTERM as a graceful stop). The ``fusionedge run`` verb is
:mod:`fusionedge.cli.run`.
"""

from fusionedge.sdk.streaming.clock import AudioRing, StreamClock, Synchronizer
from fusionedge.sdk.streaming.health import HealthEvent, SourceSupervisor
from fusionedge.sdk.streaming.mosaic import MosaicSink
from fusionedge.sdk.streaming.multi import MultiPipeline
from fusionedge.sdk.streaming.pipeline import Pipeline, PipelineConfig, StreamResult
from fusionedge.sdk.streaming.queues import BoundedQueue
from fusionedge.sdk.streaming.signals import StopSignals
from fusionedge.sdk.streaming.sinks import CallbackSink, JsonlEventSink, Sink, VideoFileSink
from fusionedge.sdk.streaming.sources import (
    AudioChunk,
    AudioSource,
    Frame,
    VideoSource,
    open_audio_source,
    open_video_source,
)
from fusionedge.sdk.streaming.uri import SourceURI, parse_uri

__all__ = [
    "AudioChunk", "AudioRing", "AudioSource", "BoundedQueue", "CallbackSink", "Frame", "HealthEvent",
    "JsonlEventSink", "MosaicSink", "MultiPipeline", "Pipeline", "PipelineConfig", "Sink", "SourceSupervisor", "SourceURI", "StopSignals",
    "StreamClock", "StreamResult", "Synchronizer", "VideoFileSink", "VideoSource", "open_audio_source",
    "open_video_source", "parse_uri",
]
