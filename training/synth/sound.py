"""Audio synthesis for the synthetic driving scenes: mono waveforms built from a few sound models.

Every clip has road/tyre noise (spectrally shaped noise; on a wet road, a quarter of the clips, with
the bright hiss of the tyres' spray). On top of it, as the scene's flags ask:

``engine``  a low harmonic hum (firing frequency 25-70 Hz and its harmonics) with rpm drift
``siren``   one of five patterns - *wail* (slow sweep), *yelp* (fast sweep), *phaser* (faster),
            *hi-lo* (two alternating tones), *rumbler* (low) - with an approach, recede or steady
            loudness envelope and a matching small Doppler shift
``horn``    a one- or two-tone harmonic burst, a car's or a truck's (one or two honks)
``speech``  babble of 1-3 talkers (:mod:`.voice`: a formant synthesizer whose formants glide from
            phone to phone, on a phrase's intonation, its voicing broken by consonants and
            pauses); a cabin voice (radio, phone, passenger) is one such talker, band-limited for a
            loudspeaker or a phone line

and, with no tag, one untagged sound of the open world (:mod:`.clutter_sound`). A siren is a
continuous tone whose pitch moves periodically (wail, yelp, phaser, hi-lo, rumbler; see
``training/synth/README.md``); everything tonal in :mod:`.clutter_sound` holds its pitch or moves it
otherwise. A quiet ambience lowers only the road noise; a silent clip is all zeros or a faint hiss.

Each source is mixed at a level relative to the road noise, and the mix is peak-normalized to a
random level below full scale. Levels follow the scene's geometry (the inverse-distance law,
``-20 log10(distance)`` dB, minus a random source loudness):

* siren: from ``flags.ev_distance_m`` (the lights-ON vehicle in view ahead, or the pseudo-distance
  of a siren behind, drawn from the same distribution), and its envelope is ``flags.ev_motion``:
  *approach* grows louder with a small upward Doppler shift, *recede* fades with a downward one,
  *steady* stays; the larger ``|flags.ev_depth_change_m|``, the stronger the change;
* engine: from ``flags.near_car_m`` (the near car in view);
* speech: from ``flags.near_pedestrian_m`` (the near pedestrian in view);
* horn: random (it has no visual counterpart).

The distance and motion draws have the same distribution whatever the event, so the siren's level
and envelope cannot tell ``emergency_ahead`` from ``emergency_behind``.

Only numpy is used; filtering is done in the frequency domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fusionedge.sdk.errors import InputError

from .clutter_sound import clutter_sound
from .dsp import harmonic, rms, shape_noise, timbre_amps
from .rules import AMBIENCES, EV_DISTANCE_M, EV_MOTIONS, NEAR_CAR_M, NEAR_PEDESTRIAN_M, SceneFlags
from .voice import babble, cabin_voice

__all__ = ["AudioInfo", "SoundParts", "synthesize_audio", "synthesize_audio_parts", "SIREN_PATTERNS",
           "SIREN_ENVELOPES", "level_at_distance"]

SIREN_PATTERNS: tuple[str, ...] = ("wail", "yelp", "hilo", "phaser", "rumbler")
SIREN_TIMBRES: tuple[str, ...] = ("driver", "sine", "triangle", "square")
SIREN_ENVELOPES: tuple[str, ...] = EV_MOTIONS  # the envelope is the source's motion

# Levels in dB relative to the road noise (power ratio of the whole clip).
SIREN_SNR_DB = (-6.0, 15.0)
HORN_SNR_DB = (-2.0, 14.0)
SPEECH_SNR_DB = (-4.0, 10.0)
ENGINE_SNR_DB = (-3.0, 12.0)
CLUTTER_SNR_DB = (-6.0, 18.0)  # an untagged sound, from barely audible to far above the road
CABIN_VOICE_SNR_DB = (-4.0, 14.0)
QUIET_ROAD_DB = (20.0, 45.0)  # how far below its usual level the road noise is in a quiet ambience
SILENT_PEAK_DBFS = (-90.0, -45.0)  # peak level of the faint hiss of a silent clip (or digital zero)
P_DIGITAL_SILENCE = 0.35  # a silent clip is all zeros (a muted or absent microphone)
P_WET_ROAD = 0.25  # the tyres throw spray: a bright hiss over the roar (drawn on its own stream)
WET_HISS_DB = (-12.0, 6.0)  # the hiss's level against the roar
WET_HISS_CORNER_HZ = (700.0, 4000.0)  # where the hiss rises above the roar
P_BAND_LIMITED = 0.2  # the recording passes only up to 3.4-11 kHz (a phone, an 8 or 22 kHz recorder)
BAND_LIMIT_HZ = (3400.0, 11000.0)
# Random source loudness subtracted from the loudest level: the spread of a level at a given distance.
SIREN_SPREAD_DB = 7.0
ENGINE_SPREAD_DB = 7.35
SPEECH_SPREAD_DB = 6.0

@dataclass
class AudioInfo:
    """What was mixed into a clip (kept in the manifest's ``synth`` metadata)."""

    siren_pattern: str | None = None
    siren_envelope: str | None = None
    siren_timbre: str | None = None
    clutter_sound: str | None = None  # the untagged sound mixed in (rules.CLUTTER_SOUNDS)
    cabin_voice: str | None = None  # "radio" (band-limited) or "passenger", when a cabin voice speaks
    ambience: str = "road"  # rules.AMBIENCES
    band_limit_hz: int | None = None  # the recording's upper band edge, when it is band-limited
    wet_road: bool = False  # the road noise carries a wet road's spray hiss
    levels_db: dict[str, float] = field(default_factory=dict)  # per source, relative to road noise


def level_at_distance(
    distance_m: float, near_m: float, loudest_db: float, spread_db: float, rng: np.random.Generator
) -> float:
    """A source's level (dB re road noise) at ``distance_m``: inverse-distance law plus a random loudness.

    ``loudest_db - 20 log10(distance_m / near_m) - U(0, spread_db)``, so nearer is louder and the
    level at ``near_m`` is at most ``loudest_db``.

    Args:
        distance_m: the source's distance in metres (> 0).
        near_m: the nearest distance the source is placed at (its loudest level there).
        loudest_db: the level of the loudest source at ``near_m``.
        spread_db: the range of the random source loudness.
        rng: consumed (one uniform draw).

    Raises:
        InputError: a distance is not positive.

    Returns:
        The level in dB.
    """
    if not (distance_m > 0 and near_m > 0):
        raise InputError(f"distances must be positive, got distance_m={distance_m!r}, near_m={near_m!r}")
    return float(loudest_db - 20.0 * np.log10(distance_m / near_m) - rng.uniform(0.0, spread_db))


def _road_noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Tyre roar and wind: pinkish noise with a broad bump a few hundred Hz wide, slowly modulated."""
    bump = rng.uniform(250.0, 900.0)
    width = rng.uniform(200.0, 600.0)
    tilt = rng.uniform(1.0, 1.6)
    rumble = rng.uniform(0.5, 2.0)

    def gain(f):
        f = np.maximum(f, 20.0)
        roar = (100.0 / f) ** (tilt / 2) * (1.0 + 1.5 * np.exp(-(((f - bump) / width) ** 2)))
        return roar + rumble * np.exp(-((f / 120.0) ** 2))

    x = shape_noise(rng, n, sr, gain)
    t = np.arange(n) / sr
    x *= 1.0 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t + rng.uniform(0, 2 * np.pi))
    return x


def _wet_spray(rng: np.random.Generator, n: int, sr: int) -> np.ndarray | None:
    """With probability :data:`P_WET_ROAD`, a wet road's tyre spray: broadband hiss above a corner of
    0.7-4 kHz (a fourth-order rise) that swells and fades with the spray, at unit RMS; else None.

    A bright, steady hiss with nothing tonal in it is what a car hears on a wet road (and from air
    brakes, a fan, or a radio between stations), and it is no siren.
    """
    if rng.random() >= P_WET_ROAD:
        return None
    corner = rng.uniform(*WET_HISS_CORNER_HZ)
    x = shape_noise(rng, n, sr, lambda f: 1.0 / np.sqrt(1.0 + (corner / np.maximum(f, 1.0)) ** 8))
    t = np.arange(n) / sr
    x *= 1.0 + rng.uniform(0.0, 0.5) * np.sin(2 * np.pi * rng.uniform(0.2, 2.0) * t + rng.uniform(0, 2 * np.pi))
    return x / rms(x) * 10 ** (rng.uniform(*WET_HISS_DB) / 20.0)


def _engine(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    f0 = rng.uniform(25.0, 70.0)
    drift = rng.uniform(-0.25, 0.35)  # relative rpm change over the clip
    f = f0 * (1.0 + drift * t / max(t[-1], 1e-9)) * (1.0 + 0.02 * np.sin(2 * np.pi * rng.uniform(2, 6) * t))
    phase = 2 * np.pi * np.cumsum(f) / sr + rng.uniform(0, 2 * np.pi)
    k = np.arange(1, 16)
    amps = rng.uniform(0.4, 1.0, size=k.size) / k**0.8
    x = harmonic(phase, amps, f, sr)
    x += 0.3 * rms(x) * shape_noise(rng, n, sr, lambda fr: np.exp(-((fr / (4 * f0)) ** 2)))  # exhaust noise
    return x


def _siren_sweep(rng: np.random.Generator, t: np.ndarray, pattern: str) -> np.ndarray:
    """The instantaneous frequency (Hz) of a siren pattern, from a random point of its cycle.

    Ranges follow published siren specifications and recordings: a wail sweeps about 500-1800 Hz up
    and down every 2-5 s (0.2-0.5 Hz), a yelp the same range 2-5 times a second, a phaser (hyper-yelp)
    8-12 times a second; a hi-lo alternates two tones a musical third to a fifth apart every 0.25-0.8 s
    (0.6-2 switches a second, always at least one in the clip); a rumbler is a wail or yelp an octave
    or two lower (180-450 Hz, felt more than heard).
    """
    if pattern == "hilo":
        lo = rng.uniform(450.0, 900.0)
        hi = lo * rng.uniform(1.2, 1.6)
        half = rng.uniform(0.25, min(0.8, 0.9 * max(float(t[-1]), 0.3)))
        high = ((t / half + rng.uniform(0, 2)) % 2.0) < 1.0
        f = np.where(high, hi, lo)
        # soften the steps a little (a real hi-lo takes a few ms to switch)
        kernel = np.hanning(max(3, int(0.004 * (t.size / max(float(t[-1]), 1e-3)))))
        f = np.convolve(f, kernel / kernel.sum(), mode="same")
        f[: kernel.size] = f[kernel.size]
        f[-kernel.size :] = f[-kernel.size - 1]
        return f
    if pattern == "rumbler":
        lo, hi = rng.uniform(180.0, 250.0), rng.uniform(330.0, 450.0)
        period = rng.uniform(2.0, 5.0) if rng.random() < 0.5 else rng.uniform(0.2, 0.5)
    else:
        lo, hi = rng.uniform(450.0, 800.0), rng.uniform(1100.0, 1800.0)
        period = {"wail": (2.0, 5.0), "yelp": (0.2, 0.5), "phaser": (0.08, 0.125)}[pattern]
        period = rng.uniform(*period)
    cycle = (t / period + rng.random()) % 1.0
    if rng.random() < 0.5:  # a smooth up-and-down sweep
        return lo + (hi - lo) * (0.5 - 0.5 * np.cos(2 * np.pi * cycle))
    rise = rng.uniform(0.4, 0.6)  # or linear ramps, up for `rise` of the cycle and down for the rest
    shape = np.where(cycle < rise, cycle / rise, (1.0 - cycle) / (1.0 - rise))
    return lo + (hi - lo) * shape


def _siren(
    rng: np.random.Generator, n: int, sr: int, pattern: str, envelope: str, depth_change_m: float
) -> tuple[np.ndarray, str]:
    t = np.arange(n) / sr
    f = _siren_sweep(rng, t, pattern)
    # loudness envelope and Doppler: approaching sources sound higher and grow louder; the faster
    # the depth changes (1-3 m over the clip), the stronger both effects (exaggerated for audibility)
    speed = abs(depth_change_m)
    quiet = float(np.clip(0.6 - 0.15 * speed + rng.uniform(-0.05, 0.05), 0.15, 0.5))  # gain at the far end
    shift = 0.013 * speed + rng.uniform(-0.003, 0.003)
    if envelope == "approach":
        g = np.linspace(quiet, 1.0, n) ** 1.5
        doppler = 1.0 + shift
    elif envelope == "recede":
        g = np.linspace(1.0, quiet, n) ** 1.5
        doppler = 1.0 - shift
    else:
        g = np.ones(n)
        doppler = 1.0
    f = f * doppler
    phase = 2 * np.pi * np.cumsum(f) / sr + rng.uniform(0, 2 * np.pi)
    # a horn-driver siren is square-ish (odd harmonics, a weak second); electronic ones vary
    timbre = SIREN_TIMBRES[int(rng.integers(len(SIREN_TIMBRES)))]
    if timbre == "driver":
        amps = np.array([1.0, 0.12, rng.uniform(0.2, 0.4), 0.05, rng.uniform(0.08, 0.2), 0.0, 0.06])
    else:
        amps = timbre_amps(timbre, rng)
    return g * harmonic(phase, amps, f, sr), timbre


def _horn(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    truck = rng.random() < 0.25  # a truck's air horn is lower than a car's
    f1 = rng.uniform(180.0, 320.0) if truck else rng.uniform(350.0, 480.0)
    f2 = f1 * rng.uniform(1.18, 1.30)
    amps = rng.uniform(0.5, 1.0, size=10) / np.arange(1, 11) ** 0.9  # bright, sawtooth-like
    tone = np.zeros(n)
    for f in (f1,) if rng.random() < 0.3 else (f1, f2):  # single-tone or dual-tone
        fi = np.full(n, f)
        tone += harmonic(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi), amps, fi, sr)
    env = np.zeros(n)
    honks = 1 if rng.random() < 0.6 else 2
    start = rng.uniform(0.0, 0.5) * n
    for _ in range(honks):
        dur = rng.uniform(0.12, 0.9 if truck else 0.5) * sr
        a, b = int(start), int(min(n, start + dur))
        if b - a > 8:
            ramp = max(2, min(int(0.01 * sr), (b - a) // 4))
            seg = np.ones(b - a)
            seg[:ramp] = np.linspace(0, 1, ramp)
            seg[-ramp:] = np.linspace(1, 0, ramp)
            env[a:b] = np.maximum(env[a:b], seg)
        start = b + rng.uniform(0.05, 0.15) * sr
        if start >= n - 16:
            break
    return tone * env


def _silence(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A silent clip: all zeros (a muted microphone) or a faint hiss far below any road noise."""
    if rng.random() < P_DIGITAL_SILENCE:
        return np.zeros(n, np.int16)
    tilt = float(rng.choice([0.0, 0.5, 1.0]))  # white, pink or brown hiss
    hiss = shape_noise(rng, n, sr, lambda f: 1.0 / np.maximum(f, 20.0) ** tilt)
    peak = 32767.0 * 10 ** (rng.uniform(*SILENT_PEAK_DBFS) / 20.0)
    return np.round(hiss * (peak / (np.max(np.abs(hiss)) + 1e-12))).astype(np.int16)


def _mix_in(mix: np.ndarray, src: np.ndarray, ref_rms: float, snr_db: float) -> np.ndarray:
    return mix + src * (ref_rms * 10 ** (snr_db / 20.0) / rms(src))


@dataclass
class SoundParts:
    """A clip's sound split at its siren and its untagged sound, as :func:`synthesize_audio_parts` renders it.

    ``wave`` is what the generator writes. ``siren`` is the siren as it sounds in ``wave`` (same
    recording level and band limit, float, int16 units; zeros without one), so ``wave - siren`` is
    the scene without its siren to within the int16 rounding; ``clutter`` is the same for the
    untagged sound (``AudioInfo.clutter_sound``: a tone, a ringtone, music, wind ...). ``road_rms`` is
    the RMS of the road noise at the recording level (int16 units; 0 for a silent clip): the
    reference every source's level is drawn against, so a siren or an untagged sound moves to another
    clip at its own level by ``road_rms`` ratios.
    """

    wave: np.ndarray  # int16 (n,)
    info: AudioInfo
    siren: np.ndarray  # float64 (n,)
    road_rms: float
    clutter: np.ndarray  # float64 (n,)


def synthesize_audio(
    flags: SceneFlags, rng: np.random.Generator, *, sample_rate: int = 16000, seconds: float = 1.0
) -> tuple[np.ndarray, AudioInfo]:
    """Synthesize the sound of one scene.

    Args:
        flags: the scene's latent decisions (which sources are present, the siren source's distance
            and motion, the near car's and the near pedestrian's distances).
        rng: the generator for the audio of this sample (consumed).
        sample_rate: Hz.
        seconds: clip length.

    Raises:
        InputError: a source is present but its distance (or the siren's motion) is missing from
            ``flags``.

    Returns:
        ``(waveform, info)``: ``waveform`` is int16 of shape ``(round(seconds * sample_rate),)``,
        never clipping; ``info`` says which siren pattern/envelope and which levels were used.
    """
    parts = synthesize_audio_parts(flags, rng, sample_rate=sample_rate, seconds=seconds)
    return parts.wave, parts.info


def synthesize_audio_parts(
    flags: SceneFlags, rng: np.random.Generator, *, sample_rate: int = 16000, seconds: float = 1.0
) -> SoundParts:
    """:func:`synthesize_audio`, with the siren and the untagged sound as heard in the clip kept apart (same
    stream, same wave).

    Raises:
        InputError: as :func:`synthesize_audio`.
    """
    if flags.engine and flags.near_car_m is None:
        raise InputError("flags.engine is set but flags.near_car_m is None")
    if flags.speech and flags.near_pedestrian_m is None:
        raise InputError("flags.speech is set but flags.near_pedestrian_m is None")
    if flags.siren and (flags.ev_distance_m is None or flags.ev_motion not in EV_MOTIONS
                        or flags.ev_depth_change_m is None):
        raise InputError("flags.siren is set but its ev_distance_m/ev_motion/ev_depth_change_m are missing")
    if flags.ambience not in AMBIENCES:
        raise InputError(f"flags.ambience must be one of {', '.join(AMBIENCES)}, got {flags.ambience!r}")
    n = int(round(seconds * sample_rate))
    sr = sample_rate
    if flags.ambience == "silent":
        if flags.siren or flags.horn or flags.speech or flags.engine or flags.cabin_voice or flags.clutter_sound:
            raise InputError("a silent ambience cannot have a sound source")
        return SoundParts(_silence(rng, n, sr), AudioInfo(ambience="silent"), np.zeros(n), 0.0, np.zeros(n))
    info = AudioInfo(ambience=flags.ambience)
    road = _road_noise(rng, n, sr)
    ref = rms(road)  # the sources' levels are set against the roar, wet or dry
    spray = _wet_spray(rng.spawn(1)[0], n, sr)  # its own stream: every other draw of the clip is unchanged
    if spray is not None:
        info.wet_road = True
        road = road + spray * ref
    mix = road.copy()
    siren_part, clutter_part = np.zeros(n), np.zeros(n)
    if flags.engine:
        info.levels_db["engine"] = level_at_distance(
            flags.near_car_m, NEAR_CAR_M[0], ENGINE_SNR_DB[1], ENGINE_SPREAD_DB, rng)
        mix = _mix_in(mix, _engine(rng, n, sr), ref, info.levels_db["engine"])
    if flags.speech:
        info.levels_db["speech"] = level_at_distance(
            flags.near_pedestrian_m, NEAR_PEDESTRIAN_M[0], SPEECH_SNR_DB[1], SPEECH_SPREAD_DB, rng)
        mix = _mix_in(mix, babble(rng, n, sr), ref, info.levels_db["speech"])
    if flags.horn:
        info.levels_db["horn"] = float(rng.uniform(*HORN_SNR_DB))
        mix = _mix_in(mix, _horn(rng, n, sr), ref, info.levels_db["horn"])
    if flags.siren:
        info.siren_pattern = SIREN_PATTERNS[int(rng.integers(len(SIREN_PATTERNS)))]
        info.siren_envelope = flags.ev_motion
        info.levels_db["siren"] = level_at_distance(
            flags.ev_distance_m, EV_DISTANCE_M[0], SIREN_SNR_DB[1], SIREN_SPREAD_DB, rng)
        siren, info.siren_timbre = _siren(rng, n, sr, info.siren_pattern, info.siren_envelope,
                                          flags.ev_depth_change_m)
        before = mix
        mix = _mix_in(mix, siren, ref, info.levels_db["siren"])
        siren_part = mix - before
    if flags.clutter_sound is not None:
        info.clutter_sound = flags.clutter_sound
        info.levels_db["clutter"] = float(rng.uniform(*CLUTTER_SNR_DB))
        before = mix
        mix = _mix_in(mix, clutter_sound(flags.clutter_sound, rng, n, sr), ref, info.levels_db["clutter"])
        clutter_part = mix - before
    if flags.cabin_voice:
        voice, info.cabin_voice = cabin_voice(rng, n, sr)
        info.levels_db["cabin_voice"] = float(rng.uniform(*CABIN_VOICE_SNR_DB))
        mix = _mix_in(mix, voice, ref, info.levels_db["cabin_voice"])
    # the recording level is set with the road noise at its usual level, so in a quiet ambience the
    # sources keep their loudness and only the road noise drops (with no source: a near-silent clip)
    peak = float(np.max(np.abs(mix))) + 1e-12
    target = rng.uniform(0.25, 0.9)  # recording level varies; never clips
    if flags.ambience == "quiet":
        info.levels_db["road"] = -float(rng.uniform(*QUIET_ROAD_DB))
        mix = mix - road * (1.0 - 10 ** (info.levels_db["road"] / 20.0))
    if rng.random() < P_BAND_LIMITED:  # drawn last: a seed keeps every source it had
        cut = float(rng.uniform(*BAND_LIMIT_HZ))
        info.band_limit_hz = round(cut)
        denominator = np.sqrt(1.0 + (np.fft.rfftfreq(n, 1.0 / sr) / cut) ** 16)  # 8th-order low-pass
        mix = np.fft.irfft(np.fft.rfft(mix) / denominator, n)
        siren_part = np.fft.irfft(np.fft.rfft(siren_part) / denominator, n)
        clutter_part = np.fft.irfft(np.fft.rfft(clutter_part) / denominator, n)
    scale = target * 32767.0 / peak
    wave = np.round(np.clip(mix * scale, -32767.0, 32767.0)).astype(np.int16)
    return SoundParts(wave, info, siren_part * scale, ref * scale, clutter_part * scale)
