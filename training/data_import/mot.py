"""MOTChallenge ground truth (``gt.txt``) over a long video → clip windows with the last frame's boxes.

A line of ``gt.txt`` is ``frame,id,x,y,w,h[,conf,class,visibility[,z]]`` (1-based frames, pixels);
CVAT's "MOT 1.1" export writes the same. A line with ``conf`` 0 is a region the benchmark ignores and
is left out. Classes are named by the MOT17/MOT20 table (:data:`MOT_CLASSES`); a line without a
class (the 6- and 7-field forms) is a ``pedestrian``. The frames come from the sequence's ``img1/``
folder, or from a video file; ``seqinfo.ini`` gives the frame rate where it exists.

The sequence is cut into windows of ``clip_frames`` frames, one starting every ``stride`` frames;
each window is one sample whose boxes are those of its last frame, cut to the image. Frames of a
video are decoded once, front to back, whatever the overlap of the windows.
"""

from __future__ import annotations

import configparser
import math
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from fusionedge.sdk.datamanifest import Box
from fusionedge.sdk.errors import DataError, MediaError
from fusionedge.sdk.media import IMAGE_EXTENSIONS

from .common import Planned, Refusal, clip_box, read_image, safe_id, write_video

__all__ = ["MOT_CLASSES", "plan_mot"]

#: MOT17/MOT20 class numbers and their names.
MOT_CLASSES: dict[int, str] = {
    1: "pedestrian", 2: "person_on_vehicle", 3: "car", 4: "bicycle", 5: "motorbike",
    6: "non_motorized_vehicle", 7: "static_person", 8: "distractor", 9: "occluder",
    10: "occluder_on_ground", 11: "occluder_full", 12: "reflection", 13: "crowd",
}


class _Frames:
    """Frames ``first..last`` (1-based) of an image folder or a video, read forward once."""

    def __init__(self, images: list[Path] | None, video: Path | None):
        self.images, self.video = images, video
        self._cap: cv2.VideoCapture | None = None
        self._next = 1
        self._kept: dict[int, np.ndarray] = {}

    def window(self, first: int, last: int) -> list[np.ndarray]:
        if self.images is not None:
            return [read_image(self.images[k - 1]) for k in range(first, last + 1)]
        if self._cap is None or first < min(self._kept, default=self._next):
            self._open()
        self._kept = {k: f for k, f in self._kept.items() if k >= first}
        while self._next <= last:
            ok, bgr = self._cap.read()
            if not ok:
                raise MediaError(f"{self.video}: frame {self._next} does not decode (the file ends early?)")
            if self._next >= first:
                self._kept[self._next] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            self._next += 1
        return [self._kept[k] for k in range(first, last + 1)]

    def _open(self) -> None:
        self.close()
        self._cap = cv2.VideoCapture(str(self.video))
        if not self._cap.isOpened():
            raise MediaError(f"{self.video}: OpenCV cannot open this as a video")
        self._next, self._kept = 1, {}

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _source(seq: Path, video: Path | None) -> tuple[list[Path] | None, Path | None, int, int, int]:
    """(images, video, frame count, width, height) of the sequence."""
    if video is not None:
        cap = cv2.VideoCapture(str(video))
        try:
            if not cap.isOpened():
                raise MediaError(f"{video}: OpenCV cannot open this as a video")
            n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        finally:
            cap.release()
        if not math.isfinite(n) or n < 1 or w < 1 or h < 1:
            raise MediaError(f"{video}: the video reports no frame count or size")
        return None, video, int(n), w, h
    folder = seq / "img1"
    if not folder.is_dir():
        raise DataError(f"{seq}: no img1/ frame folder; name the sequence's video with --video")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"{folder}: holds no images")
    h, w = read_image(images[0]).shape[:2]
    return images, None, len(images), w, h


def _fps(seq: Path, fps: float | None) -> float:
    if fps is not None:
        return fps
    ini = seq / "seqinfo.ini"
    if ini.is_file():
        cp = configparser.ConfigParser()
        try:
            cp.read(ini, encoding="utf-8")
            rate = cp.getfloat("Sequence", "frameRate", fallback=None)
        except (configparser.Error, ValueError) as e:
            raise DataError(f"{ini}: cannot read frameRate: {e}") from e
        if rate is not None and math.isfinite(rate) and rate > 0:
            return rate
    return 30.0


