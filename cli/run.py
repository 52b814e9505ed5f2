"""``fusionedge run``: run a bundle on live or replayed sensors, with live progress and a summary.

::

    fusionedge run --bundle B --video /dev/video0 --audio mic://default --events events.jsonl
    fusionedge run --bundle B --video clip.mp4 --audio clip.wav --out annotated.mp4 --fast --policy offline
    fusionedge run --bundle B --video dashcam.mp4      # its own sound track, aligned by the timestamps
    fusionedge run --bundle B --source front=rtsp://cam1/s --source rear=/dev/video1 \
        --mic cabin=mic://default --hears front,rear --events events.jsonl --out mosaic.mp4

Named ``--source`` / ``--mic`` run several cameras at once (:mod:`fusionedge.sdk.streaming.multi`): a
camera's step is inferred as soon as it is ready, the steps ready together in one batch; results and
events per camera; ``--out FILE.mp4`` one mosaic video of all
cameras (a grid, each tile labelled; a camera that is down shows "no signal"), ``--out-dir DIR`` (or
``--out DIR`` without a suffix) one video per camera.

The pipeline itself is :mod:`fusionedge.sdk.streaming`; this module parses the verb and prints the
live progress line and the summary (``--json``: one object). ``python -m fusionedge.cli.run ARGS``
is ``fusionedge run ARGS``. Ctrl-C and SIGTERM (systemd, Docker, Kubernetes) stop cleanly: the output
files are flushed and closed and the summary printed (exit status 130 / 143).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusionedge.cli.config import add_config_option
from fusionedge.cli.options import add_backends_option, add_json_option, add_metrics_options, start_metrics
from fusionedge.cli.output import print_json

__all__ = ["add_run_parser", "cmd_run", "main"]


def add_run_parser(verbs: Any) -> argparse.ArgumentParser:
    """Add the ``run`` verb to the top-level verb subparsers.

    Args:
        verbs: the object ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``run`` parser (its ``func`` default runs the pipeline).
    """
    help = "run a bundle on a camera / stream / file (+ microphone / wav) in real time"
    p = verbs.add_parser("run", help=help, description=help)
    p.add_argument("--bundle", required=True, type=Path, help="the bundle folder")
    p.add_argument("--video", default=None, help="video URI: file, folder, /dev/videoN, v4l2://N, csi://N, "
                                                 "rtsp://..., gst://...")
    p.add_argument("--audio", default=None, help="audio URI: file.wav (flac, ogg, mp3 with fusionedge[media]), "
                                                 "mic://default, alsa://hw:0,0; default: the --video file's "
                                                 "own sound where it has one")
    p.add_argument("--source", dest="sources", action="append", default=[], metavar="NAME=URI",
                   help="a named camera (repeat for several; steps ready together are inferred as one batch); "
                        "instead of --video")
    p.add_argument("--mic", dest="mics", action=_MicAction, default=[], metavar="NAME=URI",
                   help="a named microphone for the --source cameras (repeat for several)")
    p.add_argument("--hears", action=_HearsAction, default={}, metavar="CAM,CAM",
                   help="the cameras the preceding --mic is heard by (default with one --mic: all)")
    p.add_argument("--out", type=Path, default=None, help="write the annotated video here (.mp4); with "
                                                          "--source one mosaic of every camera (a folder "
                                                          "without a suffix: as --out-dir)")
    p.add_argument("--out-dir", type=Path, default=None, metavar="DIR",
                   help="with --source: one annotated NAME.mp4 per camera in this folder")
    p.add_argument("--events", type=Path, default=None, help="write a JSONL event log here")
    p.add_argument("--track", action="store_true",
                   help="track each camera's boxes and write track events (entry, exit, approaching / "
                        "receding, time to contact; the siren level for the emergency vehicle) to --events")
    p.add_argument("--ask", default=None, metavar="QUESTION",
                   help="a standing question (e.g. \"is a siren heard?\") asked of the clip every --ask-every "
                        "steps; each answer is an 'answer' line in --events (needs a bundle with a qa block)")
    p.add_argument("--ask-every", type=int, default=10, metavar="N",
                   help="with --ask: ask at every N-th step (each answer costs about one more inference)")
    p.add_argument("--policy", choices=("live", "offline"), default=None,
                   help="live: drop oldest when behind (default with --realtime); offline: never drop "
                        "(default with --fast)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=True,
                      help="replay files at their native rate (default)")
    pace.add_argument("--fast", dest="realtime", action="store_false", help="replay files as fast as possible")
    add_backends_option(p)
    p.add_argument("--threads", type=int, default=None,
                   help="inference threads (onnxruntime; default: the cores left after capture and encoding)")
    p.add_argument("--spin", action="store_true",
                   help="let idle onnxruntime workers spin-wait (faster alone, but they take CPU from capture "
                        "and encoding on a small device; default: off)")
    p.add_argument("--attribution", action="store_true",
                   help="run each step also with each sensor withheld: every result says how much of its "
                        "decision was seen and how much heard (events, annotated video)")
    p.add_argument("--attribution-interval", type=float, default=0.25, metavar="SECONDS",
                   help="with --attribution: stream seconds between attributed steps (0: every step; each "
                        "attributed step costs about two more inferences, and the results between carry the "
                        "latest attribution)")
    p.add_argument("--stall-timeout", type=float, default=1.0, help="seconds without data = sensor stalled")
    add_json_option(p, help="print the summary as one JSON object on stdout")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no live progress line")
    add_metrics_options(p, "the pipeline (results per second, stage latencies, drops, sensors, model)")
    add_config_option(p, "FUSIONEDGE_RUN_")
    p.set_defaults(func=cmd_run)
    return p


def _progress_line(s: dict) -> str:
    lat = s["latency_ms"].get("capture_to_result", {})
    sensors = " ".join(f"{k}:{v['state']}" for k, v in s["sensors"].items())
    return (f"\r{s['results']} results  {s['fps_recent']:.1f} fps  dropped {s['dropped']}  "
            f"latency p50 {lat.get('p50', 0):.1f} ms p99 {lat.get('p99', 0):.1f} ms  {sensors}   ")


def cmd_run(args: argparse.Namespace) -> int:
    """Run the pipeline for parsed ``run`` arguments; returns the exit status (130 / 143 after SIGINT /
    SIGTERM, which stop it cleanly from the start, model loading included).

    Raises:
        FusionEdgeError: a bad bundle, URI or backend (the CLI prints it on one line).
    """
    from fusionedge.sdk.streaming.signals import StopSignals

    with StopSignals() as signals:
        return _run(args, signals)


def _track_sink(events: Any, pipe: Any, perception: Any, camera: str | None) -> Any:
    """A TrackSink of one camera into the event log (its frame rate read once the camera is open)."""
    from fusionedge.sdk.streaming.tracks import TrackSink

    return TrackSink(events, lambda: pipe.video_fps, perception.geometry.sample_rate, camera)


def _backend_options(args: argparse.Namespace, *, capture: int, encode: int) -> dict:
    """ONNX Runtime's threads for a stream: --threads, else the cores left; spinning only with --spin."""
    from fusionedge.sdk.streaming.threads import streaming_backend_options

    return streaming_backend_options(capture, encode, threads=args.threads, spinning=args.spin)


