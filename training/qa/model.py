"""The scene question-answering model: a small question encoder that reads the fused student's tokens.

::

    video ─► student ClipEncoder ─► stride-16 cell tokens (B, Nv, Cv) ‖ detection heatmap, pooled to
                                    stride 16 (B, Nv, C)  ─┐
                                 └► per-frame tokens (B, T, Cv)  ─┤ projected to ``dim``, + position
    audio ─► student AudioEncoder ─► audio tokens (B, Na, Ca)    ─┤ and modality embeddings: the
                                 └► audio-tag logits (B, A): 1 token ┘ context
    detection heatmap ─► per class: sum, cells > 0.3, cells > 0.5, max, soft arg-max x, y ‖ scene: 1 token ─┘
    question ids / mask (B, L) ─► token + position embeddings ─► ``layers`` × [question tokens attend to
        themselves and the context; MLP] ─► [CLS] ‖ detections ‖ tags ─► answer head ─► answer_logits (B, K)

The presence mask is honoured inside attention: the context tokens of a modality whose presence is 0
are masked out as keys (an additive -1e4, so exactly nothing of them reaches the answer, and a
missing sensor's zero tensor changes no output), and so are the question's padding tokens. The
[CLS] token is always a key, so no row of the attention is empty.

``scene`` (:mod:`.scene_features`: stride-4 peak counts and heights, the lit lamp's colour, the
light bar's, the vehicle's and the siren's change over the clip) is computed from the same inputs
and joins the detections token when the reader's ``scene_dim`` is set; a reader configured without
it (``scene_dim`` 0, as every reader saved before it existed) ignores it. The features are those of
the reader's ``scene_version``, so a reader keeps the inputs it was trained on.

The student (a ``MultimodalModel`` with both modalities, a detection head and an audio-tag head,
loaded from a checkpoint) is frozen: its weights get no gradient and it stays in eval mode. Its
outputs for a clip do not depend on the question, so training computes them once per clip
(:meth:`QAModel.context`) and trains :class:`QuestionReader` on the cached context.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.spec import OBJECTS
from torch import nn

from ..models.multimodal import MultimodalModel
from .scene_features import SCENE_FEATURES_VERSION, SCENE_VERSIONS, audio_scene_features, scene_features

__all__ = ["CONTEXT_KEYS", "MASKED_BIAS", "QAConfig", "QAModel", "QuestionReader", "reader_config_for"]

#: The context tensors the reader takes, in order (see ``QAModel.context``).
CONTEXT_KEYS: tuple[str, ...] = ("cells", "frames", "audio", "tags", "scene")
#: Added to the attention score of a masked key: finite (no NaN when exported), and exp(-1e4) is 0.
MASKED_BIAS = -1.0e4
_TYPES = ("text", "cells", "frames", "audio", "tags", "detections")  # modality embedding rows


@dataclass(frozen=True)
class QAConfig:
    """The reader's architecture and the shapes of the context it reads."""

    vocab_size: int
    max_tokens: int  # L, [CLS] included
    num_answers: int  # K
    cell_tokens: int  # Nv, stride-16 cells
    cell_dim: int  # Cv + heatmap classes
    cell_cols: int  # cells per row (W / 16)
    heat_channels: int  # the detection heatmap's classes, the last channels of a cell
    frame_tokens: int  # T
    frame_dim: int
    audio_tokens: int  # Na
    audio_dim: int
    tag_dim: int  # audio tags
    dim: int = 64
    heads: int = 4
    layers: int = 2
    dropout: float = 0.1
    scene_dim: int = 0  # length of the scene features the reader reads (0: none, as readers saved before them)
    # which scene features (.scene_features.SCENE_VERSIONS); readers saved before the field read version 2
    scene_version: int = 2

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if k == "scene_dim":
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise InputError(f"QAConfig.scene_dim must be a non-negative integer, got {v!r}")
            elif k == "scene_version":
                if isinstance(v, bool) or v not in SCENE_VERSIONS:
                    raise InputError(f"QAConfig.scene_version must be one of {SCENE_VERSIONS}, got {v!r}")
            elif k == "dropout":
                if not 0.0 <= v < 1.0:
                    raise InputError(f"QAConfig.dropout must be in [0, 1), got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"QAConfig.{k} must be a positive integer, got {v!r}")
        if self.dim % self.heads:
            raise InputError(f"QAConfig.dim {self.dim} must be divisible by heads {self.heads}")

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> QAConfig:
        """Inverse of ``to_dict``; unknown keys raise :class:`InputError`."""
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"unknown QAConfig field(s): {', '.join(unknown)}")
        return cls(**d)


