"""Variable frame rate: frames are placed by the container's timestamps, not by their index.

OpenCV writes constant-rate mp4 files only, so the test makes a real variable-rate file by
rewriting the sample durations (the ``stts`` box) of one it wrote: 20 frames 50 ms apart, then 10
frames 200 ms apart (3 s, 30 frames, 10 fps on average). FFmpeg's demuxer then gives each frame its
new time, as it would for a phone recording.
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from fusionedge.sdk.media import read_video
from fusionedge.sdk.streaming.clock import StreamClock
from fusionedge.sdk.streaming.sources import open_video_source

TIMES = [0.05 * i for i in range(20)] + [1.0 + 0.2 * i for i in range(10)]


def _boxes(data: bytes, lo: int, hi: int):
    pos = lo
    while pos + 8 <= hi:
        size, kind = struct.unpack_from(">I4s", data, pos)
        yield pos, size, kind
        pos += size


def _make_vfr(mp4: Path, times: list[float]) -> None:
    """Rewrite the sample durations (stts) of a one-track mp4 so that frame i is shown at times[i]."""
    data = bytearray(mp4.read_bytes())
    top = {k: p for p, _, k in _boxes(data, 0, len(data))}
    assert top[b"moov"] > top[b"mdat"], "moov must follow mdat so that the chunk offsets stay valid"
    parents: list[int] = []  # moov, trak, mdia, minf, stbl: each grows with stts

    def find(lo: int, hi: int, names: list[bytes]) -> int:
        for p, s, k in _boxes(data, lo, hi):
            if k == names[0]:
                parents.append(p)
                return p if len(names) == 1 else find(p + 8, p + s, names[1:])
        raise AssertionError(f"no {names[0]!r} box")

    stbl = find(0, len(data), [b"moov", b"trak", b"mdia", b"minf", b"stbl"])
    mdia = parents[2]
    mdhd = next(p for p, _, k in _boxes(data, mdia + 8, mdia + struct.unpack_from(">I", data, mdia)[0])
                if k == b"mdhd")
    assert data[mdhd + 8] == 0, "a version-0 mdhd box"
    timescale = struct.unpack_from(">I", data, mdhd + 20)[0]
    stts = next(p for p, _, k in _boxes(data, stbl + 8, stbl + struct.unpack_from(">I", data, stbl)[0])
                if k == b"stts")
    old_size = struct.unpack_from(">I", data, stts)[0]
    ticks = [round(t * timescale) for t in times]
    deltas = [b - a for a, b in itertools.pairwise(ticks)] + [ticks[-1] - ticks[-2]]
    body = struct.pack(">II", 0, len(deltas)) + b"".join(struct.pack(">II", 1, d) for d in deltas)
    new = struct.pack(">I4s", 8 + len(body), b"stts") + body
    data[stts:stts + old_size] = new
    for p in parents:
        struct.pack_into(">I", data, p, struct.unpack_from(">I", data, p)[0] + len(new) - old_size)
    struct.pack_into(">I", data, mdhd + 24, sum(deltas))  # the track's duration
    mp4.write_bytes(bytes(data))


def _level(frame: np.ndarray) -> int:
    return int(frame.mean() / 8 + 0.5)  # frame i is grey level 8 * i


@pytest.fixture(scope="module")
def vfr(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for i in range(len(TIMES)):
        w.write(np.full((48, 64, 3), 8 * i, np.uint8))
    w.release()
    _make_vfr(p, TIMES)
    cap = cv2.VideoCapture(str(p))
    seen = []
    while cap.read()[0]:
        seen.append(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000)
    assert seen == pytest.approx(TIMES, abs=1e-3), "the rewritten file does not carry the new times"
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    return p


def _on_screen(t: float) -> int:
    """The frame shown at time t: the last one that started at or before it."""
    return max(i for i, s in enumerate(TIMES) if s <= t + 1e-6)


def test_a_window_of_a_vfr_file_holds_the_frames_shown_at_its_times(vfr: Path) -> None:
    clip = read_video(vfr, start_seconds=2.0, max_seconds=0.5)
    assert clip.fps == pytest.approx(10.0)
    got = [_level(f) for f in clip.frames]
    assert got == [_on_screen(2.0 + k / 10) for k in range(5)] == [25, 25, 26, 26, 27]


def test_the_whole_vfr_file_is_put_on_the_frame_grid(vfr: Path) -> None:
    clip = read_video(vfr)
    got = [_level(f) for f in clip.frames]
    assert len(got) == 29  # 0.0 .. 2.8 s at 10 fps
    assert got == [_on_screen(k / 10) for k in range(29)]
    drift = max(abs(TIMES[g] - k / 10) for k, g in enumerate(got))
    assert drift <= 0.1 + 1e-9  # each frame is within one period of its slot (index / fps drifts 1.8 s here)


def test_replay_stamps_each_frame_with_its_container_time(vfr: Path) -> None:
    src = open_video_source(str(vfr), StreamClock(), realtime=False)
    src.open()
    stamps = []
    while (f := src.read()) is not None:
        stamps.append(f.t)
    src.close()
    assert stamps == pytest.approx(TIMES, abs=1e-3)
