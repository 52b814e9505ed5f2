"""Scene questions and their answers, made from what the generator knows is in a clip.

Question answering needs questions whose answers are correct by construction, and answers that the
question alone cannot give away (the VQA v2 / CLEVR lesson: a model that learns "how many cars? ->
2" from the words scores well without looking). Each question here is a template with paraphrases
over one fact of the scene's truth, the fields a generated manifest already carries: the last frame's
boxes, the audio tags, the event and the ``synth`` details (the lights-ON emergency vehicle's box
and motion, each traffic light's lit lamp). The types and what answers them:

``exist``   is there a car / pedestrian / traffic light / emergency vehicle / flashing light bar (video)
``count``   how many cars / pedestrians / traffic lights, 0-3 (video, last frame's boxes)
``light``   the colour of the one traffic light in view: red / amber / green (video)
``side``    where the lights-ON emergency vehicle is: left / right / ahead (video)
``motion``  is it approaching / receding / steady (video, and the siren's envelope when it sounds)
``hear``    is a siren / horn / speech / engine heard (audio)
``source``  where the siren comes from: ahead / behind / none (needs both: a siren heard, and a
            flashing vehicle seen or not)

An object is asked about (``exist``, ``count``, ``light``) only when every box of its label in the last
frame is at least :data:`MIN_SEEN_PX` tall: the CLEVR rule that a question is asked only about objects
that can be seen, since a 320 x 192 frame does not resolve a car a few pixels high.

Balance: a candidate (type, subject, answer) is kept with probability ``min_a p(a) / p(answer)``,
where ``p`` is how often that answer comes up among the subject's draws (:data:`ANSWER_RATES`,
measured over generated clips with :func:`measure_answer_rates`: not the scenes' own rates, since a
clip that supports fewer question types draws more of the others), so within each question subject
the kept answers are near uniform and a question-only model is near chance. Each subject is drawn at most
once per clip (a retry after a rejection would undo the balance). Clips are independent, so this is
done per clip from the fixed rates, not by counting across a data set. Yes/no types are drawn less
often (:data:`TYPE_WEIGHTS`), and a clip gets at most one of them (:data:`YES_NO_TYPES`,
:data:`MAX_YES_NO_PER_CLIP`), so that the mix as a whole leaves a question-only guess well under half
right: a guess can do no better than half on a balanced yes/no question, and about a third on the
others. Without the joint cap, a clip that supports few other questions fills up with yes/no ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from fusionedge.sdk.datamanifest import Question, Sample
from fusionedge.sdk.errors import DataError, InputError

__all__ = [
    "ANSWER_RATES",
    "MAX_YES_NO_PER_CLIP",
    "MIN_SEEN_PX",
    "QUESTION_TYPES",
    "TYPE_WEIGHTS",
    "YES_NO_TYPES",
    "SceneTruth",
    "count_subject",
    "make_questions",
    "measure_answer_rates",
    "question_stream",
    "questions_for_sample",
    "redraw_questions",
    "truth_from_sample",
]

QUESTION_TYPES: tuple[str, ...] = ("exist", "count", "light", "side", "motion", "hear", "source")

#: How often each answer comes up among the subjects :func:`make_questions` draws, per (type,
#: subject); answers not listed are not asked (e.g. four or more cars). Measured with
#: :func:`measure_answer_rates` (its defaults) over the first 4000 clips of a 12,000-clip training set
#: (``fusionedge data synth``, seeds 0 and 7, the generator with negatives and non-road views):
#: ``measure_answer_rates([truth_from_sample(s) for s in read_manifest(m)[:4000]])``.
ANSWER_RATES: dict[tuple[str, str], dict[str, float]] = {
    ("exist", "car"): {"yes": 0.723, "no": 0.277},
    ("exist", "pedestrian"): {"yes": 0.686, "no": 0.314},
    ("exist", "traffic_light"): {"yes": 0.256, "no": 0.744},
    ("exist", "emergency_vehicle"): {"yes": 0.595, "no": 0.405},
    ("exist", "flashing"): {"yes": 0.498, "no": 0.502},
    ("count", "car"): {"0": 0.285, "1": 0.354, "2": 0.241, "3": 0.120},
    ("count", "pedestrian"): {"0": 0.316, "1": 0.311, "2": 0.244, "3": 0.129},
    ("count", "traffic_light"): {"0": 0.752, "1": 0.211, "2": 0.037},
    ("light", "traffic_light"): {"red": 0.347, "amber": 0.338, "green": 0.315},
    ("side", "flashing"): {"left": 0.308, "right": 0.396, "ahead": 0.295},
    ("motion", "flashing"): {"approaching": 0.340, "receding": 0.316, "steady": 0.344},
    ("hear", "siren"): {"yes": 0.507, "no": 0.493},
    ("hear", "horn"): {"yes": 0.265, "no": 0.735},
    ("hear", "speech"): {"yes": 0.407, "no": 0.593},
    ("hear", "engine"): {"yes": 0.502, "no": 0.498},
    ("source", "siren"): {"ahead": 0.255, "behind": 0.259, "none": 0.486},
}

_NAMES = {"car": ("car", "cars"), "pedestrian": ("pedestrian", "pedestrians"),
          "traffic_light": ("traffic light", "traffic lights"),
          "emergency_vehicle": ("emergency vehicle", "emergency vehicles")}

_EXIST = ("is there a {o}?", "can you see a {o}?", "is a {o} in view?", "do you see any {o}?")
_EXIST_FLASHING = ("is there an emergency vehicle with flashing lights?", "are emergency lights flashing?",
                   "can you see a flashing light bar?", "is an emergency vehicle flashing its lights?")
_COUNT = ("how many {os} are there?", "how many {os} can you see?", "count the {os}.",
          "what is the number of {os} in view?")
_LIGHT = ("what colour is the traffic light?", "what color is the traffic light?",
          "which lamp of the traffic light is lit?", "is the traffic light red, amber or green?")
_SIDE = ("where is the emergency vehicle with flashing lights: left, right or ahead?",
         "is the flashing emergency vehicle on the left, on the right or ahead?",
         "on which side is the emergency vehicle with its lights on?")
_MOTION = ("is the emergency vehicle with flashing lights approaching, receding or steady?",
           "is the flashing emergency vehicle coming closer or moving away?",
           "how is the emergency vehicle with its lights on moving?")
_HEAR = {
    "siren": ("is a siren heard?", "can you hear a siren?", "is there a siren?", "do you hear a siren wailing?"),
    "horn": ("is a horn heard?", "can you hear a horn?", "did someone honk?", "is there a horn sounding?"),
    "speech": ("is someone talking?", "can you hear speech?", "are people speaking?", "is a voice heard?"),
    "engine": ("is an engine heard?", "can you hear an engine?", "is there engine noise?",
               "do you hear a car engine running?"),
}
_SOURCE = ("where is the siren coming from: ahead, behind, or none?",
           "is the siren from a vehicle ahead, from behind, or is there none?",
           "does the siren come from ahead or from behind?")

#: How often each type is drawn, relative: yes/no types less often, so that the mix as a whole leaves
#: a question-only guess well under half right.
TYPE_WEIGHTS: dict[str, float] = {"exist": 0.3, "count": 2.0, "light": 1.0, "side": 1.0, "motion": 1.0,
                                  "hear": 0.4, "source": 1.0}

#: The question types answered yes or no.
YES_NO_TYPES: tuple[str, ...] = ("exist", "hear")

#: At most this many yes/no questions per clip, of all their types together (the rest of the clip's
#: questions have three or more answers).
MAX_YES_NO_PER_CLIP = 1

_SIDE_LEFT, _SIDE_RIGHT = 0.4, 0.6  # box centre x as a fraction of the width: left of / right of
#: An object is asked about (is there, how many, what colour) only when every box of its label in the
#: last frame is at least this tall, in pixels: a 320 x 192 frame does not resolve a smaller one.
MIN_SEEN_PX = 12
_MOTION_WORDS = {"approach": "approaching", "recede": "receding", "steady": "steady"}
_SOURCE_OF_EVENT = {"emergency_ahead": "ahead", "emergency_behind": "behind"}


@dataclass(frozen=True)
class SceneTruth:
    """The facts of one clip that questions are asked about.

    Attributes:
        counts: visible objects per label in the last frame (labels from ``sdk.spec.OBJECTS``).
        audio_tags: the sounds heard.
        event: the clip's event (``emergency_ahead`` / ``emergency_behind`` say where a siren is).
        flashing_box: the lights-ON emergency vehicle's last-frame box, None when not in view.
        flashing_motion: its motion (``approach`` / ``recede`` / ``steady``), None when unknown.
        traffic_lights: ``(box height in pixels, lit lamp)`` of each boxed traffic light.
        width: the frame width in pixels.
        smallest: the smallest box height in pixels per label (absent: no box, or not measured).
    """

    counts: Mapping[str, int]
    audio_tags: tuple[str, ...]
    event: str | None
    flashing_box: tuple[float, float, float, float] | None
    flashing_motion: str | None
    traffic_lights: tuple[tuple[float, str], ...]
    width: int
    smallest: Mapping[str, float] = field(default_factory=dict)


def truth_from_sample(sample: Sample) -> SceneTruth | None:
    """The truth of a generated sample (its boxes, tags, event and ``synth`` details).

    Returns:
        None for a sample without the generator's ``synth`` details or without a width (a user's
        own data: its questions must come with the manifest).
    """
    synth = sample.meta.get("synth")
    if not isinstance(synth, dict) or sample.width is None:
        return None
    counts: dict[str, int] = {}
    smallest: dict[str, float] = {}
    for b in sample.boxes:
        counts[b.label] = counts.get(b.label, 0) + 1
        smallest[b.label] = min(smallest.get(b.label, math.inf), float(b.y2 - b.y1))
    box = synth.get("lights_on_ev_box")
    lights = tuple((float(t["box"][3] - t["box"][1]), str(t["state"])) for t in synth.get("traffic_lights") or ())
    return SceneTruth(counts=counts, audio_tags=tuple(sample.audio_tags), event=sample.event,
                      flashing_box=None if box is None else tuple(float(v) for v in box),  # type: ignore[arg-type]
                      flashing_motion=synth.get("ev_motion") if box is not None else None,
                      traffic_lights=lights, width=sample.width, smallest=smallest)


def _candidate(kind: str, truth: SceneTruth, rng: np.random.Generator) -> tuple[str, str, str] | None:
    """One (subject, question, answer) of this type for this clip, or None if it cannot be asked."""
    if kind == "exist":
        subject = str(rng.choice(["car", "pedestrian", "traffic_light", "emergency_vehicle", "flashing"]))
        if subject == "flashing":
            return subject, str(rng.choice(_EXIST_FLASHING)), "yes" if truth.flashing_box is not None else "no"
        if truth.smallest.get(subject, math.inf) < MIN_SEEN_PX:
            return None
        text = str(rng.choice(_EXIST)).format(o=_NAMES[subject][0])
        return subject, text, "yes" if truth.counts.get(subject, 0) else "no"
    if kind == "count":
        subject = str(rng.choice(["car", "pedestrian", "traffic_light"]))
        if truth.smallest.get(subject, math.inf) < MIN_SEEN_PX:
            return None
        return subject, str(rng.choice(_COUNT)).format(os=_NAMES[subject][1]), str(truth.counts.get(subject, 0))
    if kind == "light":
        if len(truth.traffic_lights) != 1 or truth.traffic_lights[0][0] < MIN_SEEN_PX:
            return None
        return "traffic_light", str(rng.choice(_LIGHT)), truth.traffic_lights[0][1]
    if kind == "side":
        if truth.flashing_box is None:
            return None
        x = (truth.flashing_box[0] + truth.flashing_box[2]) / 2 / truth.width
        side = "left" if x < _SIDE_LEFT else "right" if x > _SIDE_RIGHT else "ahead"
        return "flashing", str(rng.choice(_SIDE)), side
    if kind == "motion":
        if truth.flashing_box is None or truth.flashing_motion not in _MOTION_WORDS:
            return None
        return "flashing", str(rng.choice(_MOTION)), _MOTION_WORDS[truth.flashing_motion]
    if kind == "hear":
        subject = str(rng.choice(list(_HEAR)))
        return subject, str(rng.choice(_HEAR[subject])), "yes" if subject in truth.audio_tags else "no"
    if kind == "source":
        return "siren", str(rng.choice(_SOURCE)), _SOURCE_OF_EVENT.get(truth.event or "", "none")
    raise ValueError(f"unknown question type {kind!r}")


def count_subject(question: str) -> str | None:
    """The object label a count question asks about (``"car"``, ``"pedestrian"``, ``"traffic_light"``),
    from the words of any of its paraphrases; None for a question that names no countable object."""
    text = question.lower()
    for label in ("car", "pedestrian", "traffic_light"):
        if _NAMES[label][1] in text:
            return label
    return None


def make_questions(truth: SceneTruth, rng: np.random.Generator, *, low: int = 4, high: int = 8,
                   types: Sequence[str] = QUESTION_TYPES,
                   rates: Mapping[tuple[str, str], Mapping[str, float]] | None = None,
                   drawn: list[tuple[str, str, str]] | None = None) -> tuple[Question, ...]:
    """Draw up to ``low``..``high`` distinct questions about one clip, answers balanced per subject.

    Args:
        truth: what the clip contains.
        rng: the random generator (consumed).
        low, high: how many questions to aim for; fewer come back when the clip supports fewer
            (a clip that shows no road has no side or motion question, and at most one yes/no
            question is asked) or when the balance turns its over-frequent answers away.
        types: the question types to draw from.
        rates: the answer rates to balance with (default :data:`ANSWER_RATES`).
        drawn: if given, every (type, subject, answer) drawn is appended to it, kept or not (what
            :func:`measure_answer_rates` counts).

    Returns:
        The questions, each with its answer and type.
    """
    table = ANSWER_RATES if rates is None else rates
    want = int(rng.integers(low, high + 1))
    kinds = list(types)
    weights = np.array([TYPE_WEIGHTS.get(k, 1.0) for k in kinds])
    weights /= weights.sum()
    out: list[Question] = []
    seen: set[tuple[str, str]] = set()
    for _ in range(12 * high):
        if len(out) >= want:
            break
        kind = str(kinds[rng.choice(len(kinds), p=weights)])
        cand = _candidate(kind, truth, rng)
        if cand is None:
            continue
        subject, text, answer = cand
        p = table[(kind, subject)]
        if (kind, subject) in seen or (kind in YES_NO_TYPES
                                       and sum(q.type in YES_NO_TYPES for q in out) >= MAX_YES_NO_PER_CLIP):
            continue
        seen.add((kind, subject))  # one draw per subject and clip, kept or not: a retry would undo the balance
        if drawn is not None:
            drawn.append((kind, subject, answer))
        if answer not in p or rng.random() >= min(p.values()) / p[answer]:
            continue  # an over-frequent answer for this subject: kept only as often as the rarest one
        out.append(Question(text, answer, kind))
    return tuple(out)


def measure_answer_rates(truths: Sequence[SceneTruth], *, seed: int = 0, rounds: int = 10, repeats: int = 2,
                         damping: float = 0.0, types: Sequence[str] = QUESTION_TYPES
                         ) -> dict[tuple[str, str], dict[str, float]]:
    """The answer rates as :func:`make_questions` meets them: per (type, subject), how often each
    answer of :data:`ANSWER_RATES` comes up among the subjects it draws over ``truths``.

    A clip that supports fewer question types draws more of the others before it has enough
    questions, so the answers a draw meets are not the scenes' own rates (a clip without a road,
    which has no car and no siren, is asked more "is there a car?"). The draws depend on the rates
    they are balanced with, so this starts from :data:`ANSWER_RATES` and moves toward the rates the
    draws meet, ``rounds`` times, each round drawing every clip ``repeats`` times with fresh random
    streams; ``damping`` is the share of the old rates kept per round. The iteration converges
    slowly where a rarer answer's rejections make a clip draw that subject's type again;
    ``types`` as :func:`make_questions` is given them.

    Returns:
        Rates in the layout of :data:`ANSWER_RATES` (the answers it lists; each sums to 1).
    """
    rates: dict[tuple[str, str], dict[str, float]] = {k: dict(v) for k, v in ANSWER_RATES.items()}
    for r in range(rounds):
        drawn: list[tuple[str, str, str]] = []
        for j in range(repeats):
            for i, truth in enumerate(truths):
                make_questions(truth, np.random.default_rng([seed, r, j, i]), rates=rates, drawn=drawn, types=types)
        seen: dict[tuple[str, str], dict[str, int]] = {k: dict.fromkeys(v, 0) for k, v in rates.items()}
        for kind, subject, answer in drawn:
            if answer in seen[(kind, subject)]:
                seen[(kind, subject)][answer] += 1
        for key, c in seen.items():
            n = sum(c.values())
            if n and min(c.values()) > 0:
                rates[key] = {a: damping * rates[key][a] + (1.0 - damping) * v / n for a, v in c.items()}
    return rates


def question_stream(seed: int, index: int, draw: int = 0) -> np.random.Generator:
    """The random stream the questions of generated clip ``index`` of data set ``seed`` are drawn from:
    its own, so adding or redrawing questions changes no pixel or sample of the clip. ``draw`` > 0
    gives further independent streams, for more questions per training clip."""
    return np.random.default_rng([seed, index, 1] if draw == 0 else [seed, index, 1, draw])


def questions_for_sample(sample: Sample, rng: np.random.Generator | None = None, *,
                         draws: int = 1) -> tuple[Question, ...]:
    """Questions about a generated sample (see :func:`make_questions`); () without the truth.

    Args:
        sample: a sample the generator wrote (its ``synth`` details carry the truth).
        rng: the random stream; default: the clip's own (:func:`question_stream` of its ``synth``
            seed and index), so the same clip gets the same questions under the same rules.
        draws: without ``rng``, how many independent draws to make from the clip's streams
            (:func:`question_stream` draws 0, 1, ...); their questions are joined, each text once.
            One draw is the mix a test split has; more give a training split more questions per
            clip, each draw balanced as one is.
    """
    truth = truth_from_sample(sample)
    if truth is None:
        return ()
    return make_questions(truth, rng) if rng is not None else _own_questions(sample, truth, draws)


def _own_questions(sample: Sample, truth: SceneTruth, draws: int) -> tuple[Question, ...]:
    """``draws`` draws from the clip's own streams, joined (each text once)."""
    synth = sample.meta["synth"]
    if not isinstance(synth.get("seed"), int) or not isinstance(synth.get("index"), int):
        raise DataError(f"sample {sample.id!r}: its 'synth' details lack the integer 'seed' and 'index' "
                        "that its questions are drawn with")
    out: dict[str, Question] = {}
    for draw in range(draws):
        for q in make_questions(truth, question_stream(synth["seed"], synth["index"], draw)):
            out.setdefault(q.question, q)
    return tuple(out.values())


def redraw_questions(samples: Sequence[Sample], *, draws: int = 1) -> tuple[list[Sample], int]:
    """The samples with their questions drawn again under the current rules, from each clip's own streams.

    Samples without the generator's truth (a user's own clips) keep their questions unchanged.

    Args:
        samples: the samples.
        draws: independent draws per clip, joined (see :func:`questions_for_sample`).

    Returns:
        The samples, in order, and how many of them were redrawn.

    Raises:
        DataError: a generated sample without the seed and index its questions are drawn with.
        InputError: ``draws`` is not a positive integer.
    """
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise InputError(f"draws must be a positive integer, got {draws!r}")
    out: list[Sample] = []
    redrawn = 0
    for s in samples:
        truth = truth_from_sample(s)
        if truth is None:
            out.append(s)
            continue
        out.append(replace(s, questions=_own_questions(s, truth, draws)))
        redrawn += 1
    return out, redrawn
