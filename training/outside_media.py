"""Outside media: a labelled evaluation set made without the synthetic-scene generator.

For evaluation only, never a training source: no training code imports this module (a test checks
it). The clips come from standard tools, not from :mod:`fusionedge.training.synth` — ffmpeg's lavfi
sources (test patterns, colour bars, fractals, cellular automata, plain colours with noise), sox
(tones, beeps, chimes, chord and arpeggio sequences, filtered noise, and sirens over road-like noise)
and espeak-ng (speech in several voices, languages and pitches) — so a model that only learned the
generator's look and sound is caught out here. Labels hold by construction under the event rules of
``training/synth/README.md``: no clip shows a road or an emergency vehicle, so a clip with a siren
is ``emergency_behind`` (heard, not seen) and every other clip is ``none``; the ``siren`` tag is set
on sirens only and ``speech`` on espeak-ng clips; no clip has boxes. Each sample also carries an
``outside`` block (``kind``, the tool recipe, and ``expect``: whether a siren is audible, whether an
emergency alarm is right, whether the clip is silent, whether its event is defined), which
:mod:`fusionedge.sdk.outside_metrics` reads to score false alarms, siren recall and calibration.
The manifest and media layout are the project's own (:mod:`fusionedge.sdk.datamanifest`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from fusionedge.sdk.datamanifest import MANIFEST_NAME, Sample, write_manifest
from fusionedge.sdk.errors import DataError, InputError
from fusionedge.training.synth.generate import DatasetExistsError

__all__ = ["AUDIO_KINDS", "TOOLS", "VIDEO_PATTERNS", "generate_outside_dataset", "missing_tools"]

#: The programs the set is made with (Debian packages sox, ffmpeg, espeak-ng).
TOOLS: tuple[str, ...] = ("sox", "ffmpeg", "espeak-ng")

#: Audio kinds, in the order they are generated; ``video_only`` clips have no audio file.
AUDIO_KINDS: tuple[str, ...] = (
    "silence", "near_silence", "tone", "beep", "chime", "music", "speech", "noise",
    "video_only", "siren_wail", "siren_yelp", "siren_hilo",
)

#: ffmpeg lavfi sources used as non-road video; ``{w}``, ``{h}``, ``{r}``, ``{seed}`` are filled in.
VIDEO_PATTERNS: dict[str, str] = {
    "testsrc": "testsrc=size={w}x{h}:rate={r}",
    "testsrc2": "testsrc2=size={w}x{h}:rate={r}",
    "smptebars": "smptebars=size={w}x{h}:rate={r}",
    "rgbtestsrc": "rgbtestsrc=size={w}x{h}:rate={r}",
    "mandelbrot": "mandelbrot=size={w}x{h}:rate={r}",
    "life": "life=size={w}x{h}:rate={r}:seed={seed}:mold=10:life_color=#00ff00:death_color=#aa0000",
    "cellauto": "cellauto=size={w}x{h}:rate={r}:seed={seed}:rule=110",
    "gray_noise": "color=c=gray:size={w}x{h}:rate={r},noise=alls=40:allf=t+u:all_seed={seed}",
    "color": "color=c={color}:size={w}x{h}:rate={r}",
}

_COLORS = ("black", "white", "navy", "darkgreen", "maroon", "gray")
#: (width, height, fps): most clips at the generator's own size and rate, some at others to exercise
#: resizing and frame sampling.
_SIZES = ((320, 192, 12.0), (320, 192, 12.0), (640, 360, 25.0), (176, 144, 15.0))
#: Audio rates: mostly the models' 16 kHz, some others to exercise resampling.
_RATES = (16000, 16000, 16000, 8000, 22050, 44100)
_SIREN_KINDS = frozenset({"siren_wail", "siren_yelp", "siren_hilo"})
_SILENT_KINDS = frozenset({"silence", "near_silence"})
_NOTES = {"C4": 261.63, "D4": 293.66, "E4": 329.63, "F4": 349.23, "G4": 392.0, "A4": 440.0, "B4": 493.88,
          "C5": 523.25, "E5": 659.25, "G5": 783.99}
_SPEECH = (
    ("en", "Please turn left at the next junction."),
    ("en-us", "The meeting starts at nine tomorrow morning."),
    ("de", "Der Zug nach Berlin hat zehn Minuten Verspätung."),
    ("fr", "Nous arrivons à la gare dans cinq minutes."),
    ("es", "El tiempo de hoy es soleado con algunas nubes."),
    ("it", "Buongiorno, vorrei un caffè, per favore."),
)
_VOICE_VARIANTS = ("", "+f3", "+m3", "+f2", "+klatt")


def missing_tools() -> list[str]:
    """The programs of :data:`TOOLS` that are not on ``PATH``."""
    return [t for t in TOOLS if shutil.which(t) is None]


def _run(cmd: list[str]) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"{cmd[0]} failed: {e}") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DataError(f"{cmd[0]} exited {proc.returncode}: {' | '.join(tail)} (command: {' '.join(cmd)})")


class _Sox:
    """Builds sox commands for one clip in a scratch folder (``-R``: repeatable noise)."""

    def __init__(self, tmp: Path, rate: int, seconds: float):
        self.tmp, self.rate, self.seconds, self.n = tmp, rate, seconds, 0

    def _name(self) -> Path:
        self.n += 1
        return self.tmp / f"part{self.n:03d}.wav"

    def synth(self, seconds: float, *spec: str, effects: tuple[str, ...] = ()) -> Path:
        """``sox -n`` with ``synth`` of one or more generators, written mono."""
        out = self._name()
        channels = max(1, sum(1 for s in spec if s.split()[0] in _GENERATORS))
        cmd = ["sox", "-R", "-n", "-r", str(self.rate), "-c", str(channels), "-b", "16", str(out),
               "synth", f"{seconds:.4f}"]
        for s in spec:
            cmd += s.split()
        _run(cmd + list(effects))
        if channels == 1:
            return out
        mono = self._name()  # one generator per channel, then the channels mixed to one
        _run(["sox", "-R", str(out), str(mono), "remix", "-"])
        return mono

    def concat(self, parts: list[Path], effects: tuple[str, ...] = ()) -> Path:
        out = self._name()
        _run(["sox", "-R", *map(str, parts), str(out), *effects])
        return out

    def mix(self, parts: list[tuple[Path, float]], effects: tuple[str, ...] = ()) -> Path:
        out = self._name()
        cmd = ["sox", "-R", "-m"]
        for p, v in parts:
            cmd += ["-v", f"{v:.4f}", str(p)]
        _run(cmd + [str(out), *effects])
        return out

    def finish(self, src: Path, dest: Path, gain_db: float) -> None:
        """Trim or pad to the clip length, set the peak level, write 16-bit mono at the clip's rate."""
        _run(["sox", "-R", str(src), "-r", str(self.rate), "-c", "1", "-b", "16", str(dest), "remix", "-",
              "trim", "0", f"{self.seconds:.4f}", "pad", "0", f"{self.seconds:.4f}",
              "trim", "0", f"{self.seconds:.4f}", "gain", "-n", f"{gain_db:.2f}"])


