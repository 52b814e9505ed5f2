"""Write a synthetic multimodal data set: media files plus a manifest, in parallel and atomically.

::

    from fusionedge.training.synth import generate_dataset
    manifest = generate_dataset("data/synth", samples=2500, seed=0)   # -> data/synth/manifest.jsonl

The folder then holds ``manifest.jsonl`` (the format of :mod:`fusionedge.sdk.datamanifest`, exactly
what a user brings for real data) and ``media/<id>.mp4`` + ``media/<id>.wav`` per sample.

Sample ``i`` is made from ``np.random.default_rng([seed, i])`` alone, so a data set does not depend
on the number of worker processes, and any sample can be re-made on its own with
:func:`make_sample`. Media files and, last, the manifest are written atomically
(``sdk.fileio.write_bytes_atomic``), so a killed run never leaves a manifest that points at missing
or half-written files. A folder that cannot be written is refused before any worker starts.

This module uses numpy, OpenCV and the standard library only (no torch): it runs on the runtime
install.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
import os
import re
import tempfile
import time
import wave
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from fusionedge.sdk.datamanifest import MANIFEST_NAME, Box, Sample, write_manifest
from fusionedge.sdk.errors import FusionEdgeError, InputError, MediaError
from fusionedge.sdk.fileio import write_bytes_atomic

from . import rules
from .questions import question_stream, questions_for_sample
from .rules import SceneFlags
from .scene import render_video
from .sound import synthesize_audio

__all__ = ["SynthConfig", "SynthSample", "DatasetExistsError", "make_sample", "generate_dataset"]

log = logging.getLogger(__name__)

MEDIA_DIR = "media"
_OURS = re.compile(r"^\d+\.(mp4|wav)$")  # media names this generator writes
_PARTIAL = ".partial"


class DatasetExistsError(FusionEdgeError, FileExistsError):
    """The output folder already holds a data set; pass ``overwrite=True`` to replace it."""


@dataclass(frozen=True)
class SynthConfig:
    """Media geometry of a synthetic data set, and how often its two event cues agree."""

    width: int = 320  # px
    height: int = 192  # px
    fps: float = 12.0  # frames per second
    seconds: float = 1.0  # clip length, for video and audio
    sample_rate: int = 16000  # Hz
    cue_agreement: float = rules.UNIFORM_CUE_AGREEMENT  # P(siren == lights-ON EV in view); 0.5: uniform events

    @property
    def frames(self) -> int:
        return max(1, int(round(self.seconds * self.fps)))

    def check(self) -> None:
        """Raise :class:`InputError` naming the first invalid value."""
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 64 or v % 2:
                raise InputError(f"{name} must be an even integer >= 64 (mp4v needs even sizes), got {v!r}")
        if not (isinstance(self.fps, (int, float)) and 0 < self.fps <= 120):
            raise InputError(f"fps must be in (0, 120], got {self.fps!r}")
        if not (isinstance(self.seconds, (int, float)) and 0.1 <= self.seconds <= 60):
            raise InputError(f"seconds must be in [0.1, 60], got {self.seconds!r}")
        sr = self.sample_rate
        if isinstance(sr, bool) or not isinstance(sr, int) or sr < 8000:
            raise InputError(f"sample_rate must be an integer >= 8000 Hz, got {self.sample_rate!r}")
        try:
            rules.event_probabilities(self.cue_agreement)
        except ValueError as e:
            raise InputError(str(e)) from None


@dataclass
class SynthSample:
    """One synthetic sample in memory."""

    index: int
    flags: SceneFlags
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    audio: np.ndarray  # (S,) int16 mono
    boxes: list[tuple[str, list[int]]]  # last frame, pixels, (label, [x1, y1, x2, y2])
    event: str
    audio_tags: tuple[str, ...]
    info: dict  # rendering details (lighting, siren pattern, levels, ...)


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 2)


def make_sample(seed: int, index: int, config: SynthConfig = SynthConfig()) -> SynthSample:
    """Make sample ``index`` of the data set with this ``seed``, in memory.

    Args:
        seed: the data-set seed (non-negative int).
        index: the sample's index (non-negative int).
        config: media geometry.

    Returns:
        The sample; the same ``(seed, index, config)`` always gives the same sample.
    """
    rng = np.random.default_rng([seed, index])
    # independent streams: changing one renderer does not change what the others draw
    rng_flags, rng_video, rng_audio = rng.spawn(3)
    flags = rules.sample_flags(rng_flags, config.cue_agreement)
    frames, boxes, vinfo = render_video(
        flags, rng_video, width=config.width, height=config.height, fps=config.fps, seconds=config.seconds
    )
    audio, ainfo = synthesize_audio(flags, rng_audio, sample_rate=config.sample_rate, seconds=config.seconds)
    info = {
        "seed": seed,
        "index": index,
        "cue_agreement": config.cue_agreement,
        "lighting": vinfo.lighting,
        "lights_on_ev": flags.lights_on_ev,
        "lights_off_ev": flags.lights_off_ev,
        "lights_on_ev_box": vinfo.lights_on_ev_box,
        "lights_on_ev_box_first": vinfo.lights_on_ev_box_first,
        "siren_pattern": ainfo.siren_pattern,
        "siren_envelope": ainfo.siren_envelope,
        "levels_db": {k: round(v, 2) for k, v in ainfo.levels_db.items()},
        # the open world (rules.py): untagged sounds, cabin voices, quiet or silent audio, decoy lights,
        # weather and frames that show no road
        "siren_timbre": ainfo.siren_timbre,
        "clutter_sound": ainfo.clutter_sound,
        "cabin_voice": ainfo.cabin_voice,
        "ambience": ainfo.ambience,
        "band_limit_hz": ainfo.band_limit_hz,
        "wet_road": ainfo.wet_road,
        "view": vinfo.view,
        "decoys": vinfo.decoys,
        "weather": vinfo.weather,
        "traffic_lights": vinfo.traffic_lights,  # last frame: each boxed light's box and lit lamp
        # audio-visual correspondences (rules.py): the lights-ON vehicle's / siren source's distance and
        # motion (a pseudo-distance when the siren is behind), the engine's car, the talking pedestrian
        "ev_distance_m": _round(flags.ev_distance_m),
        "ev_motion": flags.ev_motion,
        "ev_depth_change_m": _round(flags.ev_depth_change_m),
        "near_car_m": _round(flags.near_car_m),
        "near_car_box": vinfo.near_car_box,
        "near_pedestrian_m": _round(flags.near_pedestrian_m),
        "near_pedestrian_box": vinfo.near_pedestrian_box,
    }
    return SynthSample(
        index=index,
        flags=flags,
        frames=frames,
        audio=audio,
        boxes=boxes,
        event=rules.event_from_cues(flags.siren, flags.lights_on_ev),
        audio_tags=rules.audio_tags_for(flags),
        info=info,
    )


def _write_video(path: Path, frames_rgb: np.ndarray, fps: float) -> None:
    """Encode an mp4 file; OpenCV writes only to a named file, so it encodes a partial one first."""
    tmp = path.with_name(path.stem + _PARTIAL + path.suffix)  # cv2 picks the container by suffix
    h, w = frames_rgb.shape[1:3]
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise MediaError(f"{path}: OpenCV cannot open an mp4v video writer")
    try:
        for f in frames_rgb:
            writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    try:
        write_bytes_atomic(path, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit mono PCM WAV atomically."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(audio.astype("<i2").tobytes())
    write_bytes_atomic(path, buffer.getvalue())


def _work(job: tuple[int, int, SynthConfig, Path, int]) -> Sample:
    """Make one sample and write its media; returns its manifest entry (absolute paths)."""
    seed, index, config, media, id_width = job
    s = make_sample(seed, index, config)
    sid = f"{index:0{id_width}d}"
    video, audio = media / f"{sid}.mp4", media / f"{sid}.wav"
    _write_video(video, s.frames, config.fps)
    _write_wav(audio, s.audio, config.sample_rate)
    sample = Sample(
        id=sid,
        video=video,
        audio=audio,
        event=s.event,
        audio_tags=s.audio_tags,
        boxes=tuple(Box(label, *map(float, b)) for label, b in s.boxes),
        width=config.width,
        height=config.height,
        meta={"synth": s.info},
    )
    return replace(sample, questions=questions_for_sample(sample, question_stream(seed, index)))


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would only contend


def _old_media(manifest: Path, media: Path) -> set[Path]:
    """Our media files that an existing manifest references (best effort: a broken one gives none)."""
    out = set()
    try:
        for raw in manifest.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                continue
            for key in ("video", "audio"):
                v = rec.get(key) if isinstance(rec, dict) else None
                if isinstance(v, str):
                    p = (manifest.parent / v).resolve()
                    if p.parent == media.resolve() and _OURS.match(p.name):
                        out.add(p)
    except OSError:
        pass
    return out


def _check_writable(out: Path, media: Path) -> None:
    """Create the media folder and write a probe file in it, so that a folder that cannot be
    written is one typed error here, before any worker starts, and not a traceback from a worker.

    Raises:
        InputError: the folder cannot be created or written (names it and the system's reason).
    """
    try:
        media.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=media):
            pass
    except OSError as e:
        raise InputError(f"{out}: cannot write the data set there ({e.strerror or e})") from e


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def generate_dataset(
    out_dir: str | os.PathLike,
    samples: int,
    seed: int,
    *,
    workers: int | None = None,
    progress: bool = True,
    width: int = 320,
    height: int = 192,
    fps: float = 12.0,
    seconds: float = 1.0,
    sample_rate: int = 16000,
    cue_agreement: float = rules.UNIFORM_CUE_AGREEMENT,
    overwrite: bool = False,
) -> Path:
    """Generate a synthetic data set into ``out_dir``.

    Args:
        out_dir: the folder to write (created if missing).
        samples: number of samples (>= 1).
        seed: the data-set seed (>= 0); sample ``i`` uses ``np.random.default_rng([seed, i])``.
        workers: worker processes (default ``os.cpu_count()``); 1 runs in this process.
            The result does not depend on it.
        progress: show a progress bar on stderr.
        width, height: frame size in pixels (even, >= 64).
        fps: video frame rate; each clip has ``round(seconds * fps)`` frames.
        seconds: clip length.
        sample_rate: audio sample rate in Hz.
        cue_agreement: P(siren audible == lights-ON emergency vehicle in view); 0.5 (the default)
            makes the four events equally likely, higher values give an unlabelled pool in which
            sirens and flashing light bars mostly go together (:func:`rules.event_probabilities`).
        overwrite: replace a data set already in ``out_dir``. Its manifest is removed first and
            media files it referenced that the new data set does not reuse are deleted at the end.

    Raises:
        DatasetExistsError: ``out_dir`` already has a manifest and ``overwrite`` is False.
        InputError: an argument is out of range, or ``out_dir`` cannot be created or written.
        MediaError: OpenCV cannot write mp4 files here.
        OSError: writing fails part-way (e.g. the disk fills up).

    Returns:
        The path of the manifest written (``out_dir/manifest.jsonl``).
    """
    samples = _check_int("samples", samples, 1)
    seed = _check_int("seed", seed, 0)
    workers = (os.cpu_count() or 1) if workers is None else _check_int("workers", workers, 1)
    workers = min(workers, samples)
    config = SynthConfig(width=width, height=height, fps=fps, seconds=seconds, sample_rate=sample_rate,
                         cue_agreement=cue_agreement)
    config.check()

    out = Path(out_dir).absolute()  # media paths are made relative to it; a cwd-relative path would double
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    manifest = out / MANIFEST_NAME
    media = out / MEDIA_DIR
    stale: set[Path] = set()
    if manifest.exists() and not overwrite:
        raise DatasetExistsError(
            f"{out}: already holds a data set ({MANIFEST_NAME}); pass overwrite=True to replace it"
        )
    _check_writable(out, media)
    if manifest.exists():
        stale = _old_media(manifest, media)
        manifest.unlink()  # from here on no manifest points at files that are being rewritten

    id_width = max(6, len(str(samples - 1)))
    jobs = [(seed, i, config, media, id_width) for i in range(samples)]
    results: list[Sample | None] = [None] * samples
    start = time.perf_counter()
    if workers == 1:
        threads = cv2.getNumThreads()
        _init_worker()
        try:
            for job in tqdm(jobs, desc="synth", unit="sample", disable=not progress):  # to stderr
                results[job[1]] = _work(job)
        finally:
            cv2.setNumThreads(threads)
    else:
        chunk = max(1, min(8, samples // (workers * 4)))
        # forkserver, not fork: the caller may hold threads (torch/OpenMP pools, tqdm's monitor,
        # a training loop in the same process) and forking a threaded process can deadlock a worker.
        with mp.get_context("forkserver").Pool(workers, initializer=_init_worker) as pool:
            done = pool.imap_unordered(_work, jobs, chunksize=chunk)
            bar = tqdm(done, total=samples, desc="synth", unit="sample", disable=not progress)
            for s in bar:
                results[int(s.meta["synth"]["index"])] = s
    elapsed = time.perf_counter() - start
    written = [s for s in results if s is not None]
    write_manifest(manifest, written)

    keep = {p.resolve() for s in written for p in (s.video, s.audio) if p is not None}
    for p in stale - keep:
        p.unlink(missing_ok=True)
    for p in media.glob(f"*{_PARTIAL}.*"):  # left by an earlier run that was killed
        p.unlink(missing_ok=True)
    log.info("synth: %d samples in %.1f s (%.1f samples/s, %d workers) -> %s",
             samples, elapsed, samples / max(elapsed, 1e-9), workers, manifest)
    return manifest