def _check_track(args: argparse.Namespace) -> None:
    from fusionedge.sdk.errors import InputError

    if args.track and args.events is None:
        raise InputError("--track writes track events to the event log: give --events FILE.jsonl")
    if args.ask is not None and args.events is None:
        raise InputError("--ask writes its answers to the event log: give --events FILE.jsonl")
    if args.ask_every < 1:
        raise InputError(f"--ask-every must be >= 1, got {args.ask_every}")


def _question_sink(args: argparse.Namespace, events: Any, perception: Any, camera: str | None) -> Any:
    """A QuestionSink of one camera: ``--ask`` every ``--ask-every`` steps, answers into the event log."""
    from fusionedge.sdk.streaming.questions import QuestionSink

    return QuestionSink(events, perception, args.ask, every=args.ask_every, camera=camera)


def _run(args: argparse.Namespace, signals: Any) -> int:
    _check_track(args)
    from fusionedge.sdk.perception import Perception
    from fusionedge.sdk.streaming.pipeline import Pipeline, PipelineConfig
    from fusionedge.sdk.streaming.sinks import JsonlEventSink, VideoFileSink

    if args.sources or args.mics:
        return _run_cameras(args, signals)
    if args.video is None and args.audio is None:
        from fusionedge.sdk.errors import InputError

        raise InputError("give --video, --audio or both")
    metrics = server = None
    if args.metrics_port is not None:
        from fusionedge.cli.extras import require_extra

        require_extra("telemetry")
        from fusionedge.sdk.telemetry import PipelineMetrics

        metrics = PipelineMetrics()
        server = start_metrics(args, metrics.registry)
    policy = args.policy or ("live" if args.realtime else "offline")
    options = _backend_options(args, capture=int(args.video is not None) + int(args.audio is not None), encode=int(
        args.out is not None))
    try:
        with Perception.load(args.bundle, backends=args.backends, backend_options=options,
                             attribution=args.attribution) as perception:
            config = PipelineConfig(policy=policy, realtime=args.realtime, stall_timeout=args.stall_timeout,
                                    attribution_interval=args.attribution_interval)
            pipe_sinks: list = []
            audio = args.audio if args.audio is not None else _embedded_audio(args.video)
            pipe = Pipeline(perception, video=args.video, audio=audio, sinks=pipe_sinks, config=config)
            if args.events is not None:
                pipe_sinks.append(JsonlEventSink(args.events))
                if args.track:
                    pipe_sinks.append(_track_sink(pipe_sinks[-1], pipe, perception, None))
                if args.ask is not None:
                    pipe_sinks.append(_question_sink(args, pipe_sinks[0], perception, None))
            if args.out is not None:
                pipe_sinks.append(_LazyVideoSink(args.out, pipe, VideoFileSink))
            if metrics is not None:
                pipe_sinks.append(metrics.sink())
                metrics.watch(pipe.stats)
            pipe.sinks = pipe_sinks
            show = args.progress and sys.stderr.isatty()
            summary = pipe.run(progress=(lambda s: print(_progress_line(s), end="", file=sys.stderr,
                                                         flush=True)) if show else None, signals=signals)
    finally:
        if server is not None:
            server.close()
    _report(args, summary, show)
    return signals.exit_status