class _CrossBlock(nn.Module):
    """Question tokens attend to [question; context] keys, then an MLP; pre-norm, residual."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``x`` (B, L, D), ``context`` (B, N, D), ``bias`` (B, 1, 1, L + N) additive → (B, L, D)."""
        b, n_q, d = x.shape
        h, hd = self.heads, d // self.heads
        keys = torch.cat([self.norm_kv(x), self.norm_kv(context)], dim=1)  # (B, L + N, D)
        q = self.q(self.norm_q(x)).reshape(b, n_q, h, hd).transpose(1, 2)  # (B, h, L, hd)
        k, v = self.kv(keys).reshape(b, -1, 2, h, hd).permute(2, 0, 3, 1, 4)  # 2 × (B, h, L + N, hd)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd) + bias, dim=-1)
        x = x + self.drop(self.out((att @ v).transpose(1, 2).reshape(b, n_q, d)))
        return x + self.drop(self.mlp(self.norm_mlp(x)))


class QuestionReader(nn.Module):
    """Question tokens + the student's context tokens + presence → answer logits (see the module docstring)."""

    def __init__(self, config: QAConfig) -> None:
        super().__init__()
        self.config = c = config
        d = c.dim
        # the scene's audio values join the tags token and the rest the detections token, so each is
        # dropped with its own sensor
        self.audio_scene = audio_scene_features(c.scene_version) if c.scene_dim else 0
        if c.scene_dim and c.scene_dim <= self.audio_scene:
            raise InputError(f"QAConfig.scene_dim {c.scene_dim} leaves no video scene feature")
        self.token = nn.Embedding(c.vocab_size, d)
        # cells, frames and audio tokens also get where / when they are (fixed coordinates in [0, 1]), so
        # "left of", "first frame" need no learning; the detections token holds per-class counts
        self.proj = nn.ModuleDict({"cells": nn.Linear(c.cell_dim + 2, d), "frames": nn.Linear(c.frame_dim + 1, d),
                                   "audio": nn.Linear(c.audio_dim + 1, d), "tags": nn.Linear(c.tag_dim + self.audio_scene, d),
                                   "detections": nn.Linear(6 * c.heat_channels + c.scene_dim - self.audio_scene, d)})
        rows = c.cell_tokens // c.cell_cols
        col, row = torch.arange(c.cell_tokens) % c.cell_cols, torch.arange(c.cell_tokens) // c.cell_cols
        self.register_buffer("cell_xy", torch.stack([(col + 0.5) / c.cell_cols, (row + 0.5) / rows], dim=1),
                             persistent=False)  # (Nv, 2)
        self.register_buffer("frame_t", torch.linspace(0, 1, c.frame_tokens)[:, None], persistent=False)
        self.register_buffer("audio_t", torch.linspace(0, 1, c.audio_tokens)[:, None], persistent=False)
        counts = {"text": c.max_tokens, "cells": c.cell_tokens, "frames": c.frame_tokens,
                  "audio": c.audio_tokens, "tags": 1, "detections": 1}
        self.position = nn.ParameterDict({k: nn.Parameter(torch.randn(n, d) * 0.02) for k, n in counts.items()})
        self.modality = nn.Parameter(torch.randn(len(_TYPES), d) * 0.02)
        self.blocks = nn.ModuleList(_CrossBlock(d, c.heads, c.dropout) for _ in range(c.layers))
        self.norm = nn.LayerNorm(d)
        # the head also reads the detections and tag tokens directly (each zeroed when its sensor is absent):
        # "which side" or "is a horn heard" is then a conjunction of the question with one feature, which
        # an MLP learns from a few hundred questions where attention routing did not
        self.head = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Dropout(c.dropout), nn.Linear(d, c.num_answers))

    def forward(self, cells: torch.Tensor, frames: torch.Tensor, audio: torch.Tensor, tags: torch.Tensor,
                scene: torch.Tensor, presence: torch.Tensor, question_ids: torch.Tensor,
                question_mask: torch.Tensor) -> torch.Tensor:
        """Context ``cells`` (B, Nv, Cc), ``frames`` (B, T, Cf), ``audio`` (B, Na, Ca), ``tags`` (B, A),
        ``scene`` (B, S) (read only when ``scene_dim`` is set, then S must equal it);
        ``presence`` (B, 2); ``question_ids`` int64 (B, L), ``question_mask`` (B, L) → logits (B, K)."""
        b = cells.shape[0]
        heat = cells[:, :, -self.config.heat_channels:]  # (B, Nv, C) stride-16 max of the centre heatmap
        mass = heat.sum(1)  # (B, C)
        # a soft arg-max: the heat of every other cell (about 0.04 each) would pull a plain weighted mean
        # to the middle of the frame
        weight = torch.softmax(20.0 * heat, dim=1)  # (B, Nv, C)
        centroid = torch.einsum("bnc,nk->bck", weight, self.cell_xy)  # (B, C, 2)
        n = float(cells.shape[1])  # every feature on a [0, 1] scale: raw counts (up to Nv) drowned the centres
        detections = torch.cat([mass / n, (heat > 0.3).float().sum(1) / 8.0, (heat > 0.5).float().sum(1) / 8.0,
                                heat.amax(1), 2.0 * centroid.flatten(1) - 1.0], dim=1)  # (B, 6 C)
        if self.config.scene_dim:
            if scene.shape[1] != self.config.scene_dim:
                raise InputError(f"scene features have {scene.shape[1]} values, the reader reads "
                                 f"{self.config.scene_dim}")
            detections = torch.cat([detections, scene[:, :-self.audio_scene]], dim=1)  # (B, 6 C + S - Sa)
            tags = torch.cat([tags, scene[:, -self.audio_scene:]], dim=1)  # (B, A + Sa)
        parts = {"cells": torch.cat([cells, self.cell_xy.expand(b, -1, -1)], dim=2),
                 "frames": torch.cat([frames, self.frame_t.expand(b, -1, -1)], dim=2),
                 "audio": torch.cat([audio, self.audio_t.expand(b, -1, -1)], dim=2),
                 "tags": tags.unsqueeze(1), "detections": detections.unsqueeze(1)}
        context = torch.cat([self.proj[k](v) + self.position[k] + self.modality[_TYPES.index(k)]
                             for k, v in parts.items()], dim=1)  # (B, N, D)
        x = self.token(question_ids) + self.position["text"] + self.modality[0]  # (B, L, D)
        pv, pa = presence[:, 0:1], presence[:, 1:2]  # (B, 1)
        keep = torch.cat([question_mask, pv.expand(-1, cells.shape[1]), pv.expand(-1, frames.shape[1]),
                          pa.expand(-1, audio.shape[1]), pa, pv], dim=1)  # (B, L + N)
        bias = ((1.0 - keep) * MASKED_BIAS)[:, None, None, :]
        for block in self.blocks:
            x = block(x, context, bias)
        direct = torch.cat([self.norm(x[:, 0]), self.proj["detections"](detections) * pv,
                            self.proj["tags"](tags) * pa], dim=1)  # [CLS] + the two summaries
        return self.head(direct)


