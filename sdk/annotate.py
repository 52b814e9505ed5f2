"""Draw a result onto video frames and write an annotated clip (``fusionedge predict --out``).

:func:`draw_result` draws boxes (with track ids where tracks are given), the event, the audio tags and
the attribution on a frame; :func:`draw_tile` does so on a camera's tile of a mosaic, labelled with the
camera's name, and :func:`no_signal_tile` is the tile of a camera that is down.

The clip is encoded into a private temporary folder and then put in place with
:func:`fusionedge.sdk.fileio.write_bytes_atomic`, so an interrupted or failed run never leaves a
half-written video (nor a temporary file) where the output belongs.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from fusionedge.sdk.errors import MediaError
from fusionedge.sdk.fileio import write_bytes_atomic
from fusionedge.sdk.media import read_video

if TYPE_CHECKING:
    from fusionedge.sdk.perception import Result
    from fusionedge.sdk.spec import InputGeometry

__all__ = ["HEARD_COLOUR", "NO_SIGNAL_COLOUR", "SEEN_COLOUR", "TrackBox", "attribution_line", "draw_result",
           "draw_tile", "no_signal_tile", "write_annotated_clip"]

#: A tracked box to draw: ``(track id, label, (x1, y1, x2, y2))`` in the frame's pixels.
TrackBox = tuple[int, str, tuple[float, float, float, float]]

#: BGR colours per object label; unknown labels get grey.
_COLOURS = {
    "car": (255, 200, 0),
    "pedestrian": (0, 220, 0),
    "traffic_light": (0, 220, 255),
    "emergency_vehicle": (0, 0, 255),
}
#: BGR colours of the two senses in the attribution bar: what was seen, what was heard.
SEEN_COLOUR = (0, 140, 255)
HEARD_COLOUR = (230, 160, 40)
#: BGR background of a camera's tile while the camera is down.
NO_SIGNAL_COLOUR = (48, 48, 48)


def draw_result(frame_bgr: np.ndarray, result: "Result", tracks: Sequence[TrackBox] | None = None) -> np.ndarray:
    """Return a copy of a BGR frame with the boxes, the event, the audio tags and, where the result has
    one, its attribution (a bar split into "seen" and "heard") drawn on it.

    With ``tracks`` (the tracker's boxes for this frame) each tracked box is drawn with its track id
    (``#7 car``) instead of the frame's raw detections."""
    import cv2

    img = frame_bgr.copy()
    h, w = img.shape[:2]
    scale = max(0.35, min(w, h) / 500.0)
    thick = max(1, int(round(scale * 2)))
    if tracks is None:
        drawn = [((b.x1, b.y1, b.x2, b.y2), b.label, f"{b.label} {b.score:.2f}") for b in result.boxes]
    else:
        drawn = [(box, label, f"#{tid} {label}") for tid, label, box in tracks]
    for (x1, y1, x2, y2), label, text in drawn:
        colour = _COLOURS.get(label, (160, 160, 160))
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(img, p1, p2, colour, thick)
        cv2.putText(img, text, (p1[0], max(10, p1[1] - 3)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, colour, max(1, thick - 1), cv2.LINE_AA)
    tags = ", ".join(k for k, v in result.audio_tags.items() if v >= 0.5) or "-"
    lines = ([] if result.event is None else [f"{result.event} {result.scores[result.event]:.2f}"]) + [
        f"audio: {tags}"]  # a task without events names none
    if result.missing:
        lines.append("missing: " + ", ".join(result.missing))
    y = int(22 * scale) + 4
    for line in lines:
        cv2.putText(img, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(img, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
        y += int(26 * scale) + 4
    attribution = getattr(result, "attribution", None)
    if attribution is not None:
        _draw_attribution(img, attribution.contribution, (6, y - int(18 * scale)), scale, thick)
    return img


def draw_tile(frame_bgr: np.ndarray, result: Result, size: tuple[int, int], camera: str,
              tracks: Sequence[TrackBox] | None = None) -> np.ndarray:
    """One camera's tile of a mosaic: the frame resized to ``size`` (width, height), annotated as
    :func:`draw_result` does (boxes and tracks scaled to the tile), with the camera's name at the bottom.

    The frame is resized before drawing, so the cost does not grow with the camera's resolution.
    """
    import cv2

    tw, th = size
    h, w = frame_bgr.shape[:2]
    tile = cv2.resize(frame_bgr, (tw, th), interpolation=cv2.INTER_AREA if tw <= w else cv2.INTER_LINEAR)
    sx, sy = tw / w, th / h
    boxes = [dataclasses.replace(b, x1=b.x1 * sx, y1=b.y1 * sy, x2=b.x2 * sx, y2=b.y2 * sy) for b in result.boxes]
    scaled = None if tracks is None else [
        (tid, label, (x1 * sx, y1 * sy, x2 * sx, y2 * sy)) for tid, label, (x1, y1, x2, y2) in tracks]
    tile = draw_result(tile, dataclasses.replace(result, boxes=boxes), scaled)
    _label(tile, camera)
    return tile


def no_signal_tile(size: tuple[int, int], camera: str, reason: str = "no signal") -> np.ndarray:
    """The tile of a camera that is down: a grey field saying ``reason``, with the camera's name."""
    import cv2

    tw, th = size
    tile = np.empty((th, tw, 3), np.uint8)
    tile[...] = NO_SIGNAL_COLOUR
    scale = max(0.35, min(tw, th) / 400.0)
    thick = max(1, round(scale * 2))
    (text_w, text_h), _ = cv2.getTextSize(reason, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.putText(tile, reason, ((tw - text_w) // 2, (th + text_h) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (230, 230, 230), thick, cv2.LINE_AA)
    _label(tile, camera)
    return tile


def _label(tile: np.ndarray, camera: str) -> None:
    """The camera's name on a black strip along the tile's bottom edge."""
    import cv2

    th, tw = tile.shape[:2]
    scale = max(0.35, min(tw, th) / 500.0)
    strip = max(12, int(24 * scale))
    tile[th - strip:] = 0
    cv2.putText(tile, camera, (6, th - strip // 4 - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                max(1, round(scale * 2)), cv2.LINE_AA)


def attribution_line(contribution: dict[str, float]) -> str:
    """``"seen 70% | heard 30%"``: the share of the decision each sense carried."""
    return f"seen {contribution['video']:.0%} | heard {contribution['audio']:.0%}"


def _draw_attribution(img: np.ndarray, contribution: dict[str, float], top_left: tuple[int, int], scale: float,
                      thick: int) -> None:
    """A bar split into "seen" (video, orange) and "heard" (audio, blue) in proportion to their shares."""
    import cv2

    x, y = top_left
    width = max(60, int(200 * scale))
    height = max(8, int(14 * scale))
    seen = round(width * min(max(contribution["video"], 0.0), 1.0))
    cv2.rectangle(img, (x, y), (x + width, y + height), (0, 0, 0), -1)
    if seen > 0:
        cv2.rectangle(img, (x, y), (x + seen, y + height), SEEN_COLOUR, -1)
    if seen < width:
        cv2.rectangle(img, (x + seen, y), (x + width, y + height), HEARD_COLOUR, -1)
    cv2.rectangle(img, (x, y), (x + width, y + height), (255, 255, 255), 1)
    ty = y + height + int(20 * scale) + 2
    text = attribution_line(contribution)
    cv2.putText(img, text, (x, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, (x, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)


def write_annotated_clip(
    video_path: str | Path,
    result: "Result",
    out_path: str | Path,
    geometry: InputGeometry,
    *,
    start_seconds: float = 0.0,
) -> Path:
    """Write the clip window the result was computed on, annotated, as an mp4 (``mp4v``).

    The boxes belong to the clip's last frame (the model's "current" frame); they are drawn on every
    frame of the window so they stay visible, together with the event and the audio tags. The
    video is encoded in a temporary folder, then written to ``out_path`` atomically.

    Args:
        video_path: the video the result was computed on.
        result: the result to draw.
        out_path: where the annotated mp4 goes (its folder is created).
        geometry: the model's input geometry (its ``clip_seconds`` is the window length).
        start_seconds: where the window starts.

    Returns:
        ``out_path``.

    Raises:
        MediaError: the source cannot be decoded or the output cannot be written.
        OSError: the output folder is not writable or the disk is full.
    """
    import cv2

    clip = read_video(video_path, start_seconds=start_seconds, max_seconds=geometry.clip_seconds)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    h, w = clip.frames.shape[1:3]
    with tempfile.TemporaryDirectory(prefix=".annotate-") as folder:
        tmp = Path(folder) / "clip.mp4"
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(clip.fps), (w, h))
        if not writer.isOpened():
            raise MediaError(f"{out_path}: cannot open an mp4 video writer in this OpenCV build")
        try:
            for frame in clip.frames:
                writer.write(draw_result(np.ascontiguousarray(frame[..., ::-1]), result))
        finally:
            writer.release()
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise MediaError(f"{out_path}: the video writer produced no file")
        write_bytes_atomic(out_path, tmp.read_bytes())
    return out_path