def _report(args: argparse.Namespace, summary: dict, show: bool) -> None:
    if show:
        print(file=sys.stderr)
    if args.json:
        print_json(summary)
    else:
        lat = summary["latency_ms"].get("capture_to_result", {})
        print(f"{summary['results']} results from {summary['frames_captured']} frames in "
              f"{summary['elapsed_s']:.1f} s ({summary['fps']:.1f} fps), dropped {summary['dropped']}, "
              f"capture->result p50 {lat.get('p50', 0):.1f} ms, p99 {lat.get('p99', 0):.1f} ms"
              + (" (interrupted)" if summary["interrupted"] else ""))
        for name, s in summary["sensors"].items():
            print(f"  {name}: {s['state']} ({s['failures']} failures, {s['recoveries']} recoveries)")


class _MicAction(argparse.Action):
    """``--mic NAME=URI``: appended in order, so a following ``--hears`` knows its microphone."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), values])


class _HearsAction(argparse.Action):
    """``--hears CAM,CAM``: the cameras that hear the ``--mic`` given just before."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        mics = getattr(namespace, "mics", [])
        if not mics:
            parser.error("--hears follows the --mic it is about")
        hears = dict(getattr(namespace, self.dest, {}))
        hears[len(mics) - 1] = [c.strip() for c in str(values).split(",") if c.strip()]
        setattr(namespace, self.dest, hears)