_GENERATORS = frozenset({"sine", "square", "triangle", "sawtooth", "trapezium", "exp", "whitenoise",
                         "pinknoise", "brownnoise", "tpdfnoise", "noise", "pluck"})


def _road_noise(sox: _Sox, rng: np.random.Generator) -> Path:
    """Road-like rumble: brown and pink noise, low-passed, slowly modulated."""
    return sox.synth(sox.seconds + 1.0, "brownnoise", "pinknoise",
                     effects=("lowpass", f"{rng.uniform(700, 1400):.0f}",
                              "tremolo", f"{rng.uniform(0.3, 1.5):.2f}", f"{rng.uniform(10, 40):.0f}"))


def _siren(sox: _Sox, kind: str, rng: np.random.Generator) -> tuple[Path, str]:
    """A siren cycle repeated past the clip's end, started at a random phase; returns (file, recipe)."""
    wave = str(rng.choice(["sine", "square", "triangle"]))
    if kind == "siren_wail":
        lo, hi, period = rng.uniform(550, 700), rng.uniform(1300, 1500), rng.uniform(3.0, 5.0)
        parts = [sox.synth(period / 2, f"{wave} {lo:.0f}-{hi:.0f}"), sox.synth(period / 2, f"{wave} {hi:.0f}-{lo:.0f}")]
        recipe = f"wail {wave} {lo:.0f}<->{hi:.0f} Hz, period {period:.2f} s"
    elif kind == "siren_yelp":
        lo, hi, period = rng.uniform(600, 750), rng.uniform(1300, 1600), rng.uniform(0.25, 0.35)
        parts = [sox.synth(period / 2, f"{wave} {lo:.0f}-{hi:.0f}"), sox.synth(period / 2, f"{wave} {hi:.0f}-{lo:.0f}")]
        recipe = f"yelp {wave} {lo:.0f}<->{hi:.0f} Hz, period {period:.2f} s"
    else:
        lo = rng.uniform(600, 800)
        hi, half = lo * rng.uniform(1.25, 1.45), rng.uniform(0.4, 0.6)
        parts = [sox.synth(half, f"{wave} {hi:.0f}"), sox.synth(half, f"{wave} {lo:.0f}")]
        recipe = f"hi-lo {wave} {hi:.0f}/{lo:.0f} Hz, {half:.2f} s each"
    period = sum(_seconds_of(p) for p in parts)
    cycles = int(np.ceil((sox.seconds + period) / period)) + 1
    loop = sox.concat(parts * cycles)
    offset = rng.uniform(0, period)
    out = sox._name()
    _run(["sox", "-R", str(loop), str(out), "trim", f"{offset:.4f}", f"{sox.seconds + 0.5:.4f}"])
    return out, recipe


