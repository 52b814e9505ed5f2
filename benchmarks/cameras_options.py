"""The options of a cameras run, checked: what ``fusionedge bench cameras`` and ``bench_cameras.py`` take.

:func:`cameras_config` turns the options as typed (``--cameras 1,2,3``, ``--size 1280x720``,
``--threads auto,2``) into a :class:`CamerasConfig`, refusing a value out of range with a
:class:`~fusionedge.benchmarks.errors.BenchConfigError` that names the option (one line, exit status 2
on the command line); :func:`add_cameras_arguments` adds the options to a parser, so the verb and the
script spell them alike. It imports the standard library only, so building the command line's parser
stays cheap; the measuring is in :mod:`fusionedge.benchmarks.bench_cameras`.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from fusionedge.benchmarks.errors import BenchConfigError

__all__ = ["DEFAULT_CAMERAS", "FPS", "MAX_CAMERAS", "MIN_DELIVERED", "MIN_FRAMES", "CamerasConfig",
           "add_cameras_arguments", "cameras_config", "config_from_args"]

#: The frame rate of the question (``--fps`` changes it).
FPS = 30.0
#: Camera counts measured when none are given.
DEFAULT_CAMERAS = (1, 2, 3)
#: The most cameras one configuration may ask for (each is a capture thread and a pipeline).
MAX_CAMERAS = 64
#: Share of the expected frames each camera must deliver as results for a run to count as sustained.
MIN_DELIVERED = 0.9
#: Frames each camera must be expected to deliver in one run (``seconds x fps``) for the run to judge it.
MIN_FRAMES = 10

_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


# ------------------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class CamerasConfig:
    """What :func:`~fusionedge.benchmarks.bench_cameras.run_cameras` measures (build it with :func:`cameras_config`, which checks it).

    Attributes:
        bundle: the bundle folder.
        cameras: camera counts, ascending.
        fps: each camera's frame rate; one frame period is the p99 limit.
        size: each camera's frame ``(width, height)``.
        audio: one synthetic microphone heard by every camera.
        batched: True (one batched inference per tick) and / or False (one inference per camera).
        spinning: ``"off"`` / ``"on"``: ONNX Runtime's idle workers sleep or spin-wait.
        busy: ``"off"`` / ``"on"``: one core kept busy by another process during the run.
        threads: ONNX Runtime intra-op threads; None: the cores left after capture (the stream's default).
        repeats: rounds; each runs every configuration once.
        seconds: length of each run.
        seed: the order of the configurations within the rounds.
    """

    bundle: Path
    cameras: tuple[int, ...] = DEFAULT_CAMERAS
    fps: float = FPS
    size: tuple[int, int] = (640, 360)
    audio: bool = False
    batched: tuple[bool, ...] = (True, False)
    spinning: tuple[str, ...] = ("off",)
    busy: tuple[str, ...] = ("off",)
    threads: tuple[int | None, ...] = (None,)
    repeats: int = 3
    seconds: float = 5.0
    seed: int = 0


def _both(value: str, option: str) -> tuple[str, ...]:
    if value not in ("both", "on", "off"):
        raise BenchConfigError(f"{option} takes both, on or off, got {value!r}")
    return ("off", "on") if value == "both" else (value,)


def _counts(text: str | None, max_cameras: int | None) -> tuple[int, ...]:
    if text is not None and max_cameras is not None:
        raise BenchConfigError("give --cameras or --max-cameras, not both")
    if max_cameras is not None:
        if not 1 <= max_cameras <= MAX_CAMERAS:
            raise BenchConfigError(f"--max-cameras takes 1 to {MAX_CAMERAS}, got {max_cameras}")
        return tuple(range(1, max_cameras + 1))
    if text is None:
        return DEFAULT_CAMERAS
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError as e:
        raise BenchConfigError(f"--cameras takes counts like 1,2,3, got {text!r}") from e
    if not counts or counts[0] < 1 or counts[-1] > MAX_CAMERAS:
        raise BenchConfigError(f"--cameras takes counts from 1 to {MAX_CAMERAS}, like 1,2,3, got {text!r}")
    return tuple(counts)


def _size(text: str) -> tuple[int, int]:
    m = _SIZE.match(text)
    if m is None:
        raise BenchConfigError(f"--size takes WIDTHxHEIGHT, e.g. 1280x720, got {text!r}")
    w, h = int(m[1]), int(m[2])
    if not (16 <= w <= 7680 and 16 <= h <= 4320):
        raise BenchConfigError(f"--size takes 16x16 to 7680x4320, got {text!r}")
    return w, h


def _threads(text: str) -> tuple[int | None, ...]:
    out: list[int | None] = []
    for t in (t.strip() for t in text.split(",")):
        if not t:
            continue
        if t == "auto":
            out.append(None)
            continue
        try:
            n = int(t)
        except ValueError:
            n = 0
        if n < 1:
            raise BenchConfigError(f"--threads takes auto or counts >= 1, like auto,2, got {text!r}")
        out.append(n)
    if not out:
        raise BenchConfigError(f"--threads takes auto or counts >= 1, like auto,2, got {text!r}")
    return tuple(dict.fromkeys(out))


def cameras_config(bundle: str | os.PathLike, *, cameras: str | None = None, max_cameras: int | None = None,
                   fps: float = FPS, size: str = "640x360", audio: bool = False, batched: str = "both",
                   spinning: str = "off", busy: str = "off", threads: str = "auto", repeats: int = 3,
                   seconds: float = 5.0, seed: int = 0) -> CamerasConfig:
    """Check the options as a user typed them and build the :class:`CamerasConfig`.

    Args:
        bundle: the bundle folder.
        cameras: camera counts such as ``"1,2,3"`` (None: :data:`DEFAULT_CAMERAS`, or ``max_cameras``).
        max_cameras: measure 1 to this many cameras instead of ``cameras``.
        fps: each camera's frame rate (> 0, at most 240).
        size: each camera's frame size ``WIDTHxHEIGHT``.
        audio: add one synthetic microphone that every camera hears.
        batched: ``both``, ``on`` (batched only) or ``off`` (one inference per camera only).
        spinning: ``both``, ``on`` or ``off``: ONNX Runtime's idle workers spin-wait.
        busy: ``both``, ``on`` or ``off``: one core kept busy by another process.
        threads: ONNX Runtime intra-op threads, comma-separated, ``auto`` for the stream's default.
        repeats: rounds (>= 1).
        seconds: length of each run (> 0).
        seed: the order of the configurations within the rounds.

    Raises:
        BenchConfigError: a value out of range or malformed (the message names the option).
    """
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and 0 < fps <= 240):
        raise BenchConfigError(f"--fps takes a frame rate above 0 and at most 240, got {fps}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise BenchConfigError(f"--seconds takes a length above 0, got {seconds}")
    if repeats < 1:
        raise BenchConfigError(f"--repeats takes 1 or more, got {repeats}")
    if seconds * fps < MIN_FRAMES:
        raise BenchConfigError(f"--seconds {seconds:g} at --fps {fps:g} is {seconds * fps:.3g} frames per camera; "
                               f"a run needs at least {MIN_FRAMES} to be judged")
    modes = {"both": (True, False), "on": (True,), "off": (False,)}.get(batched)
    if modes is None:
        raise BenchConfigError(f"--batched takes both, on or off, got {batched!r}")
    return CamerasConfig(bundle=Path(bundle), cameras=_counts(cameras, max_cameras), fps=float(fps),
                         size=_size(size), audio=bool(audio), batched=modes,
                         spinning=_both(spinning, "--spinning"), busy=_both(busy, "--busy"),
                         threads=_threads(threads), repeats=int(repeats), seconds=float(seconds), seed=int(seed))


# --------------------------------------------------------------------------------------- options


def add_cameras_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of a cameras run (``--bundle`` ... ``--seed``) to ``p``; see :func:`config_from_args`."""
    p.add_argument("--bundle", type=Path, required=True, help="the bundle folder to measure")
    p.add_argument("--cameras", default=None,
                   help="camera counts to measure, comma-separated (default: 1,2,3)")
    p.add_argument("--max-cameras", type=int, default=None, metavar="N",
                   help="measure 1 to N cameras instead of --cameras")
    p.add_argument("--fps", type=float, default=FPS, help="each camera's frame rate; the p99 limit is one "
                                                          "frame period")
    p.add_argument("--size", default="640x360", help="each synthetic camera's frame size WIDTHxHEIGHT")
    p.add_argument("--audio", action="store_true",
                   help="add one synthetic microphone that every camera hears")
    p.add_argument("--batched", choices=("both", "on", "off"), default="both",
                   help="one batched inference per tick (on), one inference per camera (off), or both")
    p.add_argument("--spinning", choices=("both", "on", "off"), default="off",
                   help="ONNX Runtime workers spin-wait (on) or sleep (off); both: measure each")
    p.add_argument("--busy", choices=("both", "on", "off"), default="off",
                   help="one core kept busy by another process during the run (on), or not; both: each")
    p.add_argument("--threads", default="auto", help="ONNX Runtime intra-op threads, comma-separated to "
                                                     "measure each (auto: the cores left after capture)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each runs every configuration once")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    p.add_argument("--seed", type=int, default=0, help="the order of configurations within the rounds")


def config_from_args(args: argparse.Namespace) -> CamerasConfig:
    """The :class:`CamerasConfig` of options added by :func:`add_cameras_arguments` (checked)."""
    return cameras_config(args.bundle, cameras=args.cameras, max_cameras=args.max_cameras, fps=args.fps,
                          size=args.size, audio=args.audio, batched=args.batched, spinning=args.spinning,
                          busy=args.busy, threads=args.threads, repeats=args.repeats, seconds=args.seconds,
                          seed=args.seed)
