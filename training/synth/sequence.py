"""Long synthetic sequences with ground-truth identities: the data that tracking is measured on.

A scene clip (:mod:`.scene`) is one second with boxes on its last frame only. A sequence is 10-30 s of
the same road, drawn with the scene renderer's camera, background, objects and frame finishing, in
which every object keeps an identity: each frame's visible boxes (the renderer's own rules: more than
half hidden or under 4 px gives no box) carry the object's track id, and each object's depth moves
linearly so that its motion relative to the camera is known: ``approach``, ``recede`` or ``steady``,
from the closing rate ``ln(Z_start / Z_end) / seconds``. One emergency vehicle with its lights on and
its siren sounding is always in view; cars and pedestrians come and go, cross and hide one another.

The sound is road noise plus the siren, whose amplitude follows the vehicle's true distance frame by
frame (the inverse-distance law) with the matching Doppler shift, so an approaching siren grows
louder exactly as the box grows.

:func:`write_sequence` writes one folder per sequence in the MOTChallenge layout that standard
evaluators read (``gt/gt.txt`` rows ``frame,id,x,y,w,h,1,class,visibility``, 1-based frames and pixels, class
the 1-based index into :data:`~fusionedge.sdk.spec.OBJECTS`; ``seqinfo.ini``), plus ``video.mp4``,
``audio.wav`` and ``truth.json`` (each object's label and motion); :func:`read_sequence` reads it back.
"""

from __future__ import annotations

import configparser
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.sdk.errors import DataError, InputError
from fusionedge.sdk.fileio import read_json, write_bytes_atomic, write_json_atomic, write_text_atomic
from fusionedge.sdk.spec import OBJECTS

from .dsp import harmonic, timbre_amps
from .generate import _write_video, _write_wav
from .scene import (
    LANE_W,
    ROAD_EDGE,
    SIDEWALK,
    _background,
    _boxes,
    _draw_frame,
    _finish,
    _make_car,
    _make_ev,
    _make_pedestrian,
    _Obj,
    _sample_camera,
    _sample_style,
)
from .sound import _road_noise, _siren_sweep

__all__ = [
    "SEQUENCE_MOTIONS",
    "SequenceConfig",
    "SequenceObject",
    "SyntheticSequence",
    "generate_sequences",
    "motion_of",
    "read_mot_rows",
    "read_sequence",
    "render_sequence",
    "write_mot_rows",
    "write_sequence",
]

SEQUENCE_MOTIONS: tuple[str, ...] = ("approach", "recede", "steady")
#: |closing rate| (1/s) at or above which an object's truth is approach/recede; below: steady.
MOTION_RATE = 0.02
SPEED_OF_SOUND = 343.0  # m/s
_SIREN_NEAR_M = 10.0
_SIREN_SNR_AT_NEAR_DB = (6.0, 14.0)  # siren RMS over road-noise RMS at 10 m


def motion_of(depth_start: float, depth_end: float, seconds: float) -> str:
    """``approach`` / ``recede`` / ``steady`` from an object's depths at the start and the end."""
    rate = math.log(depth_start / depth_end) / seconds
    if rate >= MOTION_RATE:
        return "approach"
    if rate <= -MOTION_RATE:
        return "recede"
    return "steady"


@dataclass(frozen=True)
class SequenceConfig:
    """The size of each sequence; the defaults render a 12 s sequence in a few seconds."""

    seconds: float = 12.0
    fps: float = 8.0
    width: int = 320
    height: int = 192
    sample_rate: int = 16000
    cars: tuple[int, int] = (2, 4)  # inclusive range of ordinary cars
    pedestrians: tuple[int, int] = (0, 2)

    def check(self) -> None:
        """Raise InputError for a size that cannot make a sequence."""
        if not (1.0 <= self.seconds <= 120.0):
            raise InputError(f"seconds must be in [1, 120], got {self.seconds}")
        if not (1.0 <= self.fps <= 60.0):
            raise InputError(f"fps must be in [1, 60], got {self.fps}")
        if self.width < 64 or self.height < 48:
            raise InputError(f"frames must be at least 64x48, got {self.width}x{self.height}")
        if self.sample_rate < 8000:
            raise InputError(f"sample_rate must be >= 8000, got {self.sample_rate}")
        for name, (lo, hi) in (("cars", self.cars), ("pedestrians", self.pedestrians)):
            if not 0 <= lo <= hi <= 12:
                raise InputError(f"{name} must be a range within 0..12, got {(lo, hi)}")

    @property
    def frames(self) -> int:
        """Frames per sequence."""
        return max(2, round(self.seconds * self.fps))


