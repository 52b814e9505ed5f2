"""Synthetic multimodal driving scenes: camera clips, microphone audio and labels, made to need fusion.

The event of a clip depends on a visual cue (an emergency vehicle with its lights ON in view) and an
audio cue (a siren), so neither modality alone can tell the four events apart; the rules are in
:mod:`.rules` and documented in ``training/synth/README.md``. Sounds also follow what is seen
(siren level and envelope <-> the lights-ON vehicle's distance and motion, engine <-> a near car,
speech <-> a near pedestrian), in ways that do not tell the event to either modality alone.

::

    from fusionedge.training.synth import generate_dataset
    manifest = generate_dataset("data/synth", samples=2500, seed=0)

Uses numpy, OpenCV and the standard library only (no torch), so it runs on the runtime install.
"""

from .generate import DatasetExistsError, SynthConfig, SynthSample, generate_dataset, make_sample
from .rules import SceneFlags, audio_tags_for, cues_for_event, event_from_cues, event_probabilities, sample_flags

__all__ = [
    "generate_dataset",
    "make_sample",
    "SynthConfig",
    "SynthSample",
    "DatasetExistsError",
    "SceneFlags",
    "sample_flags",
    "event_probabilities",
    "event_from_cues",
    "cues_for_event",
    "audio_tags_for",
]