def _run_cameras(args: argparse.Namespace, signals: Any) -> int:
    """``--source`` / ``--mic``: several named cameras and microphones, their ready steps batched."""
    from fusionedge.sdk.errors import InputError
    from fusionedge.sdk.perception import Perception
    from fusionedge.sdk.streaming.mosaic import MosaicSink
    from fusionedge.sdk.streaming.multi import MultiPipeline, parse_named_source
    from fusionedge.sdk.streaming.pipeline import PipelineConfig
    from fusionedge.sdk.streaming.sinks import JsonlEventSink, VideoFileSink

    if args.video is not None or args.audio is not None:
        raise InputError("give either --video/--audio (one camera) or named --source/--mic, not both")
    if args.out is not None and args.out_dir is not None:
        raise InputError("give --out FILE.mp4 (one mosaic) or --out-dir DIR (one video per camera), not both")
    if not args.sources:
        raise InputError("--mic needs at least one --source camera")
    cameras = [parse_named_source(s, "video") for s in args.sources]
    mics = [parse_named_source(m, "audio") for m in args.mics]
    hears = {mics[i][0]: cams for i, cams in args.hears.items()} if args.hears else None
    if hears is not None and len(hears) < len(mics):
        missing = [n for n, _ in mics if n not in hears]
        raise InputError(f"say which cameras hear microphone {missing[0]!r} (--hears after its --mic)")
    policy = args.policy or ("live" if args.realtime else "offline")
    per_camera = args.out_dir is not None or (args.out is not None and not args.out.suffix)
    options = _backend_options(args, capture=len(cameras) + len(mics),
                               encode=len(cameras) if per_camera else int(args.out is not None))
    show = args.progress and sys.stderr.isatty()
    with Perception.load(args.bundle, backends=args.backends, backend_options=options,
                         attribution=args.attribution) as perception:
        config = PipelineConfig(policy=policy, realtime=args.realtime, stall_timeout=args.stall_timeout,
                                attribution_interval=args.attribution_interval)
        multi = MultiPipeline(perception, cameras=cameras, mics=mics, hears=hears, config=config)
        if args.events is not None:
            events = JsonlEventSink(args.events)
            multi.add_sink(events)
            if args.track:
                for name, pipe in multi.pipelines.items():
                    multi.add_sink(_track_sink(events, pipe, perception, name), camera=name)
            if args.ask is not None:
                for name in multi.pipelines:
                    multi.add_sink(_question_sink(args, events, perception, name), camera=name)
        folder = args.out_dir if args.out_dir is not None else (
            args.out if args.out is not None and not args.out.suffix else None)
        if folder is not None:
            for name, pipe in multi.pipelines.items():
                multi.add_sink(_LazyVideoSink(folder / f"{name}.mp4", pipe, VideoFileSink), camera=name)
        elif args.out is not None:
            pipes = list(multi.pipelines.values())
            multi.add_sink(MosaicSink(args.out, list(multi.pipelines), lambda: max(p.video_fps for p in pipes),
                                      policy=policy))
        summary = multi.run(progress=(lambda s: print(_progress_line(s), end="", file=sys.stderr,
                                                      flush=True)) if show else None, signals=signals)
    _report(args, summary, show)
    return signals.exit_status


def _embedded_audio(video: str | None) -> str | None:
    """The video file itself as the audio source when it carries sound (a dashcam's mp4), else None."""
    from fusionedge.sdk.media import embedded_audio

    found = embedded_audio(video)
    return str(found) if found is not None else None


class _LazyVideoSink:
    """A VideoFileSink created at the first result, when the source's frame rate is known."""

    def __init__(self, path: Path, pipe: Any, cls: Any) -> None:
        self._path, self._pipe, self._cls, self._sink = path, pipe, cls, None

    def write(self, result: Any) -> None:
        if self._sink is None:
            self._sink = self._cls(self._path, self._pipe.video_fps)
        self._sink.write(result)

    def on_health(self, event: Any) -> None:
        pass

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``fusionedge run ARGS`` for ``python -m fusionedge.cli.run ARGS``; returns the exit status.

    Args:
        argv: the ``run`` verb's arguments (default: ``sys.argv[1:]``).
    """
    from fusionedge.cli.main import main as fusionedge_main

    return fusionedge_main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
