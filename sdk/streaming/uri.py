"""Sensors are URIs: parse the text a user gives into a :class:`SourceURI`.

Video: a file (``clip.mp4``, ``file:///abs/clip.mp4``), a folder of images, ``/dev/videoN`` or
``v4l2://N`` (a V4L2 camera), ``csi://N`` (a Jetson CSI camera through nvarguscamerasrc),
``rtsp://host/path`` (or ``rtsps://``), ``gst://<GStreamer pipeline ending in appsink>``.
Audio: an audio file (WAV; FLAC, OGG, MP3 or a video's sound track with ``fusionedge[media]``),
``mic://default`` (or ``mic://<device name or index>``), ``alsa://hw:0,0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fusionedge.sdk.errors import InputError

__all__ = ["AUDIO_FILE_SUFFIXES", "AUDIO_SCHEMES", "VIDEO_SCHEMES", "SourceURI", "parse_uri"]

#: Schemes a video URI may have after parsing.
VIDEO_SCHEMES: tuple[str, ...] = ("file", "folder", "v4l2", "csi", "rtsp", "gst")
#: Schemes an audio URI may have after parsing.
AUDIO_SCHEMES: tuple[str, ...] = ("file", "mic", "alsa")
#: File endings an audio source may have: audio files, and videos whose sound track is replayed
#: (all but WAV need ``fusionedge[media]``; opening the source says so).
AUDIO_FILE_SUFFIXES: tuple[str, ...] = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a",
                                        ".aac", ".aiff", ".aif", ".mp4", ".mkv", ".mov", ".webm", ".m4v")

_DEV_VIDEO = re.compile(r"^/dev/video(\d+)$")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$", re.DOTALL)


@dataclass(frozen=True)
class SourceURI:
    """A parsed sensor URI.

    ``scheme`` is one of :data:`VIDEO_SCHEMES` / :data:`AUDIO_SCHEMES`; ``target`` is what the scheme
    addresses: a path (file, folder), a device index as text (v4l2, csi), the full URL (rtsp), the
    pipeline (gst), a device name (mic: ``"default"``, a name or an index; alsa: ``"hw:0,0"``).
    """

    text: str  # what the user wrote
    kind: str  # "video" or "audio"
    scheme: str
    target: str

    @property
    def live(self) -> bool:
        """True for a sensor or stream (end of data is a failure); False for a replayed file/folder."""
        return self.scheme not in ("file", "folder")


def parse_uri(text: str, kind: Literal["video", "audio"]) -> SourceURI:
    """Parse a video or audio source URI.

    Args:
        text: the URI or path.
        kind: ``"video"`` or ``"audio"``: which schemes are allowed.

    Returns:
        A :class:`SourceURI`.

    Raises:
        InputError: an empty text, an unknown scheme or one of the other kind, a device index that is
            not a number, or an empty target.
    """
    if kind not in ("video", "audio"):
        raise InputError(f"kind must be 'video' or 'audio', got {kind!r}")
    if not isinstance(text, (str, Path)) or not str(text).strip():
        raise InputError(f"{kind} source URI is empty; give a file path or a URI such as "
                         f"{'/dev/video0' if kind == 'video' else 'mic://default'}")
    raw = str(text).strip()
    allowed = VIDEO_SCHEMES if kind == "video" else AUDIO_SCHEMES
    m = _DEV_VIDEO.match(raw)
    if m:
        scheme, target = "v4l2", m.group(1)
    else:
        m = _SCHEME.match(raw)
        if m is None:  # a plain path
            scheme, target = ("folder" if Path(raw).is_dir() else "file"), raw
        else:
            scheme, rest = m.group(1).lower(), m.group(2)
            if scheme == "rtsps":
                scheme = "rtsp"
            if scheme == "file":
                target = rest
                scheme = "folder" if Path(target).is_dir() else "file"
            elif scheme == "rtsp":
                target = raw
            else:
                target = rest
    if scheme not in allowed:
        other = "audio" if kind == "video" else "video"
        hint = f" (that is an {other} scheme)" if scheme in (AUDIO_SCHEMES if kind == "video" else VIDEO_SCHEMES) \
            and scheme not in ("file",) else ""
        raise InputError(
            f"{kind} source {raw!r}: unknown scheme {scheme!r}{hint}; use one of "
            f"{', '.join(s + '://' for s in allowed if s not in ('file', 'folder'))} or a file path"
        )
    if not target:
        raise InputError(f"{kind} source {raw!r}: nothing after '{scheme}://'")
    if scheme in ("v4l2", "csi") and not target.isdigit():
        raise InputError(f"video source {raw!r}: {scheme}:// takes a device number, e.g. {scheme}://0")
    if scheme == "gst" and "appsink" not in target:
        raise InputError(f"video source {raw!r}: a gst:// pipeline must end in an appsink element")
    if scheme == "file" and kind == "audio" and Path(target).suffix.lower() not in AUDIO_FILE_SUFFIXES:
        raise InputError(f"audio source {raw!r}: an audio file must be WAV, FLAC, OGG, Opus, MP3, or a "
                         f"video with sound ({', '.join(AUDIO_FILE_SUFFIXES)})")
    return SourceURI(text=raw, kind=kind, scheme=scheme, target=target)
