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
and only the two cues together identify the event. (``cue_agreement`` other than 0.5 makes the cues
agree more or less often than chance, for unlabelled pools closer to real traffic; see
:func:`event_probabilities`.) Everything else (horn, speech, engine, cars, pedestrians, traffic
lights, emergency vehicles with their lights OFF) is drawn independently of the event, so it carries
no information about it.

Audio-visual correspondences (sounds come from things you see), none of which tells the event to one
modality alone:

* **Siren source distance and motion.** Whenever an emergency vehicle is involved (every event but
  ``none``) a distance ``ev_distance_m`` (mid-clip depth, uniform in :data:`EV_DISTANCE_M`) and a
  motion ``ev_motion`` (approach / recede / steady, each 1/3, with a signed depth change
  ``ev_depth_change_m``) are drawn from ONE distribution, whatever the event. In
  ``emergency_ahead`` the lights-ON vehicle is rendered at that depth and moves that way, and the
  siren's level falls with its log distance and its envelope follows the motion, so audio and video
  agree. In ``emergency_behind`` the same draw is the unseen siren source's pseudo-distance/motion,
  so the siren's level and envelope have the same distribution as ahead (audio alone cannot tell
  ahead from behind); in ``lights_no_siren`` it places the silent lights-ON vehicle, so the vehicle's
  distance and motion have the same distribution as ahead (video alone cannot tell them apart).
* **Engine <-> near car.** ``engine`` iff one extra car is near (``near_car_m`` in
  :data:`NEAR_CAR_M`, in a lane, visible); the ``cars`` other cars stay beyond
  :data:`FAR_CAR_MIN_M`. The engine level falls with ``near_car_m``.
* **Speech <-> near pedestrian.** ``speech`` iff one extra pedestrian is near
  (``near_pedestrian_m`` in :data:`NEAR_PEDESTRIAN_M`, visible); the ``pedestrians`` others stay
  beyond :data:`FAR_PEDESTRIAN_MIN_M`. The speech level falls with ``near_pedestrian_m``.

Engine and speech are independent of the event, and the distance/motion draw has the same
distribution in every event that has it, so the Bayes-optimal single-modality predictors stay at
chance between the paired events.

The open world (negatives), drawn after all of the above so a seed keeps its event and sources:

* an untagged sound (``clutter_sound``, one of :data:`CLUTTER_SOUNDS`: tones, beeps, chimes,
  ringtones, music, wind, rain ...), a cabin voice (``cabin_voice``: radio, phone or passenger, which
  carries the ``speech`` tag because a tag must be decidable from the sound alone), decoy lights and
  a quiet ambience, each independent of the event;
* **silence** (``ambience == "silent"``) only where nothing at all is heard, which implies no siren:
  drawn after the sources, at the same rate for ``none`` and ``lights_no_siren``;
* **frames without a road** (``non_road``) only where nothing must be seen (no lights-ON vehicle, no
  near car, no talking pedestrian): at the same rate for ``none`` and ``emergency_behind``.

So silence tells audio only what the siren cue already does (no siren), and a non-road view tells
video only what the lights cue already does (no lights-ON vehicle): each modality alone stays at
chance between the paired events.
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
    "event_probabilities",
    "UNIFORM_CUE_AGREEMENT",
    "P_HORN",
    "P_SPEECH",
    "P_ENGINE",
    "P_LIGHTS_OFF_EV",
    "MAX_CARS",
    "MAX_PEDESTRIANS",
    "MAX_TRAFFIC_LIGHTS",
    "EV_MOTIONS",
    "EV_DISTANCE_M",
    "EV_DEPTH_CHANGE_M",
    "EV_STEADY_CHANGE_M",
    "NEAR_CAR_M",
    "FAR_CAR_MIN_M",
    "NEAR_PEDESTRIAN_M",
    "FAR_PEDESTRIAN_MIN_M",
    "AMBIENCES",
    "P_QUIET",
    "P_SILENT",
    "P_CABIN_VOICE",
    "P_CLUTTER_SOUND",
    "CLUTTER_SOUNDS",
    "P_DECOY_LIGHTS",
    "P_NON_ROAD",
]

# Distractor probabilities, independent of the event.
P_HORN = 0.25  # a horn sounds somewhere in the clip
P_SPEECH = 0.3  # people talk nearby (speech-like babble)
P_ENGINE = 0.5  # an idling/revving engine is close enough to hear
P_LIGHTS_OFF_EV = 0.3  # an emergency vehicle with its lights OFF is in view (parked, off duty)
UNIFORM_CUE_AGREEMENT = 0.5  # P(siren == lights-ON EV in view) when the four events are equally likely
MAX_CARS = 5  # ordinary cars in view: uniform 0..MAX_CARS
MAX_PEDESTRIANS = 3  # uniform 0..MAX_PEDESTRIANS
MAX_TRAFFIC_LIGHTS = 2  # uniform 0..MAX_TRAFFIC_LIGHTS

