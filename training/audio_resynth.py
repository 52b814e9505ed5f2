"""New renderings of a synthetic clip's sound, with the same labels: more sounds from the same scenes.

A model trained on 2,000 fixed clips learns each clip's sound. On the generator's world it then
calls the training split's steady tones and ringtones right (97% of them) and those of a fresh seed
wrong (half of them): it has remembered which tone came with a siren, not that a steady tone is not
one. The generator decides a scene's latent facts (``rules.sample_flags``: is a siren sounding, how far
and how it moves, which other sound plays, is anyone talking) separately from how each sound is
rendered (``sound.synthesize_audio``, from its own random stream). So a synthetic row's scene can be
re-derived from its ``synth.seed`` and ``synth.index`` and its sound rendered again from another
stream: another tone frequency, ringtone melody, siren timbre and level, the same event and tags. A
training clip then hears a different rendering each epoch (domain randomization over the
renderer's parameters), and the video is untouched.

Only rows the generator made can be re-rendered; a row whose re-derived labels differ from its
manifest's (another generator version, edited labels) is refused, naming the row.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

import numpy as np
from tqdm import tqdm

from fusionedge.sdk.datamanifest import Sample
from fusionedge.sdk.errors import DataError
from fusionedge.sdk.preprocess import preprocess_audio
from fusionedge.sdk.spec import InputGeometry

__all__ = ["scene_of", "render_sound_again", "stored_sound", "audio_variants", "as_float"]

#: The stream of variant ``v`` of row (seed, index) is ``[seed, index, RESYNTH_STREAM, v]`` (the
#: generator uses ``[seed, index]`` for the clip and ``[seed, index, 1]`` for its questions).
RESYNTH_STREAM = 2


def scene_of(sample: Sample) -> tuple:
    """A synthetic row's scene re-derived from its ``synth.seed`` / ``synth.index``, checked against its labels.

    Raises:
        DataError: the row is not the generator's, or its re-derived event or tags differ from the
            manifest's.

    Returns:
        ``(flags, config, rng_audio)``: the scene's ``rules.SceneFlags``, the ``SynthConfig`` it was
        made with and the generator's own audio stream for it (unconsumed).
    """
    from .synth import rules
    from .synth.generate import SynthConfig

    info = sample.meta.get("synth") if isinstance(sample.meta, dict) else None
    if not isinstance(info, dict) or not all(isinstance(info.get(k), int) for k in ("seed", "index")):
        raise DataError(f"sample {sample.id!r}: no synth.seed/synth.index: only the generator's rows can be "
                        "rendered again")
    config = SynthConfig(cue_agreement=info.get("cue_agreement", SynthConfig.cue_agreement))
    rng_flags, _, rng_audio = np.random.default_rng([info["seed"], info["index"]]).spawn(3)
    flags = rules.sample_flags(rng_flags, config.cue_agreement)
    event, tags = rules.event_from_cues(flags.siren, flags.lights_on_ev), rules.audio_tags_for(flags)
    if event != sample.event or set(tags) != set(sample.audio_tags):
        raise DataError(f"sample {sample.id!r}: its scene re-derived from synth seed {info['seed']}, index "
                        f"{info['index']} has event {event!r} and tags {sorted(tags)}, the manifest "
                        f"{sample.event!r} and {sorted(sample.audio_tags)}: made by another generator version "
                        "or edited, so it cannot be rendered again")
    return flags, config, rng_audio


def render_sound_again(sample: Sample, variant: int) -> np.ndarray:
    """Render a synthetic row's sound again from a new stream.

    Args:
        sample: a manifest row the generator wrote (``meta["synth"]`` with ``seed``, ``index``,
            ``cue_agreement``).
        variant: >= 0 for a new rendering; -1 renders the stored sound again (a check).

    Raises:
        DataError: as :func:`scene_of`.

    Returns:
        int16 ``(seconds * sample_rate,)``, as the generator writes it.
    """
    from .synth.sound import synthesize_audio

    flags, config, rng_audio = scene_of(sample)
    info = sample.meta["synth"]
    rng = rng_audio if variant < 0 else np.random.default_rng([info["seed"], info["index"], RESYNTH_STREAM, variant])
    wave, _ = synthesize_audio(flags, rng, sample_rate=config.sample_rate, seconds=config.seconds)
    return wave


def as_float(wave: np.ndarray) -> np.ndarray:
    """int16 samples as float32 in [-1, 1), the scaling the runtime's WAV reader uses."""
    return wave.astype(np.float32) / 32768.0


def stored_sound(sample: Sample, wave: np.ndarray | None = None) -> np.ndarray:
    """A generator row's stored sound, checked against its scene rendered again by the generator's own stream.

    Args:
        sample: the row.
        wave: that rendering (int16) when the caller already has it; None renders it here.

    Raises:
        DataError: the two differ (another generator version, sample rate or length, or an edited file).

    Returns:
        The stored sound, float32 mono in [-1, 1).
    """
    from fusionedge.sdk.audio_file import read_audio

    stored, _ = read_audio(sample.audio)
    again = as_float(render_sound_again(sample, -1) if wave is None else wave)
    stored = stored.reshape(-1) if stored.ndim == 2 and stored.shape[1] == 1 else stored  # (S, 1): mono
    if stored.shape != again.shape or not np.array_equal(stored, again):
        raise DataError(f"sample {sample.id!r}: rendering its scene again does not give its stored sound "
                        f"({sample.audio}): made by another generator version or with another sample rate "
                        "or length, or edited, so its sound cannot be rendered again")
    return stored


def _variants_of(job: tuple[Sample, int, InputGeometry]) -> np.ndarray:
    from .synth.generate import SynthConfig

    sample, count, geometry = job
    return np.stack([preprocess_audio(as_float(render_sound_again(sample, v)), SynthConfig.sample_rate, geometry)
                     for v in range(count)])


def audio_variants(samples: Sequence[Sample], count: int, geometry: InputGeometry, *, workers: int = 1,
                   progress: bool = True) -> np.ndarray:
    """``count`` new renderings of every row's sound, preprocessed as the runtime does.

    Args:
        samples: the generator's rows (every one must have audio).
        count: renderings per row, >= 1.
        geometry: the model input geometry (the waveform window the model reads).
        workers: processes (about 12 ms of CPU per rendering of a 1 s clip).
        progress: a tqdm bar on stderr.

    Raises:
        DataError: a row without audio, or one that cannot be rendered again (``render_sound_again``).

    Returns:
        float32 ``(N, count, geometry.audio_samples)``.
    """
    if count < 1:
        raise DataError(f"audio variants: need count >= 1, got {count}")
    for s in samples:
        if s.audio is None:
            raise DataError(f"sample {s.id!r} has no audio to render again")
    if samples:
        stored_sound(samples[0])
    jobs = [(s, count, geometry) for s in samples]
    bar = dict(total=len(jobs), desc=f"render sound x{count}", unit="clip", disable=not progress, leave=False)
    if workers <= 1:
        out = [_variants_of(j) for j in tqdm(jobs, **bar)]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            out = list(tqdm(pool.map(_variants_of, jobs, chunksize=16), **bar))
    return np.stack(out)  # float32, as preprocess_audio returns it
