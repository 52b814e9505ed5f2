"""The FusionEdge multimodal model and its configuration.

``MultimodalModel(config)`` consumes the three inputs of the model contract (``sdk/spec.py``) and
returns its outputs as a tuple in ``OUTPUT_NAMES`` order (``model.output_names``)::

    video (B,T,3,H,W) ─► ClipEncoder ──tokens──┐
                          │ last-frame s4 +     ├─► fusion (presence-masked) ─► EventHead ─► event_logits
                          │ s16 context         │
    audio (B,S) ─► log-mel ─► AudioEncoder ─────┘──────────────────────────► AudioTagHead ─► audio_tag_logits
                          └──────────────────────────────► CenterNetHead ─► det_heatmap, det_size, det_offset
    presence (B,2) ───────────────────────────────┘ (and into EventHead)

With ``fusion="aligned_attention"`` the clip encoder also hands per-frame tokens (B, T, Cv) to the
fusion, which relates each frame to the audio heard around its time (``ModelConfig.frame_times`` /
``audio_token_times``, constants of the geometry).

A model may use only one modality (``modalities=("video",)`` or ``("audio",)``), for comparisons:
it keeps the same inputs and outputs, but never reads the other modality's tensor (its presence
reads as 0 everywhere). Without video the detection outputs are a constant "no detection"
(``NoDetectionHead``: heatmap logits -20, nothing passes a threshold); without audio the audio-tag
logits are learned per-tag biases (``AudioTagPrior``). The ``fusion`` field applies only to two
modalities; one modality is pooled by ``SingleModalityFusion``.

A task without events, audio tags or boxes has no such head: ``num_events``, ``num_audio_tags`` or
``num_objects`` is 0, and the model has no such output (a task without events has no fusion
either). With all three, the model and its outputs are the contract's five.

Create models by name through ``fusionedge.training.models.create_model``; the config is a plain
dataclass, stored in every checkpoint as a dict (``ModelConfig.to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from fusionedge.sdk.errors import InputError
from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS, InputGeometry

from .encoders import AudioEncoder, ClipEncoder, audio_token_times, conv_out_len, frame_times
from .fusion import FUSIONS, SingleModalityFusion, build_fusion
from .heads import AudioTagHead, AudioTagPrior, CenterNetHead, EventHead, NoDetectionHead

__all__ = ["ModelConfig", "MultimodalModel", "ModelConfigError", "count_flops", "count_params", "MODALITIES"]

#: The modalities of the model contract, in presence-mask order.
MODALITIES: tuple[str, str] = ("video", "audio")


class ModelConfigError(InputError):
    """A model name is unknown or a model configuration value is invalid (the message names the field)."""


#: Integer fields that may be 0 (extra layers, or a task without that head); every other integer field needs at least 1.
_MAY_BE_ZERO = ("video_depth", "audio_depth", "fusion_layers", "num_events", "num_audio_tags", "num_objects")

#: The outputs of each head, and the label count that sizes it (0: the task has no such head).
HEAD_OUTPUTS: dict[str, tuple[str, ...]] = {"num_events": ("event_logits",), "num_audio_tags": ("audio_tag_logits",),
                                            "num_objects": ("det_heatmap", "det_size", "det_offset")}


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field_problem(name: str, kind: str, v: object) -> str | None:
    """What is wrong with one field's value given its annotated type, or None.

    Values that reach ``__post_init__`` come from the registry, from a checkpoint's JSON or from a
    user's ``--set FIELD=VALUE``: a wrong type must be named here, not fail later inside a layer.
    """
    if kind == "int":
        lo = 0 if name in _MAY_BE_ZERO else 1
        return None if _is_int(v) and v >= lo else f"{name} must be an integer >= {lo}, got {v!r}"
    if kind == "float":
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if name == "dropout":
            return None if ok and 0.0 <= v < 1.0 else f"{name} must be a number in [0, 1), got {v!r}"
        if name == "size_scale_px":
            return None if ok and v > 0 else f"{name} must be a number > 0, got {v!r}"
        return None if ok and v >= 0 else f"{name} must be a number >= 0, got {v!r}"
    if name == "fusion":
        return None if isinstance(v, str) and v in FUSIONS else f"fusion must be one of {sorted(FUSIONS)}, got {v!r}"
    if kind == "str":
        return None if isinstance(v, str) else f"{name} must be a string, got {v!r}"
    if kind == "bool":
        return None if isinstance(v, bool) else f"{name} must be true or false, got {v!r}"
    if kind.startswith("tuple[int"):
        n = kind.count("int")
        ok = isinstance(v, tuple) and len(v) == n and all(_is_int(x) and x >= 1 for x in v)
        return None if ok else f"{name} must be {n} integers >= 1, got {v!r}"
    if kind == "tuple[str, ...]":
        ok = isinstance(v, tuple) and all(isinstance(x, str) for x in v)
        return None if ok else f"{name} must be a list of strings, got {v!r}"
    return None


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes a model's architecture. Units in the comments."""

    # -- contract / geometry (must match the data the model is trained and run on)
    num_events: int = len(EVENTS)
    num_audio_tags: int = len(AUDIO_TAGS)
    num_objects: int = len(OBJECTS)
    clip_frames: int = 4  # T
    height: int = 96  # model-input pixels, multiple of 16
    width: int = 160  # model-input pixels, multiple of 16
    audio_samples: int = 16000  # S, samples per clip
    sample_rate: int = 16000  # Hz
    output_stride: int = 4  # model-input pixels per heatmap cell (only 4 is built)
    # -- audio front end
    n_fft: int = 400  # samples (25 ms at 16 kHz)
    hop_length: int = 160  # samples (10 ms)
    n_mels: int = 64  # mel bands, multiple of 8
    f_min: float = 0.0  # Hz
    f_max: float = 8000.0  # Hz, at most sample_rate / 2
    audio_pitch_motion: bool = False  # also feed the audio encoder the pitch's motion (encoders.AudioEncoder)
    # -- encoders
    # widths at stride 2, 4, 8, 16; stride 4 feeds the detection head (narrower costs mAP, see EXPERIMENTS.md)
    video_channels: tuple[int, int, int, int] = (16, 32, 48, 64)
    video_depth: int = 1  # extra 3×3 convolutions per video stage
    temporal_kernel: int = 3  # frames spanned by the temporal convolution
    audio_channels: tuple[int, int, int] = (16, 32, 64)  # widths of the audio CNN stages
    audio_depth: int = 1  # extra 3×3 convolutions in the last audio stage
    audio_dim: int = 64  # audio token width
    # -- fusion
    modalities: tuple[str, ...] = MODALITIES  # ("video", "audio"), ("video",) or ("audio",)
    fusion: str = "cross_attention"  # a key of fusion.FUSIONS
    fusion_dim: int = 64  # shared token width
    fusion_heads: int = 4
    fusion_layers: int = 1
    dropout: float = 0.1  # in fusion and the event head
    # -- heads
    head_hidden: int = 64  # hidden width of the event and audio-tag MLPs
    det_channels: int = 64  # width of the CenterNet head (32: worse boxes, see training/EXPERIMENTS.md)
    size_scale_px: float = 16.0  # model-input pixels; det_size = size_scale_px * exp(raw)

    def __post_init__(self) -> None:
        problems = [p for f in fields(self) if (p := _field_problem(f.name, str(f.type), getattr(self, f.name)))]
        if problems:  # the checks below assume the types are right
            raise ModelConfigError("invalid ModelConfig: " + "; ".join(problems))
        if self.height % 16 or self.width % 16 or self.height <= 0 or self.width <= 0:
            problems.append(f"input size {self.width}x{self.height} (width x height): height and width must be "
                            "positive multiples of 16, the video encoder's stride")
        if self.output_stride != 4:
            problems.append(f"output_stride must be 4 (the detection head is built at stride 4), "
                            f"got {self.output_stride}")
        if self.n_mels % 8 or self.n_mels <= 0:
            problems.append(f"n_mels must be a positive multiple of 8, got {self.n_mels}")
        if self.fusion_dim % self.fusion_heads:
            problems.append(f"fusion_dim {self.fusion_dim} must be divisible by fusion_heads {self.fusion_heads}")
        if self.fusion in FUSIONS and getattr(FUSIONS[self.fusion], "uses_frame_tokens", False) and self.fusion_dim % 2:
            problems.append(f"fusion {self.fusion!r} needs an even fusion_dim (time code), got {self.fusion_dim}")
        if len(self.video_channels) != 4 or len(self.audio_channels) != 3:
            problems.append("video_channels needs 4 widths and audio_channels 3")
        if min(self.clip_frames, self.audio_samples) < 1:
            problems.append("clip_frames and audio_samples must be >= 1")
        if max(self.num_events, self.num_audio_tags, self.num_objects) < 1:
            problems.append("a model needs at least one head: num_events, num_audio_tags or num_objects >= 1")
        if not 0.0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            problems.append(f"need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}")
        mods = tuple(self.modalities)
        if not mods or len(set(mods)) != len(mods) or not set(mods) <= set(MODALITIES):
            problems.append(f"modalities must be a non-empty subset of {MODALITIES}, got {mods!r}")
        else:
            object.__setattr__(self, "modalities", tuple(m for m in MODALITIES if m in mods))  # canonical order
        if problems:
            raise ModelConfigError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def output_names(self) -> tuple[str, ...]:
        """The outputs this model has, in ``OUTPUT_NAMES`` order: a head whose label count is 0 is absent."""
        return tuple(name for count, names in HEAD_OUTPUTS.items() if getattr(self, count) > 0 for name in names)

    @property
    def video_tokens(self) -> int:
        """Video tokens: one per stride-16 cell."""
        return (self.height // 16) * (self.width // 16)

    @property
    def audio_tokens(self) -> int:
        """Audio tokens: one per time step after three stride-2 stages over the log-mel frames."""
        return conv_out_len(conv_out_len(conv_out_len(1 + self.audio_samples // self.hop_length)))

    @property
    def clip_seconds(self) -> float:
        """Length of the clip window, s (``audio_samples / sample_rate``)."""
        return self.audio_samples / self.sample_rate

    @property
    def frame_times(self) -> tuple[float, ...]:
        """Time of each clip frame within the window, s (see ``encoders.frame_times``)."""
        return frame_times(self.clip_frames, self.clip_seconds)

    @property
    def audio_token_times(self) -> tuple[float, ...]:
        """Time of each audio token within the window, s (see ``encoders.audio_token_times``)."""
        return audio_token_times(self.audio_samples, self.sample_rate, self.n_fft, self.hop_length)

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of ``to_dict``.

        Raises:
            ModelConfigError: unknown keys or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelConfigError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def matches(self, geometry: InputGeometry) -> bool:
        """True when this model was built for ``geometry``'s input shapes."""
        return (self.clip_frames, self.height, self.width, self.audio_samples, self.sample_rate,
                self.output_stride) == (geometry.clip_frames, geometry.height, geometry.width,
                                        geometry.audio_samples, geometry.sample_rate, geometry.output_stride)


class MultimodalModel(nn.Module):
    """Video + audio + presence → (event_logits, audio_tag_logits, det_heatmap, det_size, det_offset), less absent heads.

    Args:
        config: the architecture; see ``ModelConfig``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        use_video, use_audio = "video" in c.modalities, "audio" in c.modalities
        # (1, 2): multiplies the presence mask, so an unused modality always reads as absent
        self.register_buffer("modality_mask", torch.tensor([[float(use_video), float(use_audio)]]), persistent=False)
        self.video_encoder = self.audio_encoder = None
        # a time-aligned fusion also reads per-frame video tokens (only built when used)
        self.uses_frame_tokens = use_video and use_audio and getattr(FUSIONS[c.fusion], "uses_frame_tokens", False)
        if use_video:
            self.video_encoder = ClipEncoder(c.video_channels, c.video_depth, c.clip_frames, c.temporal_kernel,
                                             frame_tokens=self.uses_frame_tokens)
        if use_audio:
            self.audio_encoder = AudioEncoder(c.audio_channels, c.audio_depth, c.audio_dim, c.sample_rate, c.n_fft,
                                              c.hop_length, c.n_mels, c.f_min, c.f_max, c.audio_pitch_motion)
        # the fusion feeds only the event head: a task without events has neither
        self.fusion = self.event_head = self.audio_tag_head = self.det_head = None
        if c.num_events and use_video and use_audio:
            times = dict(frame_times=c.frame_times, audio_times=c.audio_token_times) if self.uses_frame_tokens else {}
            self.fusion = build_fusion(c.fusion, video_dim=self.video_encoder.out_channels, audio_dim=c.audio_dim,
                                       video_tokens=c.video_tokens, audio_tokens=c.audio_tokens, dim=c.fusion_dim,
                                       heads=c.fusion_heads, layers=c.fusion_layers, dropout=c.dropout, **times)
        elif c.num_events and use_video:
            self.fusion = SingleModalityFusion(self.video_encoder.out_channels, c.video_tokens, c.fusion_dim, 0)
        elif c.num_events:
            self.fusion = SingleModalityFusion(c.audio_dim, c.audio_tokens, c.fusion_dim, 1)
        if c.num_events:
            self.event_head = EventHead(self.fusion.out_dim, c.head_hidden, c.num_events, c.dropout)
        if c.num_audio_tags and use_audio:
            self.audio_tag_head = AudioTagHead(c.audio_dim, c.head_hidden, c.num_audio_tags)
        elif c.num_audio_tags:
            self.audio_tag_head = AudioTagPrior(c.num_audio_tags)
        if c.num_objects and use_video:
            self.det_head = CenterNetHead(self.video_encoder.s4_channels, self.video_encoder.out_channels,
                                          c.det_channels, c.num_objects, c.size_scale_px)
        elif c.num_objects:
            hw = (c.height // c.output_stride, c.width // c.output_stride)
            self.det_head = NoDetectionHead(c.num_objects, hw, c.size_scale_px)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The names of ``forward``'s outputs, in order (``ModelConfig.output_names``)."""
        return self.config.output_names

    def forward(self, video: torch.Tensor, audio: torch.Tensor,
                presence: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs of the heads the model has, in ``output_names`` order (see the module docstring)."""
        out: dict[str, torch.Tensor] = {}
        if self.video_encoder is None or self.audio_encoder is None:
            presence = presence * self.modality_mask  # (B, 2)
        if self.video_encoder is None:  # audio only: the video tensor is never read
            a_tokens, _ = self.audio_encoder(audio)  # (B, Na, Ca)
            if self.event_head is not None:
                out["event_logits"] = self.event_head(self.fusion(a_tokens, presence), presence)  # (B, E)
            if self.audio_tag_head is not None:
                out["audio_tag_logits"] = self.audio_tag_head(a_tokens)  # (B, A)
            if self.det_head is not None:
                out.update(zip(HEAD_OUTPUTS["num_objects"], self.det_head(audio)))
            return tuple(out[name] for name in self.output_names)
        if self.uses_frame_tokens:
            v_tokens, _, last_s4, context, f_tokens = self.video_encoder.forward_with_frames(video)  # f: (B, T, Cv)
        else:
            v_tokens, _, last_s4, context = self.video_encoder(video)  # (B, Nv, Cv), (B, C4, h, w), (B, Cv, h16, w16)
        if self.det_head is not None:  # (B, C|2|2, H/4, W/4)
            out.update(zip(HEAD_OUTPUTS["num_objects"], self.det_head(last_s4, context)))
        if self.audio_encoder is None:  # video only: the audio tensor is never read
            if self.event_head is not None:
                out["event_logits"] = self.event_head(self.fusion(v_tokens, presence), presence)  # (B, E)
            if self.audio_tag_head is not None:
                out["audio_tag_logits"] = self.audio_tag_head(video)  # (B, A) learned priors
            return tuple(out[name] for name in self.output_names)
        a_tokens, _ = self.audio_encoder(audio)  # (B, Na, Ca)
        if self.event_head is not None:
            if self.uses_frame_tokens:
                fused = self.fusion(v_tokens, a_tokens, presence, f_tokens)  # (B, F)
            else:
                fused = self.fusion(v_tokens, a_tokens, presence)  # (B, F)
            out["event_logits"] = self.event_head(fused, presence)  # (B, E)
        if self.audio_tag_head is not None:
            out["audio_tag_logits"] = self.audio_tag_head(a_tokens)  # (B, A)
        return tuple(out[name] for name in self.output_names)

    def example_inputs(self, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random inputs of the right shapes (both modalities present), for export and tests."""
        c = self.config
        g = torch.Generator().manual_seed(0)
        video = torch.randn(batch, c.clip_frames, 3, c.height, c.width, generator=g)
        audio = torch.rand(batch, c.audio_samples, generator=g) * 0.2 - 0.1
        return video, audio, torch.ones(batch, 2)


def count_params(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: MultimodalModel) -> int:
    """Floating-point operations of one forward pass at batch 1 (2 per multiply-add), in eval mode.

    Counts matrix products and convolutions (torch's ``FlopCounterMode``); elementwise work is
    not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*model.example_inputs(1))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