# Audio-visual correspondences (all in metres of depth ahead of the camera; see the module docstring).
EV_MOTIONS: tuple[str, ...] = ("approach", "recede", "steady")  # equally likely
EV_DISTANCE_M = (10.5, 22.5)  # mid-clip depth; with the depth change the vehicle stays within 9-24 m
EV_DEPTH_CHANGE_M = (1.0, 3.0)  # |depth change over the clip| when approaching or receding
EV_STEADY_CHANGE_M = 0.3  # |depth change| of a steady vehicle is below this
NEAR_CAR_M = (5.0, 12.0)  # mid-clip depth of the engine's car (iff ``engine``)
FAR_CAR_MIN_M = 14.0  # every other ordinary car stays at least this far during the whole clip
NEAR_PEDESTRIAN_M = (6.0, 15.0)  # mid-clip depth of the talking pedestrian (iff ``speech``)
FAR_PEDESTRIAN_MIN_M = 18.0  # every other pedestrian stays at least this far during the whole clip

# The open world: what a road also sounds and looks like, none of it a cue (see the module docstring).
AMBIENCES: tuple[str, ...] = ("road", "quiet", "silent")
P_QUIET = 0.2  # the road noise is far below its usual level: a stopped car, a quiet cabin (any event)
P_SILENT = 0.7  # silence or faint hiss, where nothing at all is audible (no siren, no other source)
P_CABIN_VOICE = 0.15  # a voice from the radio, a phone or a passenger (``speech`` tag, no pedestrian)
P_CLUTTER_SOUND = 0.5  # one untagged sound: a tone, beeps, a ringtone, a chime, music, wind, rain ...
CLUTTER_SOUNDS: tuple[str, ...] = (
    "tone", "beeps", "reversing_alarm", "seatbelt_chime", "turn_signal", "ringtone", "alarm_clock",
    "notification", "melody", "chord", "drums", "wind", "rain", "rough_road",
)
P_DECOY_LIGHTS = 0.5  # lights that flash or glow and are not an emergency light bar (any event)
P_NON_ROAD = 0.6  # the camera shows no road at all, where no vehicle or pedestrian must be in view

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
    cars: int  # other ordinary cars asked for, all >= FAR_CAR_MIN_M (dropped if no free spot; some hidden)
    pedestrians: int  # other pedestrians asked for, all >= FAR_PEDESTRIAN_MIN_M
    traffic_lights: int
    # Siren source / lights-ON vehicle, same distribution in every event but ``none`` (None there):
    ev_distance_m: float | None = None  # mid-clip depth (a pseudo-distance when the siren is behind)
    ev_motion: str | None = None  # one of EV_MOTIONS
    ev_depth_change_m: float | None = None  # depth at the end minus at the start (< 0: approaching)
    near_car_m: float | None = None  # mid-clip depth of the near car, iff ``engine``
    near_pedestrian_m: float | None = None  # mid-clip depth of the near pedestrian, iff ``speech``
    # The open world (negatives), drawn after everything above:
    cabin_voice: bool = False  # a radio/phone/passenger voice: ``speech`` tag without a pedestrian
    clutter_sound: str | None = None  # one of CLUTTER_SOUNDS (no tag), or None
    ambience: str = "road"  # one of AMBIENCES
    decoy_lights: bool = False  # flashing or glowing lights that are not an emergency light bar
    non_road: bool = False  # the frames show no road (a screen, a test pattern, noise, a flat colour)


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
    speech = flags.speech or flags.cabin_voice  # any voice, a near pedestrian's or the cabin's
    present = {"siren": flags.siren, "horn": flags.horn, "speech": speech, "engine": flags.engine}
    return tuple(tag for tag in AUDIO_TAGS if present[tag])


