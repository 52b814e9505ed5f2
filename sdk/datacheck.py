"""Check a data set before training on it: label balance, box sizes, and whether every clip decodes.

:func:`check_dataset` reads a manifest with the data's own vocabularies (an invalid manifest raises
:class:`~fusionedge.sdk.errors.DataError`, as training would), counts events, audio tags and boxes
per class and the share of samples without an event, summarizes box sizes (and counts boxes whose
shorter side is under ``tiny`` pixels, which a detector at model-input size hardly sees), and decodes
every video and WAV file with :mod:`fusionedge.sdk.media`, the readers training and the runtime use,
collecting the frame sizes, frame rates, sample rates and durations seen and every file that fails
with its error (a video that breaks off midway, decoding to far fewer frames than its header declares,
is one). It needs numpy and OpenCV only, so a device can check its own recordings.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
from fusionedge.sdk.datamanifest import manifest_path, read_manifest
from fusionedge.sdk.errors import MediaError
from fusionedge.sdk.media import open_audio, read_video

__all__ = ["DataReport", "DecodeFailure", "check_dataset", "format_report"]

#: Frames larger than Full HD are resized to this while checking (``read_video``'s ``downscale_to``).
_CHECK_SIZE = (640, 360)


@dataclass(frozen=True)
class DecodeFailure:
    """A media file that does not decode: the sample, the file and the reader's message."""

    id: str
    file: str
    error: str


@dataclass
class DataReport:
    """What :func:`check_dataset` found. ``stats`` entries are ``{"min", "median", "max"}`` (None if empty)."""

    manifest: str
    samples: int
    unlabelled: int
    events: dict[str, int]
    audio_tags: dict[str, int]
    boxes: dict[str, int]
    box_width: dict
    box_height: dict
    tiny_boxes: int
    tiny: float
    video_sizes: dict[str, int]
    video_fps: dict[str, int]
    video_seconds: dict
    audio_rates: dict[str, int]
    audio_channels: dict[str, int]
    audio_seconds: dict
    samples_without_audio: int
    decoded: bool
    failures: list[DecodeFailure] = field(default_factory=list)

    @property
    def unlabelled_share(self) -> float:
        """Share of samples without an event."""
        return self.unlabelled / self.samples if self.samples else 0.0

    def as_dict(self) -> dict:
        """The report as plain JSON types (``--json``)."""
        d = asdict(self)
        d["unlabelled_share"] = self.unlabelled_share
        return d


def _stats(values: Sequence[float]) -> dict:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3),
            "max": round(max(values), 3)}


def _counts(values) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _check_complete(path: Path, decoded: int, fps: float) -> None:
    """Raise MediaError when a file decodes to far fewer frames than its header declares.

    A file that breaks off midway still gives the frames before the break (``read_video`` only logs
    it), so the check compares with the container's frame count; a variable-rate file may differ by
    a frame or two, so only a shortfall of more than 10 % and at least 2 frames counts.
    """
    if not path.is_file():
        return  # a folder of images declares nothing
    cap = cv2.VideoCapture(str(path))
    try:
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        cap.release()
    declared = int(count) if math.isfinite(count) and count > 0 else 0
    if declared - decoded >= 2 and decoded < 0.9 * declared:
        raise MediaError(f"{path}: decodes {decoded} of the {declared} frames its header declares "
                         f"({decoded / fps:.2f} s); the file is truncated or damaged — re-encode or replace it")