def _parse_line(gt: Path, lineno: int, text: str, n: int) -> tuple[int, Box] | Refusal | None:
    where = f"{gt}:{lineno}"
    fields = [f.strip() for f in text.split(",")]
    if not 6 <= len(fields) <= 10:
        return Refusal(where, f"{len(fields)} fields, expected 6 to 10 (frame,id,x,y,w,h[,conf,class,vis])")
    try:
        frame, _track = int(fields[0]), int(float(fields[1]))
        x, y, w, h = (float(v) for v in fields[2:6])
        conf = float(fields[6]) if len(fields) > 6 else 1.0
        cls = int(float(fields[7])) if len(fields) > 7 else 1
    except ValueError as e:
        return Refusal(where, f"not a number ({e})")
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return Refusal(where, f"box needs finite x, y and w, h > 0, got {fields[2:6]}")
    if not 1 <= frame <= n:
        return Refusal(where, f"frame {frame} is outside the sequence's frames 1..{n}")
    if conf == 0:
        return None  # a region the benchmark ignores
    return frame, Box(MOT_CLASSES.get(cls, f"class_{cls}"), x, y, x + w, y + h)


def _make(frames: _Frames, first: int, last: int, fps: float, sid: str, final: bool):
    def make(media: Path) -> tuple[Path, Path | None]:
        video = media / f"{sid}.mp4"
        try:
            write_video(video, frames.window(first, last), fps)
        finally:
            if final:
                frames.close()  # the last window: the video is not read again
        return video, None
    return make


def plan_mot(src: str | Path, *, video: str | Path | None = None, fps: float | None = None,
             clip_frames: int = 8, stride: int | None = None) -> tuple[list[Planned], list[Refusal]]:
    """Read a MOT sequence's ground truth and plan its clip windows (nothing is written).

    Args:
        src: the sequence folder (holding ``gt/gt.txt``, ``img1/``, ``seqinfo.ini``) or a ``gt.txt`` file.
        video: a video file holding the sequence's frames (default: the ``img1/`` images).
        fps: frame rate of the written clips (default: ``seqinfo.ini``'s frameRate, else 30).
        clip_frames: frames per window.
        stride: frames between window starts (default: ``clip_frames``).

    Returns:
        The planned samples and the refused lines.

    Raises:
        DataError: no ``gt.txt`` or frames found. MediaError: the video cannot be opened.
    """
    src = Path(src)
    gt = src if src.is_file() else src / "gt" / "gt.txt"
    seq = gt.parent.parent if gt.parent.name == "gt" else gt.parent
    if not gt.is_file():
        raise DataError(f"{gt}: MOT ground truth not found")
    images, vid, n, width, height = _source(seq, Path(video) if video is not None else None)
    rate = _fps(seq, fps)
    stride = stride or clip_frames
    try:
        text = gt.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{gt}: cannot read: {e}") from e
    refused: list[Refusal] = []
    boxes: dict[int, list[Box]] = defaultdict(list)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        got = _parse_line(gt, lineno, line, n)
        if isinstance(got, Refusal):
            refused.append(got)
        elif got is not None:
            frame, b = got
            cut = clip_box(b.x1, b.y1, b.x2, b.y2, width, height)
            if cut is not None:
                boxes[frame].append(Box(b.label, *cut))
    frames = _Frames(images, vid)
    name = safe_id(seq.name)
    planned = []
    lasts = range(min(clip_frames, n), n + 1, stride)
    for last in lasts:
        first = max(1, last - clip_frames + 1)
        sid = f"{name}-{last:06d}"
        planned.append(Planned(sid, _make(frames, first, last, rate, sid, last == lasts[-1]), boxes=tuple(boxes.get(last, ())),
                               width=width, height=height, meta={"source": f"{seq.name}:{first}-{last}"}))
    return planned, refused