class QAModel(nn.Module):
    """The exported question-answering model: a frozen student's context + a :class:`QuestionReader`.

    ``forward(video, audio, presence, question_ids, question_mask) -> answer_logits`` takes exactly the
    perception model's three inputs (same preprocessing and geometry) plus the encoded question.

    Raises:
        InputError: the student lacks a modality, its detection head or its audio-tag head.
    """

    def __init__(self, student: MultimodalModel, reader: QuestionReader) -> None:
        super().__init__()
        if student.video_encoder is None or student.audio_encoder is None:
            raise InputError("question answering needs a student that reads both video and audio")
        if student.det_head is None or student.audio_tag_head is None or not hasattr(student.det_head, "heatmap"):
            raise InputError("question answering needs a student with a detection head and an audio-tag head")
        self.student = student
        self.reader = reader
        for p in self.student.parameters():
            p.requires_grad_(False)
        self.student.eval()

    def train(self, mode: bool = True) -> QAModel:
        """Train the reader only: the frozen student stays in eval mode (its BatchNorm statistics fixed)."""
        super().train(mode)
        self.student.eval()
        return self

    def context(self, video: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """The student's context for a batch of clips: ``{"cells", "frames", "audio", "tags", "scene"}`` (see the module docstring)."""
        enc = self.student.video_encoder
        if enc.frame_proj is not None:
            v_tokens, _, last_s4, ctx, frames = enc.forward_with_frames(video)  # frames (B, T, Cv)
        else:
            v_tokens, _, last_s4, ctx = enc(video)
            frames = enc.frame_features(video)[1]  # (B, T, 2 Cv)
        heat = torch.sigmoid(self.student.det_head(last_s4, ctx)[0])  # (B, C, H/4, W/4)
        k = heat.shape[-1] // ctx.shape[-1]  # 4: stride 4 -> stride 16
        heat16 = F.max_pool2d(heat, k, k)  # (B, C, H/16, W/16): which cell holds a centre
        cells = torch.cat([v_tokens, heat16.flatten(2).transpose(1, 2)], dim=2)  # (B, Nv, Cv + C)
        a_tokens, _ = self.student.audio_encoder(audio)  # (B, Na, Ca)
        tags = self.student.audio_tag_head(a_tokens)  # (B, A)
        scene = scene_features(video, audio, heat, OBJECTS.index("traffic_light"), OBJECTS.index("emergency_vehicle"),
                               sample_rate=self.student.config.sample_rate, version=self.reader.config.scene_version)
        return {"cells": cells, "frames": frames, "audio": a_tokens, "tags": tags, "scene": scene}

    def forward(self, video: torch.Tensor, audio: torch.Tensor, presence: torch.Tensor,
                question_ids: torch.Tensor, question_mask: torch.Tensor) -> torch.Tensor:
        """Answer logits (B, K)."""
        ctx = self.context(video, audio)
        return self.reader(*(ctx[k] for k in CONTEXT_KEYS), presence, question_ids, question_mask)


def reader_config_for(student: MultimodalModel, *, vocab_size: int, max_tokens: int, num_answers: int,
                      scene: bool = True, **overrides) -> QAConfig:
    """The :class:`QAConfig` whose context shapes fit ``student`` (shapes measured by one dry run);
    ``scene``: the reader reads the scene features (:mod:`.scene_features`, the current version)."""
    c = student.config
    probe = QAModel(student, QuestionReader(QAConfig(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                                     scene_version=SCENE_FEATURES_VERSION)))
    with torch.no_grad():
        ctx = probe.context(torch.zeros(1, c.clip_frames, 3, c.height, c.width), torch.zeros(1, c.audio_samples))
    return QAConfig(vocab_size=vocab_size, max_tokens=max_tokens, num_answers=num_answers,
                    cell_tokens=ctx["cells"].shape[1], cell_dim=ctx["cells"].shape[2], cell_cols=c.width // 16,
                    heat_channels=c.num_objects,
                    frame_tokens=ctx["frames"].shape[1], frame_dim=ctx["frames"].shape[2],
                    audio_tokens=ctx["audio"].shape[1], audio_dim=ctx["audio"].shape[2],
                    tag_dim=ctx["tags"].shape[1], scene_dim=ctx["scene"].shape[1] if scene else 0,
                    scene_version=SCENE_FEATURES_VERSION, **overrides)