def check_dataset(path: str | os.PathLike, *, decode: bool = True, tiny: float = 8.0,
                  progress: bool = False) -> DataReport:
    """Check the data set at ``path`` (a manifest or its folder).

    Args:
        path: the manifest file, or the folder holding ``manifest.jsonl``.
        decode: decode every media file (False: labels and boxes only).
        tiny: a box whose shorter side is under this many pixels counts as tiny.
        progress: show a progress bar on stderr while decoding.

    Returns:
        The :class:`DataReport`; ``failures`` lists the media that do not decode.

    Raises:
        DataError: the manifest is missing or invalid (names the file, line and field).
    """
    file = manifest_path(path)
    samples = read_manifest(file, require_labels=False, check_files=False, embedded_audio=decode,
                            events=None, audio_tags=None, objects=None)
    widths = [b.x2 - b.x1 for s in samples for b in s.boxes]
    heights = [b.y2 - b.y1 for s in samples for b in s.boxes]
    sizes: Counter = Counter()
    fps: Counter = Counter()
    rates: Counter = Counter()
    channels: Counter = Counter()
    vsec: list[float] = []
    asec: list[float] = []
    failures: list[DecodeFailure] = []
    if decode:
        from tqdm import tqdm

        for s in tqdm(samples, desc="check", unit="clip", disable=not progress):
            try:
                if s.video is not None:  # an audio-only clip has none
                    clip = read_video(s.video, downscale_to=_CHECK_SIZE)
                    _check_complete(s.video, clip.frames.shape[0], clip.fps)
                    w, h = clip.size
                    sizes[f"{w}x{h}"] += 1
                    fps[f"{clip.fps:g}"] += 1
                    vsec.append(clip.seconds)
            except MediaError as e:
                failures.append(DecodeFailure(s.id, str(s.video), str(e)))
            if s.audio is None:
                continue
            try:
                with open_audio(s.audio) as wav:  # a WAV, FLAC, ... or the sound track of the video
                    samples_read = wav.read_all()
                    if samples_read.size == 0:
                        raise MediaError(f"{wav.path}: the audio file holds no audio samples")
                    rates[str(wav.rate)] += 1
                    channels[str(wav.channels)] += 1
                    asec.append(samples_read.shape[0] / wav.rate)
            except MediaError as e:
                failures.append(DecodeFailure(s.id, str(s.audio), str(e)))
    unlabelled = sum(s.event is None for s in samples)
    return DataReport(
        manifest=str(file), samples=len(samples), unlabelled=unlabelled,
        events=_counts(s.event for s in samples if s.event is not None),
        audio_tags=_counts(t for s in samples for t in s.audio_tags),
        boxes=_counts(b.label for s in samples for b in s.boxes),
        box_width=_stats(widths), box_height=_stats(heights),
        tiny_boxes=sum(min(w, h) < tiny for w, h in zip(widths, heights)), tiny=tiny,
        video_sizes=dict(sizes.most_common()), video_fps=dict(fps.most_common()), video_seconds=_stats(vsec),
        audio_rates=dict(rates.most_common()), audio_channels=dict(channels.most_common()),
        audio_seconds=_stats(asec), samples_without_audio=sum(s.audio is None for s in samples),
        decoded=decode, failures=failures,
    )


def _table(title: str, counts: dict[str, int]) -> list[str]:
    if not counts:
        return [f"{title}: none"]
    total = sum(counts.values())
    width = max(len(k) for k in counts)
    lines = [f"{title} ({total}):"]
    lines += [f"  {k:<{width}}  {n:>7}  {100 * n / total:5.1f}%" for k, n in counts.items()]
    return lines


def _range(st: dict, unit: str) -> str:
    if st["min"] is None:
        return "none"
    return f"min {st['min']:g}{unit}, median {st['median']:g}{unit}, max {st['max']:g}{unit}"


def format_report(r: DataReport) -> str:
    """The report as a text table for a terminal."""
    lines = [(f"{r.manifest}: {r.samples} samples, {r.unlabelled} without an event "
             f"({100 * r.unlabelled_share:.1f}%), {r.samples_without_audio} without audio")]
    lines += _table("events", r.events)
    lines += _table("audio tags", r.audio_tags)
    lines += _table("boxes", r.boxes)
    if r.boxes:
        lines.append(f"box width: {_range(r.box_width, ' px')}")
        lines.append(f"box height: {_range(r.box_height, ' px')}")
        lines.append(f"tiny boxes (shorter side < {r.tiny:g} px): {r.tiny_boxes}")
    lines += _table("video sizes", r.video_sizes)
    lines += _table("video fps", r.video_fps)
    lines.append(f"video seconds: {_range(r.video_seconds, ' s')}")
    lines += _table("audio sample rates (Hz)", r.audio_rates)
    lines += _table("audio channels", r.audio_channels)
    lines.append(f"audio seconds: {_range(r.audio_seconds, ' s')}")
    if r.failures:
        lines.append(f"{len(r.failures)} file(s) do not decode:")
        lines += [f"  {f.id}: {f.error}" for f in r.failures]
    else:
        lines.append("every clip decodes" if r.decoded else "media not decoded")
    return "\n".join(lines)
