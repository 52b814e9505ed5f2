"""Siren swap: each training clip heard with and without a siren, its labels following the sound.

A model trained on 2,000 fixed clips can decide "siren" from anything that came with one: it calls
a fresh seed's steady tones and ringtones sirens while getting the training split's right, because
it learnt which tone came with a siren, not what a siren is. New renderings of the same scene
(``audio_resynth.py``) take the memory away without teaching the rule. This augmentation gives the
model minimal pairs instead (counterfactual augmentation: Kaushik et al., "Learning the Difference
that Makes a Difference with Counterfactually-Augmented Data", ICLR 2020): the generator renders
each row's sound from its own stream with the siren kept apart (``sound.synthesize_audio_parts``),
so a clip's sound without its siren is known exactly. A swapped draw hears that rest of the scene
with no siren, or with the siren of another training clip at that clip's level against the road
noise, and its event and siren tag are re-derived from the fusion rule
(``rules.event_from_cues(siren, lights_on_ev)``, the lights cue being the clip's own video). The
same tone, ringtone or voice is then heard under both labels, and only the siren itself decides.

The siren is drawn with the split's own rate given the clip's lights cue, so the event and tag
priors (and the cues' independence) stay those of the data. Only the generator's rows can be split
this way; every row is rendered again and must give back its stored sound bit for bit. Silent clips
(no siren ever sounds there) and band-limited recordings (a full-band siren would betray itself
above the band edge) keep their own sound.

**Clutter swap** (``clutter_probability``) extends the minimal pairs to the sounds that a siren is
mistaken for. The generator keeps each row's untagged sound apart too (a steady tone, a ringtone,
a chord, a melody, wind ...: ``SoundParts.clutter``), and a swapped draw then also hears, in place
of its own, the untagged sound of another training row (or none, at the split's rate), moved to its
road level as a siren is. No label changes, since these sounds carry no tag and decide no event; a
ringtone that came with one scene is heard under a siren, over silence and beside a horn in others,
so the tonal sounds stop being tied to the scenes they were rendered in. With sound naming
(``sound_naming.py``) the swapped draw's name of its untagged sound follows the sound it hears.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from fusionedge.sdk.datamanifest import Sample
from fusionedge.sdk.errors import DataError
from fusionedge.sdk.preprocess import preprocess_audio
from fusionedge.sdk.spec import InputGeometry

from .audio_resynth import scene_of, stored_sound
from .sound_naming import sound_index

__all__ = ["SirenSwap", "siren_swap_parts", "swap_sirens"]

SIREN_TAG = "siren"


@dataclass(frozen=True)
class SirenSwap:
    """The parts of a split's sounds that a siren swap recombines (``N`` rows, ``D`` rows with a siren)."""

    rest: torch.Tensor  # (N, S) float32: each row's sound without its siren, preprocessed (zeros if not eligible)
    siren: torch.Tensor  # (D, S) float32: the siren of each donor row as heard in it, preprocessed
    donors: torch.Tensor  # (D,) int64: the eligible rows with a siren
    road_rms: torch.Tensor  # (N,) float32: the road noise's RMS at the row's recording level
    eligible: torch.Tensor  # (N,) bool: a row whose sound may be swapped
    lights: torch.Tensor  # (N,) bool: the row's lights cue (a lights-ON emergency vehicle in view)
    event_with: torch.Tensor  # (N,) int64: the row's event class if a siren sounds
    event_without: torch.Tensor  # (N,) int64: ... and if none does
    siren_tag: int  # the siren's column in the audio tags
    siren_rate: tuple[float, float]  # P(siren) among eligible rows without / with the lights cue
    clutter: torch.Tensor  # (C, S) float32: the untagged sound of each eligible row that has one, preprocessed
    clutter_donors: torch.Tensor  # (C,) int64: the rows those sounds come from
    clutter_of: torch.Tensor  # (N,) int64: each row's own untagged sound in ``clutter``, -1 for none
    clutter_rate: float  # P(an untagged sound) among eligible rows (0 when the sounds were not kept)
    clutter_kind: torch.Tensor  # (C,) int64: what each of ``clutter`` is (a class of sound_naming.SOUND_NAMES)
    siren_rms: torch.Tensor  # (D,) float32: each donor row's road noise RMS (its siren's reference level)
    clutter_rms: torch.Tensor  # (C,) float32: the same for each row lending an untagged sound

    #: The fields with one entry per row (the rest belong to the donors, whatever rows hold them).
    ROW_FIELDS = ("rest", "road_rms", "eligible", "lights", "event_with", "event_without", "clutter_of")

    def take(self, idx: torch.Tensor) -> SirenSwap:
        """The parts of the rows ``idx`` (a data-parallel rank's share), every donor kept.

        ``donors`` and ``clutter_donors`` still name rows of the whole split.
        """
        return dataclasses.replace(self, **{f: getattr(self, f)[idx] for f in self.ROW_FIELDS})


