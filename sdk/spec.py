"""The model contract: label vocabularies, input/output names and default input geometry.

This module is the one place where training, export and the runtime agree on what a FusionEdge
perception model consumes and produces. Training writes these values into every bundle's
``manifest.json``; the runtime reads them back from the manifest (never from here), so a bundle
stays self-describing even if these defaults change later.

Inputs (all float32, batch first, batch dynamic):

``video``     (B, T, 3, H, W)  T frames of the clip, RGB, normalized with ``mean``/``std``
``audio``     (B, S)           mono waveform at ``sample_rate`` Hz, S = clip_seconds * sample_rate,
                               values in [-1, 1]
``presence``  (B, 2)           1.0 where the modality is present, 0.0 where the sensor is missing
                               (order: video, audio); a missing modality's tensor is all zeros

Outputs (float32):

``event_logits``      (B, E)           one logit per event class (softmax in post-processing)
``audio_tag_logits``  (B, A)           one logit per audio tag (sigmoid, multi-label)
``det_heatmap``       (B, C, H/s, W/s) CenterNet class-centre logits, s = ``output_stride``
``det_size``          (B, 2, H/s, W/s) box width, height in model-input pixels
``det_offset``        (B, 2, H/s, W/s) sub-cell centre offset in heatmap cells, x then y

Boxes refer to the **last frame** of the clip (the "current" frame a vehicle acts on).

A task without events, audio tags or boxes (an empty vocabulary in the bundle's ``labels``) has no
such head and no such output (``fusion_output_names``). A model that reads one modality
(``bundle_modalities``) still takes all three inputs, but needs only its own at run time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from fusionedge.sdk.errors import BundleError

if TYPE_CHECKING:
    from fusionedge.sdk.bundle import Bundle

__all__ = [
    "AUDIO_TAGS",
    "EVENTS",
    "INPUT_NAMES",
    "MODALITIES",
    "OBJECTS",
    "OUTPUT_DECODES",
    "OUTPUT_NAMES",
    "OUTPUT_VOCABULARY",
    "InputGeometry",
    "bundle_modalities",
    "check_fusion_contract",
    "fusion_output_names",
]

#: Event classes. The rules that make each one are in training/synth/README.md; two of them
#: (emergency_ahead vs emergency_behind, emergency_ahead vs lights_no_siren) can only be told
#: apart by combining what is seen with what is heard.
EVENTS: tuple[str, ...] = ("none", "emergency_ahead", "emergency_behind", "lights_no_siren")

#: Multi-label audio tags.
AUDIO_TAGS: tuple[str, ...] = ("siren", "horn", "speech", "engine")

#: Object classes for detection.
OBJECTS: tuple[str, ...] = ("car", "pedestrian", "traffic_light", "emergency_vehicle")

#: Modalities in the order of the ``presence`` input.
MODALITIES: tuple[str, ...] = ("video", "audio")

INPUT_NAMES: tuple[str, ...] = ("video", "audio", "presence")
OUTPUT_NAMES: tuple[str, ...] = (
    "event_logits",
    "audio_tag_logits",
    "det_heatmap",
    "det_size",
    "det_offset",
)
#: The vocabulary whose head makes each output: a task with an empty one has no such output.
OUTPUT_VOCABULARY: dict[str, str] = {
    "event_logits": "events",
    "audio_tag_logits": "audio_tags",
    "det_heatmap": "objects",
    "det_size": "objects",
    "det_offset": "objects",
}
#: How the runtime decodes each output; a bundle's manifest must declare exactly this.
OUTPUT_DECODES: dict[str, str] = {
    "event_logits": "softmax",
    "audio_tag_logits": "sigmoid",
    "det_heatmap": "centernet-heatmap",
    "det_size": "centernet-size",
    "det_offset": "centernet-offset",
}


@dataclass(frozen=True)
class InputGeometry:
    """What one model step sees. Units in the comments; defaults are the quickstart's."""

    clip_frames: int = 4  # T, frames sampled evenly over the clip window
    height: int = 96  # model-input pixels
    width: int = 160  # model-input pixels
    clip_seconds: float = 1.0  # length of the window that frames and audio are taken from
    sample_rate: int = 16000  # Hz, of the audio input
    output_stride: int = 4  # model-input pixels per detection heatmap cell
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, on [0, 1] pixel values
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # RGB
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def audio_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def heatmap_size(self) -> tuple[int, int]:
        return self.height // self.output_stride, self.width // self.output_stride

    def problems(self) -> list[str]:
        """Every value no model can take, as ``name=value (need ...)``; empty when the geometry is usable.

        These are the limits of the contract itself (a frame, an audio window and a heatmap cell must
        exist); a model may need more (``ModelConfig`` checks its own, e.g. sizes divisible by 16).
        """
        bad = []
        for name in ("clip_frames", "height", "width", "sample_rate", "output_stride"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad.append(f"{name}={v!r} (need an integer >= 1)")
        if bad:
            return bad
        if not (isinstance(self.clip_seconds, (int, float)) and math.isfinite(self.clip_seconds)
                and self.clip_seconds > 0):
            bad.append(f"clip_seconds={self.clip_seconds!r} (need a number > 0)")
        elif self.audio_samples < 1:
            bad.append(f"clip_seconds={self.clip_seconds} at sample_rate={self.sample_rate} "
                       "(need >= 1 audio sample)")
        if self.height % self.output_stride or self.width % self.output_stride:
            bad.append(f"input size {self.width}x{self.height} (need width and height divisible by "
                       f"output_stride={self.output_stride})")
        return bad

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> InputGeometry:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "extra"}
        for k in ("mean", "std"):
            if k in known:
                known[k] = tuple(float(v) for v in known[k])
        return cls(**known)


