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
"""

from __future__ import annotations

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
    "InputGeometry",
    "check_fusion_contract",
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


def check_fusion_contract(bundle: Bundle) -> None:
    """Check that a bundle's manifest describes a model with this contract's inputs and outputs.

    Every name above must be there with the declared decode, and every shape must follow from the
    bundle's own geometry and labels.

    Raises:
        BundleError: naming the first field that disagrees, e.g.
            ``manifest.json: field 'outputs[2].shape': expected [...] from the labels and geometry``.
    """
    inputs = {e["name"]: (i, e) for i, e in enumerate(bundle.inputs)}
    outputs = {e["name"]: (i, e) for i, e in enumerate(bundle.outputs)}
    for name in INPUT_NAMES:
        if name not in inputs:
            raise BundleError(
                f"manifest.json: field 'inputs': no input named {name!r} (has {', '.join(inputs)})"
            )
    for name, decode in OUTPUT_DECODES.items():
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
    labels = bundle.labels
    expect_out = {
        "event_logits": ["batch", len(labels["events"])],
        "audio_tag_logits": ["batch", len(labels["audio_tags"])],
        "det_heatmap": ["batch", len(labels["objects"]), h, w],
        "det_size": ["batch", 2, h, w],
        "det_offset": ["batch", 2, h, w],
    }
    for name, shape in expect_out.items():
        i, entry = outputs[name]
        if list(entry["shape"]) != shape:
            raise BundleError(
                f"manifest.json: field 'outputs[{i}].shape': expected {shape} from the labels and geometry, "
                f"got {entry['shape']}"
            )
    if not labels["events"]:
        raise BundleError("manifest.json: field 'labels.events': expected at least one event class")