def _parts(job: tuple[Sample, InputGeometry, bool]
           ) -> tuple[np.ndarray, np.ndarray, float, bool, bool, bool, np.ndarray | None, int]:
    from .synth.sound import synthesize_audio_parts

    sample, geometry, keep_clutter = job
    flags, config, rng_audio = scene_of(sample)
    parts = synthesize_audio_parts(flags, rng_audio, sample_rate=config.sample_rate, seconds=config.seconds)
    stored = stored_sound(sample, parts.wave)
    eligible = parts.info.ambience != "silent" and parts.info.band_limit_hz is None and parts.road_rms > 0
    siren = (parts.siren / 32768.0).astype(np.float32)
    rest = preprocess_audio(stored - siren, config.sample_rate, geometry)
    clutter = None
    if keep_clutter and parts.info.clutter_sound is not None:
        clutter = preprocess_audio((parts.clutter / 32768.0).astype(np.float32), config.sample_rate, geometry)
    return rest, preprocess_audio(siren, config.sample_rate, geometry), parts.road_rms / 32768.0, \
        bool(eligible), bool(flags.lights_on_ev), bool(flags.siren), clutter, sound_index(parts.info.clutter_sound)


def siren_swap_parts(samples: Sequence[Sample], events: Sequence[str], audio_tags: Sequence[str],
                     geometry: InputGeometry, *, workers: int = 1, progress: bool = True,
                     clutter: bool = False) -> SirenSwap:
    """Take every row's siren (and with ``clutter`` its untagged sound) apart from the rest of its sound
    (about 15 ms of CPU per 1 s clip).

    Args:
        samples: the training rows, in the order of the decoded split.
        events: the task's event classes (the generator's four must be among them).
        audio_tags: the task's audio tags (``siren`` must be one).
        geometry: the model input geometry.
        workers: processes.
        progress: a tqdm bar on stderr.
        clutter: also keep each eligible row's untagged sound, for a clutter swap (without it the
            ``clutter`` parts are empty: they cost 4 bytes per audio sample, 64 KB per 1 s row, for every row that has one).

    Raises:
        DataError: a row the generator did not make or that does not render as stored, a task without
            the generator's events or a siren tag, or no eligible row with a siren.

    Returns:
        The parts, as tensors.
    """
    from .synth.rules import EVENTS, event_from_cues

    missing = [e for e in EVENTS if e not in events]
    if missing or SIREN_TAG not in audio_tags:
        raise DataError(f"siren swap needs the generator's events ({', '.join(EVENTS)}) and a {SIREN_TAG!r} tag; "
                        f"this task lacks {', '.join(missing + ([] if SIREN_TAG in audio_tags else [SIREN_TAG]))}")
    for s in samples:
        if s.audio is None:
            raise DataError(f"siren swap: sample {s.id!r} has no audio (only the generator's clips can be swapped)")
    jobs = [(s, geometry, clutter) for s in samples]
    bar = dict(total=len(jobs), desc="take sirens apart", unit="clip", disable=not progress, leave=False)
    if workers <= 1:
        out = [_parts(j) for j in tqdm(jobs, **bar)]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            out = list(tqdm(pool.map(_parts, jobs, chunksize=16), **bar))
    rest = np.stack([o[0] for o in out])
    road = np.array([o[2] for o in out], np.float32)
    eligible = np.array([o[3] for o in out])
    lights = np.array([o[4] for o in out])
    has_siren = np.array([o[5] for o in out])
    donors = np.nonzero(eligible & has_siren)[0]
    if len(donors) == 0:
        raise DataError("siren swap: no training clip with a siren can lend it (none is full-band and not silent)")
    rate = []
    for lit in (False, True):
        group = eligible & (lights == lit)
        rate.append(float(has_siren[group].mean()) if group.any() else 0.0)
    rest[~eligible] = 0.0  # never swapped: their own sound stays in the decoded split
    clutter_donors = np.array([i for i, o in enumerate(out) if eligible[i] and o[6] is not None], np.int64)
    clutter_of = np.full(len(out), -1, np.int64)
    clutter_of[clutter_donors] = np.arange(len(clutter_donors))
    clutter_parts = (np.stack([out[i][6] for i in clutter_donors]) if len(clutter_donors)
                     else np.zeros((0, rest.shape[1]), np.float32))
    return SirenSwap(
        rest=torch.from_numpy(rest), siren=torch.from_numpy(np.stack([out[i][1] for i in donors])),
        donors=torch.from_numpy(donors.astype(np.int64)), road_rms=torch.from_numpy(road),
        eligible=torch.from_numpy(eligible), lights=torch.from_numpy(lights),
        event_with=torch.tensor([events.index(event_from_cues(True, bool(x))) for x in lights], dtype=torch.int64),
        event_without=torch.tensor([events.index(event_from_cues(False, bool(x))) for x in lights],
                                   dtype=torch.int64),
        siren_tag=list(audio_tags).index(SIREN_TAG), siren_rate=(rate[0], rate[1]),
        clutter=torch.from_numpy(clutter_parts), clutter_donors=torch.from_numpy(clutter_donors),
        clutter_of=torch.from_numpy(clutter_of),
        clutter_rate=float(len(clutter_donors) / max(1, eligible.sum())) if clutter else 0.0,
        clutter_kind=torch.tensor([out[i][7] for i in clutter_donors], dtype=torch.int64),
        siren_rms=torch.from_numpy(road[donors]), clutter_rms=torch.from_numpy(road[clutter_donors]))