def bundle_modalities(manifest: dict) -> tuple[str, ...]:
    """The modalities a fusion bundle's model reads, in ``MODALITIES`` order.

    A bundle written since the field exists says so in ``manifest["modalities"]``; an older one in
    its source model config (``source.model_config.modalities``); a bundle that says neither reads
    both. A model that reads one modality needs that input at run time and never asks for the other.

    Raises:
        BundleError: the field is not a non-empty list of known, distinct modalities.
    """
    where = "modalities"
    value = manifest.get("modalities")
    if value is None:
        value = ((manifest.get("source") or {}).get("model_config") or {}).get("modalities")
        where = "source.model_config.modalities"
    if value is None:
        return MODALITIES
    if (not isinstance(value, list) or not value or len(set(map(str, value))) != len(value)
            or not set(value) <= set(MODALITIES)):
        raise BundleError(f"manifest.json: field {where!r}: expected a non-empty list of distinct modalities "
                          f"from {list(MODALITIES)}, got {value!r}")
    return tuple(m for m in MODALITIES if m in value)


def fusion_output_names(labels: dict) -> tuple[str, ...]:
    """The outputs a fusion model with these vocabularies has, in ``OUTPUT_NAMES`` order.

    A task without events, audio tags or object classes (an empty vocabulary) has no such head:
    no ``event_logits``, no ``audio_tag_logits``, or none of the three detection outputs.
    """
    return tuple(name for name in OUTPUT_NAMES if labels.get(OUTPUT_VOCABULARY[name]))


def check_fusion_contract(bundle: Bundle) -> None:
    """Check that a bundle's manifest describes a model with this contract's inputs and outputs.

    Every input must be there, and the output of every head the labels have (an empty vocabulary:
    no such output, and none may be declared) with the declared decode; every shape must follow
    from the bundle's own geometry and labels.

    Raises:
        BundleError: naming the first field that disagrees, e.g.
            ``manifest.json: field 'outputs[2].shape': expected [...] from the labels and geometry``.
    """
    inputs = {e["name"]: (i, e) for i, e in enumerate(bundle.inputs)}
    outputs = {e["name"]: (i, e) for i, e in enumerate(bundle.outputs)}
    labels = bundle.labels
    for name in INPUT_NAMES:
        if name not in inputs:
            raise BundleError(
                f"manifest.json: field 'inputs': no input named {name!r} (has {', '.join(inputs)})"
            )
    expected = fusion_output_names(labels)
    if not expected:
        raise BundleError("manifest.json: field 'labels': every vocabulary is empty; a model needs a head")
    for name, decode in OUTPUT_DECODES.items():
        if name not in expected:
            if name in outputs:
                raise BundleError(f"manifest.json: field 'outputs[{outputs[name][0]}]': {name} without "
                                  f"labels.{OUTPUT_VOCABULARY[name]}")
            continue
        if name not in outputs:
            raise BundleError(
                f"manifest.json: field 'outputs': no output named {name!r} (has {', '.join(outputs)})"
            )
        i, entry = outputs[name]
        if entry["decode"] != decode:
            raise BundleError(f"manifest.json: field 'outputs[{i}].decode': expected {decode!r} for {name}")
    g = bundle.geometry
    h, w = g.heatmap_size
    expect_in = {
        "video": ["batch", g.clip_frames, 3, g.height, g.width],
        "audio": ["batch", g.audio_samples],
        "presence": ["batch", 2],
    }
    for name, shape in expect_in.items():
        i, entry = inputs[name]
        if list(entry["shape"]) != shape:
            raise BundleError(
                f"manifest.json: field 'inputs[{i}].shape': expected {shape} from the geometry, "
                f"got {entry['shape']}"
            )
    expect_out = {
        "event_logits": ["batch", len(labels["events"])],
        "audio_tag_logits": ["batch", len(labels["audio_tags"])],
        "det_heatmap": ["batch", len(labels["objects"]), h, w],
        "det_size": ["batch", 2, h, w],
        "det_offset": ["batch", 2, h, w],
    }
    for name in expected:
        i, entry = outputs[name]
        if list(entry["shape"]) != expect_out[name]:
            raise BundleError(
                f"manifest.json: field 'outputs[{i}].shape': expected {expect_out[name]} from the labels and "
                f"geometry, got {entry['shape']}"
            )
    bundle_modalities(bundle.manifest)