def _seconds_of(path: Path) -> float:
    import wave

    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def _make_audio(kind: str, sox: _Sox, rng: np.random.Generator, dest: Path) -> str:
    """Write the clip's audio to ``dest``; returns the recipe in words."""
    s = sox.seconds
    gain = -float(rng.uniform(1, 8))
    if kind == "silence":
        # the null input, undithered: every sample exactly 0
        _run(["sox", "-R", "-D", "-n", "-r", str(sox.rate), "-c", "1", "-b", "16", str(dest), "trim", "0", f"{s:.4f}"])
        return "digital silence"
    if kind == "near_silence":
        level = float(rng.uniform(-66, -54))
        src = sox.synth(s, str(rng.choice(["whitenoise", "pinknoise", "brownnoise"])))
        _run(["sox", "-R", str(src), "-r", str(sox.rate), "-c", "1", "-b", "16", str(dest), "gain", "-n",
              f"{level:.1f}"])
        return f"room hiss at {level:.0f} dBFS peak"
    if kind == "tone":
        freq = float(rng.choice([440, 880, 1000, 1500, 2000, 3150]))
        wave = str(rng.choice(["sine", "sine", "square", "triangle"]))
        src = sox.synth(s + 0.1, f"{wave} {freq:.0f}")
        recipe = f"steady {wave} {freq:.0f} Hz"
    elif kind == "beep":
        freq, on, off = float(rng.choice([800, 880, 1000, 1200, 2400])), rng.uniform(0.06, 0.2), rng.uniform(0.05, 0.25)
        beep = sox.synth(on, f"sine {freq:.0f}", effects=("fade", "0.005", f"{on:.4f}", "0.005"))
        gap = sox.synth(off, "sine 1", effects=("vol", "0"))
        if rng.random() < 0.5:  # ringtone-like: two alternating tones
            second = sox.synth(on, f"sine {freq * 1.25:.0f}", effects=("fade", "0.005", f"{on:.4f}", "0.005"))
            cycle, recipe = [beep, second, gap], f"ringtone {freq:.0f}/{freq * 1.25:.0f} Hz, {on:.2f} s on"
        else:
            cycle, recipe = [beep, gap], f"beeps {freq:.0f} Hz, {on:.2f} s on {off:.2f} s off"
        src = sox.concat(cycle * int(np.ceil(s / (2 * on + off)) + 1))
    elif kind == "chime":
        notes = list(rng.choice(list(_NOTES), size=3, replace=False))
        step = s / 3
        parts = [sox.synth(step, f"pluck {_NOTES[n]:.2f}", effects=("fade", "0", f"{step:.4f}", f"{step * 0.8:.4f}"))
                 for n in notes]
        src, recipe = sox.concat(parts), "chime " + "-".join(notes)
    elif kind == "music":
        if rng.random() < 0.5:
            root = str(rng.choice(["C4", "D4", "F4", "G4"]))
            names = list(_NOTES)
            i = names.index(root)
            chord = [names[i], names[min(i + 2, len(names) - 1)], names[min(i + 4, len(names) - 1)]]
            wave = str(rng.choice(["pluck", "triangle", "sine"]))
            src = sox.synth(s + 0.1, *(f"{wave} {_NOTES[n]:.2f}" for n in chord))
            recipe = f"{wave} chord " + "+".join(chord)
        else:
            notes = list(rng.choice(list(_NOTES), size=6))
            step = s / len(notes)
            src = sox.concat([sox.synth(step, f"triangle {_NOTES[n]:.2f}", effects=("fade", "0.01", f"{step:.4f}", "0.05"))
                              for n in notes])
            recipe = "arpeggio " + "-".join(notes)
    elif kind == "speech":
        lang, text = _SPEECH[int(rng.integers(len(_SPEECH)))]
        voice = lang + str(rng.choice(_VOICE_VARIANTS))
        pitch, speed = int(rng.integers(20, 80)), int(rng.integers(140, 200))
        raw = sox._name()
        _run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(raw), text])
        # start inside the speech, not in espeak-ng's leading silence
        src = sox.concat([raw], effects=("silence", "1", "0.02", "1%"))
        recipe = f"espeak-ng {voice} pitch {pitch} speed {speed}: {text}"
    elif kind == "noise":
        if rng.random() < 0.5:
            src = sox.synth(s + 0.1, "brownnoise", effects=("lowpass", f"{rng.uniform(200, 500):.0f}", "tremolo",
                                                            f"{rng.uniform(0.3, 2):.2f}", "70"))
            recipe = "wind: low-passed brown noise, slow gusts"
        else:
            src = sox.synth(s + 0.1, "whitenoise", "pinknoise",
                            effects=("highpass", f"{rng.uniform(1000, 3000):.0f}", "tremolo",
                                     f"{rng.uniform(8, 20):.1f}", "40"))
            recipe = "rain: high-passed white and pink noise, fast flutter"
    elif kind in _SIREN_KINDS:
        siren, recipe = _siren(sox, kind, rng)
        snr = float(rng.uniform(3, 12))
        road = _road_noise(sox, rng)
        src = sox.mix([(siren, 10 ** (snr / 20) / (1 + 10 ** (snr / 20))), (road, 1 / (1 + 10 ** (snr / 20)))])
        recipe += f", over road noise (siren {snr:.0f} dB above it in amplitude)"
    else:
        raise InputError(f"unknown outside audio kind {kind!r}")
    sox.finish(src, dest, gain)
    return recipe