def swap_sirens(swap: SirenSwap, probability: float, idx: torch.Tensor, audio: torch.Tensor, event: torch.Tensor,
                tags: torch.Tensor, generator: torch.Generator, clutter_probability: float = 0.0,
                names: torch.Tensor | None = None) -> None:
    """Swap the sirens of a batch in place: ``audio`` (B, S), ``event`` (B,), ``tags`` (B, A) of rows ``idx``.

    With ``probability`` an eligible row hears the rest of its scene, with the siren of a random donor
    row (moved to this clip's road level) drawn at the split's rate for its lights cue, or with none;
    its event and siren tag follow. With ``clutter_probability`` such a row's untagged sound is drawn
    again the same way (another row's, at the split's rate, or none); no label follows it, but
    ``names`` (B,), each draw's untagged sound as a class of ``sound_naming.SOUND_NAMES``, does. A sum
    louder than full scale is scaled down to 0.99 peak. The clutter's random numbers are drawn only
    when ``clutter_probability`` > 0, so runs without it keep their random stream.
    """
    b = len(idx)
    u_swap, u_on = torch.rand(2, b, generator=generator)
    donor = torch.randint(len(swap.donors), (b,), generator=generator)
    rows = (u_swap < probability) & swap.eligible[idx]
    if not rows.any():
        return
    at = idx[rows]
    lit = swap.lights[at]
    rate = torch.where(lit, swap.siren_rate[1], swap.siren_rate[0])
    on = u_on[rows] < rate
    d = donor[rows]
    gain = swap.road_rms[at] / swap.siren_rms[d]
    mixed = swap.rest[at] + (on.float() * gain).unsqueeze(1) * swap.siren[d]
    if clutter_probability > 0 and len(swap.clutter_donors):
        u_clutter, u_clutter_on = torch.rand(2, b, generator=generator)
        lender = torch.randint(len(swap.clutter_donors), (b,), generator=generator)
        redraw = u_clutter[rows] < clutter_probability
        own = swap.clutter_of[at]
        drop = redraw & (own >= 0)
        mixed[drop] -= swap.clutter[own[drop]]
        add = redraw & (u_clutter_on[rows] < swap.clutter_rate)
        c = lender[rows][add]
        gain_c = swap.road_rms[at[add]] / swap.clutter_rms[c]
        mixed[add] += gain_c.unsqueeze(1) * swap.clutter[c]
        if names is not None:
            heard = torch.where(add, swap.clutter_kind[lender[rows]], 0)
            names[rows] = torch.where(redraw, heard, names[rows])
    peak = mixed.abs().amax(dim=1, keepdim=True)
    audio[rows] = mixed / torch.clamp(peak / 0.99, min=1.0)
    event[rows] = torch.where(on, swap.event_with[at], swap.event_without[at])
    tags[rows, swap.siren_tag] = on.float()