def event_probabilities(cue_agreement: float = UNIFORM_CUE_AGREEMENT) -> dict[str, float]:
    """The event distribution in which the two cues agree with probability ``cue_agreement``.

    ``cue_agreement`` is P(siren audible == a lights-ON emergency vehicle in view): ``emergency_ahead``
    and ``none`` share it equally, ``emergency_behind`` and ``lights_no_siren`` share the rest. At 0.5
    (the default, what the labelled data sets use) the four events are equally likely and each cue
    alone says nothing about the other. Higher values are closer to real traffic, where a flashing
    light bar and a siren mostly go together: an unlabelled pool drawn that way lets a sound teach
    what it co-occurs with in view (``training/pretrain.py`` records what that changes).

    Raises:
        ValueError: ``cue_agreement`` is not a number in [0, 1].
    """
    a = cue_agreement
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:
        raise ValueError(f"cue_agreement must be a number in [0, 1], got {cue_agreement!r}")
    probabilities = {}
    for event in EVENTS:
        siren, lights_on_ev = cues_for_event(event)
        probabilities[event] = (a if siren == lights_on_ev else 1.0 - a) / 2
    return probabilities


def sample_flags(rng: np.random.Generator, cue_agreement: float = UNIFORM_CUE_AGREEMENT) -> SceneFlags:
    """Draw the latent decisions of one scene: the event, then independent distractors.

    The source distance/motion and the near car/pedestrian distances are drawn for every scene (so
    the number of draws does not depend on the event) and kept only where they apply.

    Args:
        rng: the sample's random generator (consumed).
        cue_agreement: P(siren audible == lights-ON emergency vehicle in view), see
            :func:`event_probabilities`; 0.5 draws the event uniformly, exactly as before the option
            existed (a seed gives the same scene).

    Returns:
        A :class:`SceneFlags` whose ``event == event_from_cues(siren, lights_on_ev)``.

    Raises:
        ValueError: ``cue_agreement`` is out of range.
    """
    probabilities = event_probabilities(cue_agreement)
    if cue_agreement == UNIFORM_CUE_AGREEMENT:
        event = EVENTS[int(rng.integers(len(EVENTS)))]
    else:
        event = EVENTS[int(rng.choice(len(EVENTS), p=[probabilities[e] for e in EVENTS]))]
    siren, lights_on_ev = cues_for_event(event)
    u = rng.random(4)
    cars = int(rng.integers(MAX_CARS + 1))
    pedestrians = int(rng.integers(MAX_PEDESTRIANS + 1))
    traffic_lights = int(rng.integers(MAX_TRAFFIC_LIGHTS + 1))
    # drawn after the old fields, so a seed keeps giving the same event and distractors as before
    ev_distance = float(rng.uniform(*EV_DISTANCE_M))
    motion = EV_MOTIONS[int(rng.integers(len(EV_MOTIONS)))]
    magnitude = float(rng.uniform(*EV_DEPTH_CHANGE_M))
    steady = float(rng.uniform(-EV_STEADY_CHANGE_M, EV_STEADY_CHANGE_M))
    change = {"approach": -magnitude, "recede": magnitude, "steady": steady}[motion]
    near_car = float(rng.uniform(*NEAR_CAR_M))
    near_ped = float(rng.uniform(*NEAR_PEDESTRIAN_M))
    engine, speech = bool(u[3] < P_ENGINE), bool(u[2] < P_SPEECH)
    ev = siren or lights_on_ev
    # the open world, drawn after the old fields (a seed keeps its event, distractors and latents)
    w = rng.random(6)
    cabin_voice = bool(w[0] < P_CABIN_VOICE)
    clutter = CLUTTER_SOUNDS[int(rng.integers(len(CLUTTER_SOUNDS)))] if w[1] < P_CLUTTER_SOUND else None
    horn = bool(u[1] < P_HORN)
    nothing_heard = not (siren or horn or speech or engine or cabin_voice or clutter)
    if nothing_heard and w[2] < P_SILENT:
        ambience = "silent"
    else:
        ambience = "quiet" if w[3] < P_QUIET else "road"
    non_road = not (lights_on_ev or engine or speech) and bool(w[4] < P_NON_ROAD)
    return SceneFlags(
        event=event,
        siren=siren,
        lights_on_ev=lights_on_ev,
        lights_off_ev=bool(u[0] < P_LIGHTS_OFF_EV),
        horn=horn,
        speech=speech,
        engine=engine,
        cars=cars,
        pedestrians=pedestrians,
        traffic_lights=traffic_lights,
        ev_distance_m=ev_distance if ev else None,
        ev_motion=motion if ev else None,
        ev_depth_change_m=change if ev else None,
        near_car_m=near_car if engine else None,
        near_pedestrian_m=near_ped if speech else None,
        cabin_voice=cabin_voice,
        clutter_sound=clutter,
        ambience=ambience,
        decoy_lights=bool(w[5] < P_DECOY_LIGHTS) and not non_road,
        non_road=non_road,
    )