@dataclass(frozen=True)
class SequenceObject:
    """One object of a sequence and its true motion relative to the camera."""

    track_id: int
    label: str
    motion: str  # one of SEQUENCE_MOTIONS
    depth_start_m: float
    depth_end_m: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict."""
        return {"track_id": self.track_id, "label": self.label, "motion": self.motion,
                "depth_start_m": round(self.depth_start_m, 3), "depth_end_m": round(self.depth_end_m, 3)}


@dataclass
class SyntheticSequence:
    """A rendered sequence: frames, sound, and per-frame truth ``(frame, track_id, label, [x1,y1,x2,y2])``.

    Frames are 1-based in ``truth`` (MOTChallenge); ``frames[k]`` is frame ``k + 1`` at ``k / fps`` s.
    """

    name: str
    fps: float
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    audio: np.ndarray  # (S,) int16
    sample_rate: int
    truth: list[tuple[int, int, str, list[int]]]
    objects: list[SequenceObject]
    lighting: str = "day"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Length in seconds."""
        return len(self.frames) / self.fps


def _lane(rng: np.random.Generator) -> tuple[float, str]:
    u = rng.random()
    if u < 0.3:
        return -LANE_W + rng.uniform(-0.3, 0.3), "front"
    if u < 0.6:
        return rng.uniform(-0.4, 0.4), "rear"
    return LANE_W + rng.uniform(-0.3, 0.3), "rear"


def _depths(rng: np.random.Generator, motion: str, near: float, far: float) -> tuple[float, float]:
    """Start and end depth for a motion, both within [near, far], with a clear closing rate."""
    if motion == "steady":
        z = rng.uniform(near, far)
        return z, z * rng.uniform(0.97, 1.03)
    a, b = rng.uniform(near, near + 0.3 * (far - near)), rng.uniform(far - 0.3 * (far - near), far)
    return (b, a) if motion == "approach" else (a, b)


def _layout(rng: np.random.Generator, config: SequenceConfig) -> tuple[list[_Obj], list[SequenceObject]]:
    s = config.seconds
    objs: list[_Obj] = []
    truth: list[SequenceObject] = []

    def add(o: _Obj, label: str, z0: float, z1: float) -> None:
        o.Z, o.vZ = z0, (z1 - z0) / s
        o.extra["track_id"] = len(objs) + 1
        objs.append(o)
        truth.append(SequenceObject(len(objs), label, motion_of(z0, z1, s), z0, z1))

    motion = SEQUENCE_MOTIONS[int(rng.integers(len(SEQUENCE_MOTIONS)))]
    X, facing = _lane(rng)
    z0, z1 = _depths(rng, motion, 10.0, 40.0)
    ev = _make_ev(rng, "on", X, z0, facing, vZ=0.0)
    ev.vX = rng.uniform(-0.05, 0.05)
    ev.extra["role"] = "lights_on_ev"
    add(ev, "emergency_vehicle", z0, z1)
    for _ in range(int(rng.integers(config.cars[0], config.cars[1] + 1))):
        X, facing = _lane(rng)
        m = SEQUENCE_MOTIONS[int(rng.integers(len(SEQUENCE_MOTIONS)))]
        z0, z1 = _depths(rng, m, 8.0, 50.0)
        car = _make_car(rng, X, z0, facing)
        car.vX = rng.uniform(-0.25, 0.25)
        add(car, "car", z0, z1)
    for _ in range(int(rng.integers(config.pedestrians[0], config.pedestrians[1] + 1))):
        X = rng.choice([-1.0, 1.0]) * rng.uniform(ROAD_EDGE + 0.4, SIDEWALK - 0.3)
        m = SEQUENCE_MOTIONS[int(rng.integers(len(SEQUENCE_MOTIONS)))]
        z0, z1 = _depths(rng, m, 8.0, 30.0)
        add(_make_pedestrian(rng, X, z0, 0.0, 0.0), "pedestrian", z0, z1)
    return objs, truth


