"""The event rules of the synthetic data set: which scene content gives which labels.

The generator first samples a :class:`SceneFlags` (the latent decisions: is a siren audible, is an
emergency vehicle with its lights ON in view, which distractors are present), then renders video
and audio that honour those flags. Labels are a pure function of the flags, so they can be checked
(and the statistics of the data set reasoned about) without rendering anything.

The event is decided by two cues, one per modality::

                        lights-on EV in view    no lights-on EV in view
    siren audible       emergency_ahead         emergency_behind
    no siren            lights_no_siren         none

The event is drawn uniformly over the four classes, so each cue alone splits the classes into two
pairs it cannot tell apart: the best audio-only or vision-only predictor is right half of the time,
and only the two cues together identify the event. Everything else (horn, speech, engine, cars,
pedestrians, traffic lights, emergency vehicles with their lights OFF) is drawn independently of the
event, so it carries no information about it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS

__all__ = [
    "SceneFlags",
    "event_from_cues",
    "cues_for_event",
    "audio_tags_for",
    "sample_flags",
    "P_HORN",
    "P_SPEECH",
    "P_ENGINE",
    "P_LIGHTS_OFF_EV",
    "MAX_CARS",
    "MAX_PEDESTRIANS",
    "MAX_TRAFFIC_LIGHTS",
]

# Distractor probabilities, independent of the event.
P_HORN = 0.25  # a horn sounds somewhere in the clip
P_SPEECH = 0.3  # people talk nearby (speech-like babble)
P_ENGINE = 0.5  # an idling/revving engine is close enough to hear
P_LIGHTS_OFF_EV = 0.3  # an emergency vehicle with its lights OFF is in view (parked, off duty)
MAX_CARS = 5  # ordinary cars in view: uniform 0..MAX_CARS
MAX_PEDESTRIANS = 3  # uniform 0..MAX_PEDESTRIANS
MAX_TRAFFIC_LIGHTS = 2  # uniform 0..MAX_TRAFFIC_LIGHTS

_RULES: dict[tuple[bool, bool], str] = {
    # (siren audible, lights-on emergency vehicle in view) -> event
    (False, False): "none",
    (True, True): "emergency_ahead",
    (True, False): "emergency_behind",
    (False, True): "lights_no_siren",
}
_CUES: dict[str, tuple[bool, bool]] = {event: cues for cues, event in _RULES.items()}
assert set(_RULES.values()) == set(EVENTS), "the rules must cover every event in sdk.spec.EVENTS"


@dataclass(frozen=True)
class SceneFlags:
    """The latent decisions for one sample; the renderers make the media agree with them."""

    event: str  # one of EVENTS
    siren: bool  # a siren is audible in the clip
    lights_on_ev: bool  # an emergency vehicle with its lights ON is in view (never mostly occluded)
    lights_off_ev: bool  # a distractor: an emergency vehicle with its lights OFF is in view
    horn: bool
    speech: bool
    engine: bool
    cars: int  # ordinary cars asked for (dropped if no free spot; some end up hidden or off-screen)
    pedestrians: int
    traffic_lights: int


def event_from_cues(siren: bool, lights_on_ev: bool) -> str:
    """The fusion rule: the event from the two cues.

    Args:
        siren: whether a siren is audible.
        lights_on_ev: whether an emergency vehicle with its lights ON is in view.

    Returns:
        One of ``EVENTS``.
    """
    return _RULES[(bool(siren), bool(lights_on_ev))]


def cues_for_event(event: str) -> tuple[bool, bool]:
    """The inverse rule: which cues a scene of this event must show.

    Args:
        event: one of ``EVENTS``.

    Raises:
        ValueError: the event is not one of ``EVENTS``.

    Returns:
        ``(siren, lights_on_ev)``.
    """
    try:
        return _CUES[event]
    except KeyError:
        raise ValueError(f"unknown event {event!r}; expected one of {', '.join(EVENTS)}") from None


def audio_tags_for(flags: SceneFlags) -> tuple[str, ...]:
    """The multi-label audio tags of a scene, in ``AUDIO_TAGS`` order.

    Road/tyre noise is always present and has no tag.
    """
    present = {"siren": flags.siren, "horn": flags.horn, "speech": flags.speech, "engine": flags.engine}
    return tuple(tag for tag in AUDIO_TAGS if present[tag])


def sample_flags(rng: np.random.Generator) -> SceneFlags:
    """Draw the latent decisions of one scene: the event uniformly, then independent distractors.

    Args:
        rng: the sample's random generator (consumed).

    Returns:
        A :class:`SceneFlags` whose ``event == event_from_cues(siren, lights_on_ev)``.
    """
    event = EVENTS[int(rng.integers(len(EVENTS)))]
    siren, lights_on_ev = cues_for_event(event)
    u = rng.random(4)
    return SceneFlags(
        event=event,
        siren=siren,
        lights_on_ev=lights_on_ev,
        lights_off_ev=bool(u[0] < P_LIGHTS_OFF_EV),
        horn=bool(u[1] < P_HORN),
        speech=bool(u[2] < P_SPEECH),
        engine=bool(u[3] < P_ENGINE),
        cars=int(rng.integers(MAX_CARS + 1)),
        pedestrians=int(rng.integers(MAX_PEDESTRIANS + 1)),
        traffic_lights=int(rng.integers(MAX_TRAFFIC_LIGHTS + 1)),
    )
