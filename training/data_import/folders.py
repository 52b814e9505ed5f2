"""A folder per class → samples whose event is the folder's name.

``SRC/<class>/<clip>.mp4`` (any of :data:`~fusionedge.training.data_import.common.VIDEO_EXTENSIONS`)
and ``SRC/<class>/<clip>.wav`` are one sample each; a video and a WAV file with the same name in the
same folder are one sample with both. An audio-only clip gets a black video of its length, as in
the CSV importer. Hidden files are skipped; any other file, and a file outside a class folder, is a
refused row.
"""

from __future__ import annotations

from pathlib import Path

from fusionedge.sdk.errors import DataError, MediaError
from fusionedge.sdk.media import WavFile

from .common import VIDEO_EXTENSIONS, Planned, Refusal, link_or_copy, safe_id, write_black_video

__all__ = ["plan_folders"]


def _make(video: Path | None, audio: Path | None, fps: float, sid: str, seconds: float):
    def make(media: Path) -> tuple[Path, Path | None]:
        out_audio = None
        if audio is not None:
            out_audio = media / f"{sid}.wav"
            link_or_copy(audio, out_audio)
        if video is not None:
            out_video = media / f"{sid}{video.suffix.lower()}"
            link_or_copy(video, out_video)
        else:
            out_video = media / f"{sid}.mp4"
            write_black_video(out_video, seconds, fps)
        return out_video, out_audio
    return make


def plan_folders(src: str | Path, *, fps: float = 10.0) -> tuple[list[Planned], list[Refusal]]:
    """Plan one sample per clip of each class folder (nothing is written).

    Args:
        src: the folder holding one sub-folder per class.
        fps: frame rate of the black video of an audio-only clip.

    Returns:
        The planned samples (video files linked or copied, WAV files linked or copied) and the
        refused files.

    Raises:
        DataError: ``src`` is not a folder.
    """
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: not a folder (expected one sub-folder per class)")
    refused: list[Refusal] = []
    planned: list[Planned] = []
    for entry in sorted(src.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            refused.append(Refusal(str(entry), "not in a class folder"))
            continue
        clips: dict[str, dict[str, Path]] = {}
        for f in sorted(entry.iterdir()):
            if f.name.startswith("."):
                continue
            ext = f.suffix.lower()
            kind = "video" if ext in VIDEO_EXTENSIONS else "audio" if ext == ".wav" else None
            if kind is None or not f.is_file():
                refused.append(Refusal(str(f), "neither a video nor a WAV file"))
                continue
            clips.setdefault(f.stem, {})[kind] = f
        for stem, files in clips.items():
            video, audio = files.get("video"), files.get("audio")
            seconds = 0.0
            if audio is not None:
                try:
                    with WavFile(audio) as w:
                        seconds = w.seconds
                except MediaError as e:
                    refused.append(Refusal(str(audio), str(e)))
                    continue
            sid = safe_id(f"{entry.name}-{stem}")
            planned.append(Planned(sid, _make(video, audio, fps, sid, seconds), event=entry.name,
                                   meta={"source": f"{entry.name}/{stem}"}))
    return planned, refused