def _siren_audio(rng: np.random.Generator, ev: _Obj, config: SequenceConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Road noise plus a siren whose amplitude and pitch follow the vehicle's distance; int16."""
    sr = config.sample_rate
    n = round(config.seconds * sr)
    t = np.arange(n) / sr
    road = _road_noise(rng, n, sr)
    pattern = ("wail", "yelp", "hilo", "phaser")[int(rng.integers(4))]
    f = _siren_sweep(rng, t, pattern)
    Z = np.maximum(ev.Z + ev.vZ * t, 3.0)
    f = f * SPEED_OF_SOUND / (SPEED_OF_SOUND + ev.vZ)  # Doppler: closing (vZ < 0) raises the pitch
    phase = 2 * np.pi * np.cumsum(f) / sr + rng.uniform(0, 2 * np.pi)
    timbre = ("sine", "triangle", "square")[int(rng.integers(3))]
    siren = harmonic(phase, timbre_amps(timbre, rng), f, sr)
    snr_near = rng.uniform(*_SIREN_SNR_AT_NEAR_DB)
    gain = 10 ** (snr_near / 20.0) * np.sqrt(np.mean(road**2)) / (np.sqrt(np.mean(siren**2)) + 1e-12)
    mix = road + siren * gain * (_SIREN_NEAR_M / Z)
    peak = float(np.max(np.abs(mix))) + 1e-12
    wave = np.round(mix * (rng.uniform(0.4, 0.9) * 32767.0 / peak)).astype(np.int16)
    return wave, {"siren_pattern": pattern, "siren_timbre": timbre, "siren_snr_at_10m_db": round(snr_near, 2)}


def render_sequence(rng: np.random.Generator, config: SequenceConfig = SequenceConfig(),
                    name: str = "seq") -> SyntheticSequence:
    """Render one sequence: the road, its objects with identities, and the siren's sound.

    Raises:
        InputError: a config that cannot make a sequence.
    """
    config.check()
    T, W, H = config.frames, config.width, config.height
    cam = _sample_camera(rng, W, H)
    style = _sample_style(rng, T, W)
    bg = _background(rng, cam, style)
    objs, objects = _layout(rng, config)
    audio, audio_info = _siren_audio(rng, objs[0], config)
    pad = 8
    noise = rng.normal(0.0, style.noise_sigma, size=(H + pad, W + pad, 3)).astype(np.float32)
    noise_offsets = rng.integers(0, pad + 1, size=(T, 2))
    glow = np.zeros((H, W, 3), np.float32)
    frames = np.empty((T, H, W, 3), np.uint8)
    truth: list[tuple[int, int, str, list[int]]] = []
    clear = {"kind": "clear"}
    for k in range(T):
        t = k / config.fps
        order = sorted(objs, key=lambda o: -o.at(t)[1])  # far to near now
        img, prims = _draw_frame(bg, order, cam, style, t, glow, [])
        frames[k] = _finish(img, glow, style, style.jitter[k], noise, noise_offsets[k], clear, k)
        for label, box, i in _boxes(order, prims, style.jitter[k], W, H):
            truth.append((k + 1, int(order[i].extra["track_id"]), label, box))
    return SyntheticSequence(name=name, fps=config.fps, frames=frames, audio=audio, sample_rate=config.sample_rate,
                             truth=truth, objects=objects, lighting=style.lighting, extra=audio_info)


def write_mot_rows(path: Path, rows: list[tuple[int, int, str, list[float]]],
                   scores: list[float] | None = None) -> None:
    """Write ``(frame, id, label, [x1, y1, x2, y2])`` rows as MOTChallenge text (atomically).

    Each line is ``frame,id,x,y,w,h,conf,class,visibility`` with ``class`` the 1-based index into
    :data:`OBJECTS` and ``conf`` 1 for ground truth or the given score for tracker output. Pixel
    coordinates are 1-based, as in MOTChallenge (the top-left pixel is ``1,1``; evaluators subtract 1).

    Raises:
        InputError: a label outside :data:`OBJECTS`.
    """
    lines = []
    for n, (frame, tid, label, (x1, y1, x2, y2)) in enumerate(rows):
        if label not in OBJECTS:
            raise InputError(f"row {n}: label {label!r} is not one of {', '.join(OBJECTS)}")
        conf = 1.0 if scores is None else float(scores[n])
        lines.append(f"{frame},{tid},{x1 + 1:.2f},{y1 + 1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{conf:.4f},"
                     f"{OBJECTS.index(label) + 1},1")
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_mot_rows(path: Path) -> list[tuple[int, int, str, list[float]]]:
    """Read MOTChallenge text written by :func:`write_mot_rows` back into rows.

    Raises:
        DataError: a line that is not ``frame,id,x,y,w,h,conf,class[,...]`` with a known class.
    """
    rows = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(",")
        try:
            frame, tid = int(parts[0]), int(parts[1])
            x, y, w, h = (float(v) for v in parts[2:6])
            cls = int(float(parts[7]))
        except (ValueError, IndexError) as e:
            raise DataError(f"{path}:{lineno}: not a MOTChallenge row: {line!r}") from e
        if not 1 <= cls <= len(OBJECTS) or not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0:
            raise DataError(f"{path}:{lineno}: bad class or box: {line!r}")
        rows.append((frame, tid, OBJECTS[cls - 1], [x - 1, y - 1, x - 1 + w, y - 1 + h]))
    return rows


def write_sequence(seq: SyntheticSequence, folder: Path) -> Path:
    """Write one sequence as a MOTChallenge folder plus its media and motion truth; returns the folder."""
    folder = Path(folder)
    (folder / "gt").mkdir(parents=True, exist_ok=True)
    _write_video(folder / "video.mp4", seq.frames, seq.fps)
    _write_wav(folder / "audio.wav", seq.audio, seq.sample_rate)
    write_mot_rows(folder / "gt" / "gt.txt", seq.truth)
    ini = configparser.ConfigParser()
    ini.optionxform = str  # type: ignore[assignment,method-assign]
    ini["Sequence"] = {"name": seq.name, "imDir": "video.mp4", "frameRate": f"{seq.fps:g}",
                       "seqLength": str(len(seq.frames)), "imWidth": str(seq.frames.shape[2]),
                       "imHeight": str(seq.frames.shape[1]), "imExt": ".mp4"}
    buf = io.StringIO()
    ini.write(buf)
    write_text_atomic(folder / "seqinfo.ini", buf.getvalue())
    write_json_atomic(folder / "truth.json", {
        "name": seq.name, "fps": seq.fps, "frames": len(seq.frames), "sample_rate": seq.sample_rate,
        "lighting": seq.lighting, "classes": list(OBJECTS), "objects": [o.to_dict() for o in seq.objects],
        **seq.extra})
    return folder


@dataclass(frozen=True)
class SequenceFolder:
    """A sequence on disk: where its media are, its truth rows and its objects' motions."""

    folder: Path
    name: str
    fps: float
    frames: int
    sample_rate: int
    truth: list[tuple[int, int, str, list[float]]]
    objects: list[SequenceObject]

    @property
    def video(self) -> Path:
        """The sequence's video file."""
        return self.folder / "video.mp4"

    @property
    def audio(self) -> Path:
        """The sequence's WAV file."""
        return self.folder / "audio.wav"


def read_sequence(folder: Path) -> SequenceFolder:
    """Read a folder written by :func:`write_sequence`.

    Raises:
        DataError: a missing or malformed ``truth.json`` or ``gt/gt.txt``.
    """
    folder = Path(folder)
    for need in ("truth.json", "gt/gt.txt", "video.mp4"):
        if not (folder / need).is_file():
            raise DataError(f"{folder}: not a sequence folder (no {need})")
    meta = read_json(folder / "truth.json", error=DataError)
    try:
        objects = [SequenceObject(int(o["track_id"]), str(o["label"]), str(o["motion"]),
                                  float(o["depth_start_m"]), float(o["depth_end_m"])) for o in meta["objects"]]
        return SequenceFolder(folder, str(meta["name"]), float(meta["fps"]), int(meta["frames"]),
                              int(meta["sample_rate"]), read_mot_rows(folder / "gt" / "gt.txt"), objects)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{folder / 'truth.json'}: missing or malformed field: {e}") from e


def generate_sequences(out: Path, count: int, seed: int = 0, config: SequenceConfig = SequenceConfig()) -> list[Path]:
    """Render and write ``count`` sequences as ``out/seq_0000`` ...; returns their folders.

    Raises:
        InputError: ``count`` < 1 or a bad config.
    """
    if count < 1:
        raise InputError(f"count must be >= 1, got {count}")
    config.check()
    folders = []
    for i in range(count):
        rng = np.random.default_rng([seed, i, 0x5E0])
        seq = render_sequence(rng, config, name=f"seq_{i:04d}")
        folders.append(write_sequence(seq, Path(out) / seq.name))
    write_bytes_atomic(Path(out) / "README.txt",
                       b"MOTChallenge-layout sequences (gt/gt.txt, seqinfo.ini) with video.mp4, audio.wav and "
                       b"truth.json; classes are the 1-based index into the object labels in truth.json.\n")
    return folders