def _make_video(pattern: str, dest: Path, width: int, height: int, fps: float, seconds: float, seed: int,
                rng: np.random.Generator) -> None:
    source = VIDEO_PATTERNS[pattern].format(w=width, h=height, r=f"{fps:g}", seed=seed,
                                           color=str(rng.choice(_COLORS)))
    _run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, "-t", f"{seconds:.4f}",
          "-c:v", "mpeg4", "-q:v", "4", "-pix_fmt", "yuv420p", "-map_metadata", "-1", "-fflags", "+bitexact",
          str(dest)])


def _expect(kind: str) -> dict:
    siren = kind in _SIREN_KINDS
    return {"siren": siren, "alarm": siren, "silent": kind in _SILENT_KINDS or kind == "video_only",
            "event_defined": True}


def generate_outside_dataset(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    samples_per_kind: int = 3,
    kinds: tuple[str, ...] = AUDIO_KINDS,
    overwrite: bool = False,
) -> Path:
    """Write the outside-media evaluation set into ``out_dir`` (``manifest.jsonl`` + ``media/``).

    Sample ``i`` draws its parameters from ``np.random.default_rng([seed, i])``; sox runs with
    ``-R`` and ffmpeg's random sources with that seed, so a seed gives the same clips and labels.

    Args:
        out_dir: the folder to write (created if missing).
        seed: the data-set seed (>= 0).
        samples_per_kind: clips of each kind (>= 1).
        kinds: which of :data:`AUDIO_KINDS` to make.
        overwrite: replace a data set already in ``out_dir``.

    Raises:
        DataError: sox, ffmpeg or espeak-ng is missing or fails.
        DatasetExistsError: ``out_dir`` already has a manifest and ``overwrite`` is False.
        InputError: a bad argument or an unknown kind.

    Returns:
        The manifest's path.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(samples_per_kind, bool) or not isinstance(samples_per_kind, int) or samples_per_kind < 1:
        raise InputError(f"samples_per_kind must be an integer >= 1, got {samples_per_kind!r}")
    unknown = [k for k in kinds if k not in AUDIO_KINDS]
    if unknown or not kinds:
        raise InputError(f"unknown outside kinds {unknown}; known: {', '.join(AUDIO_KINDS)}")
    missing = missing_tools()
    if missing:
        raise DataError(f"the outside-media set needs {', '.join(missing)} on PATH "
                        f"(Debian: apt-get install {' '.join(missing)})")
    out = Path(out_dir).absolute()
    manifest = out / MANIFEST_NAME
    if manifest.exists() and not overwrite:
        raise DatasetExistsError(f"{out}: already holds a data set ({MANIFEST_NAME}); pass overwrite to replace it")
    media = out / "media"
    media.mkdir(parents=True, exist_ok=True)
    if manifest.exists():
        manifest.unlink()
    patterns = list(VIDEO_PATTERNS)
    rows: list[Sample] = []
    index = 0
    for kind in kinds:
        for _ in range(samples_per_kind):
            rows.append(_make_sample(media, seed, index, kind, patterns))
            index += 1
    write_manifest(manifest, rows)
    return manifest


def _make_sample(media: Path, seed: int, index: int, kind: str, patterns: list[str]) -> Sample:
    rng = np.random.default_rng([seed, index])
    sid = f"out{index:04d}"
    width, height, fps = _SIZES[int(rng.integers(len(_SIZES)))]
    seconds = 1.0 if rng.random() < 0.75 else 2.0
    rate = int(rng.choice(_RATES))
    pattern = patterns[int(rng.integers(len(patterns)))]
    video = media / f"{sid}.mp4"
    _make_video(pattern, video, width, height, fps, seconds, int(rng.integers(2**31)), rng)
    audio: Path | None = None
    recipe = "no microphone"
    if kind != "video_only":
        audio = media / f"{sid}.wav"
        with tempfile.TemporaryDirectory(prefix="fe-outside-") as tmp:
            recipe = _make_audio(kind, _Sox(Path(tmp), rate, seconds), rng, audio)
    tags = ("siren",) if kind in _SIREN_KINDS else ("speech",) if kind == "speech" else ()
    block = {"kind": kind, "audio_recipe": recipe, "video_pattern": pattern,
             "video": {"width": width, "height": height, "fps": fps, "seconds": seconds},
             "audio_rate": None if audio is None else rate, "expect": _expect(kind)}
    return Sample(sid, video, audio, "emergency_behind" if kind in _SIREN_KINDS else "none", tags, (),
                  width, height, meta={"outside": block})
