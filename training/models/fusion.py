"""Fusion of video and audio tokens into one clip embedding, honouring the presence mask.

Every fusion module has one contract: ``forward(video_tokens (B, Nv, Cv), audio_tokens (B, Na, Ca),
presence (B, 2)) -> (B, out_dim)``, with ``out_dim`` an attribute. Modules are registered by name in
``FUSIONS`` (the ``fusion`` field of ``ModelConfig``), so single-modality or late-fusion variants are
one class and one registry line each.

A missing modality (presence 0, its tensor all zeros) must not leak into the result: its tokens are
replaced by a learned "missing" embedding and masked out of attention. Attention always keeps one
learned "null" key, so a query whose other modality is missing attends to that token instead of to
an empty set (a fully masked softmax would give NaN).

``aligned_attention`` (``AlignedAttentionFusion``) relates the two modalities *in time*: it also
takes per-frame video tokens, and its constructor the time of every frame and audio token
(constants of the geometry, see ``encoders.frame_times`` / ``encoders.audio_token_times``). A fusion
that wants these sets the class attribute ``uses_frame_tokens = True``; the model then passes
``frame_times=`` and ``audio_times=`` to the constructor and ``frame_tokens`` (B, T, Cv) as the fourth
argument of ``forward``.

The attention layers are written for a small exported graph, because at a fraction of a GFLOP the
fusion's cost on a CPU is the number of operators, not their arithmetic: each attention projects its
queries with one product and its keys and values with one packed product, splits heads with one
constant-shape reshape and transpose (no per-head loops, no shape arithmetic on the batch size), puts
the null key in front with a constant pad instead of a batch-sized expand, and masks an absent
modality with one additive ``-inf`` row chosen by ``where`` (the softmax gives those keys weight 0,
exactly as a masked fill does). The parameters keep the layout of ``torch.nn.MultiheadAttention``
(``in_proj_weight``, ``in_proj_bias``, ``out_proj``), so checkpoints saved with it load unchanged
and compute the same outputs up to float rounding.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .gelu import Gelu

__all__ = ["CrossAttentionFusion", "ConcatFusion", "SingleModalityFusion", "AlignedAttentionFusion",
           "time_embedding", "FUSIONS", "build_fusion"]


def _replace_missing(tokens: torch.Tensor, present: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """``tokens`` (B, N, D) where ``present`` (B, 1, 1) is 1, the learned ``missing`` (1, 1, D) where it is 0."""
    return tokens * present + missing * (1.0 - present)


def _with_null(keys: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """``keys`` (B, Lk, D) with the learned ``null`` (1, 1, D) in front: (B, 1 + Lk, D).

    A zero row padded in front plus a constant tensor that is ``null`` in that row and 0 elsewhere:
    the same values as concatenating a batch-sized copy of ``null``, without shape arithmetic on the
    batch in the exported graph.
    """
    return F.pad(keys, (0, 0, 1, 0)) + F.pad(null, (0, 0, 0, keys.shape[1]))


def _key_bias(absent: torch.Tensor, keys: int) -> torch.Tensor:
    """Additive logit mask ``(B, 1, 1, 1 + keys)``: 0 for the null key; ``-inf`` for the others where absent.

    Args:
        absent: ``(B, 1)`` (or any shape with ``B`` elements) bool, True where the keys' modality is missing.
        keys: real keys after the null key.
    """
    row = torch.cat([torch.zeros(1, 1, 1, 1, device=absent.device),
                     torch.full((1, 1, 1, keys), float("-inf"), device=absent.device)], dim=-1)
    return torch.where(absent.reshape(-1, 1, 1, 1), row, 0.0)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, L, heads * hd)`` → ``(B, heads, L, hd)`` (constant target shape: the batch is the free axis)."""
    return x.reshape(-1, x.shape[1], heads, x.shape[2] // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, L, hd)`` → ``(B, L, H * hd)``."""
    return x.transpose(1, 2).reshape(-1, x.shape[2], x.shape[1] * x.shape[3])


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, dropout: float,
            training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention over all heads at once.

    Args:
        q: ``(B, H, Lq, hd)`` queries, already scaled by ``1 / sqrt(hd)``. k, v: ``(B, H, Lk, hd)``.
        bias: added to the logits, broadcastable to ``(B, H, Lq, Lk)`` (``-inf`` masks a key).
        dropout: on the attention weights while training.

    Returns:
        ``(B, H, Lq, hd)`` outputs and the ``(B, H, Lq, Lk)`` weights.
    """
    weights = (torch.matmul(q, k.transpose(-2, -1)) + bias).softmax(dim=-1)
    return torch.matmul(F.dropout(weights, dropout, training), v), weights


class _FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, hidden), Gelu(), nn.Dropout(dropout),
                         nn.Linear(hidden, dim))


class _PackedAttention(nn.Module):
    """Multi-head cross-attention with the parameters of ``nn.MultiheadAttention`` (``batch_first``).

    ``in_proj_weight`` (3D, D) stacks the query, key and value projections and ``out_proj`` is the
    output projection, as in torch's module, so its state dict loads here; the forward pass is the
    same math in fewer exported operators: one product for the queries (the ``1 / sqrt(hd)`` scale
    folded into their weights), one for the keys and values together, all heads in one batched
    product, and an additive mask.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} must be divisible by its {heads} heads")
        self.heads, self.dropout = heads, float(dropout)
        # created and initialized in the order nn.MultiheadAttention uses, so a seeded model starts the same
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``x`` (B, Lq, D) queries, ``keys`` (B, Lk, D) keys and values, ``bias`` (B, 1, 1, Lk) → (B, Lq, D)."""
        d = x.shape[-1]
        scale = 1.0 / math.sqrt(d // self.heads)
        # slices, not a split: the exporter folds single-output constant nodes into plain initializers
        w_q, w_kv = self.in_proj_weight[:d], self.in_proj_weight[d:]
        b_q, b_kv = self.in_proj_bias[:d], self.in_proj_bias[d:]
        q = _split_heads(F.linear(x, w_q * scale, b_q * scale), self.heads)  # (B, H, Lq, hd)
        k, v = _split_heads(F.linear(keys, w_kv, b_kv), 2 * self.heads).chunk(2, dim=1)  # 2 × (B, H, Lk, hd)
        out, _ = _attend(q, k, v, bias, self.dropout, self.training)
        return self.out_proj(_merge_heads(out))


class _CrossAttentionBlock(nn.Module):
    """Video queries attend to audio keys and audio queries to video keys (pre-norm, residual)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_v, self.norm_a = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.v_from_a = _PackedAttention(dim, heads, dropout)
        self.a_from_v = _PackedAttention(dim, heads, dropout)
        self.null_v = nn.Parameter(torch.zeros(1, 1, dim))  # always-valid key for audio queries
        self.null_a = nn.Parameter(torch.zeros(1, 1, dim))  # always-valid key for video queries
        self.ff_v, self.ff_a = _FeedForward(dim, 2 * dim, dropout), _FeedForward(dim, 2 * dim, dropout)

    def forward(self, v: torch.Tensor, a: torch.Tensor, v_absent: torch.Tensor,
                a_absent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``v`` (B, Nv, D), ``a`` (B, Na, D), ``*_absent`` (B, 1) bool → the updated ``(v, a)``."""
        qv, qa = self.norm_v(v), self.norm_a(a)
        v = v + self.v_from_a(qv, _with_null(qa, self.null_a), _key_bias(a_absent, qa.shape[1]))
        a = a + self.a_from_v(qa, _with_null(qv, self.null_v), _key_bias(v_absent, qv.shape[1]))
        return v + self.ff_v(v), a + self.ff_a(a)


class CrossAttentionFusion(nn.Module):
    """Project both modalities to ``dim``, add positions, run ``layers`` cross-attention blocks.

    The output is ``[mean, max of video tokens, mean, max of audio tokens]`` → ``(B, 4 * dim)``.

    Args:
        video_dim, audio_dim: input token widths.
        video_tokens, audio_tokens: token counts (fixed by the input geometry; learned positions).
        dim: shared width. heads: attention heads (divides ``dim``). layers: blocks.
        dropout: inside attention and feed-forward.
    """

    def __init__(self, video_dim: int, audio_dim: int, video_tokens: int, audio_tokens: int, dim: int,
                 heads: int, layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj_v, self.proj_a = nn.Linear(video_dim, dim), nn.Linear(audio_dim, dim)
        self.pos_v = nn.Parameter(torch.randn(1, video_tokens, dim) * 0.02)
        self.pos_a = nn.Parameter(torch.randn(1, audio_tokens, dim) * 0.02)
        self.missing_v = nn.Parameter(torch.zeros(1, 1, dim))
        self.missing_a = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([_CrossAttentionBlock(dim, heads, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(4 * dim)
        self.out_dim = 4 * dim

    def forward(self, video_tokens: torch.Tensor, audio_tokens: torch.Tensor,
                presence: torch.Tensor) -> torch.Tensor:
        pv, pa = presence[:, 0].reshape(-1, 1, 1), presence[:, 1].reshape(-1, 1, 1)  # (B, 1, 1)
        v = _replace_missing(self.proj_v(video_tokens) + self.pos_v, pv, self.missing_v)  # (B, Nv, D)
        a = _replace_missing(self.proj_a(audio_tokens) + self.pos_a, pa, self.missing_a)  # (B, Na, D)
        v_absent, a_absent = pv < 0.5, pa < 0.5  # (B, 1, 1) bool
        for block in self.blocks:
            v, a = block(v, a, v_absent, a_absent)
        # mean and max pooling: a cue such as a flashing light bar lives in one or two of the Nv
        # tokens, and a mean alone dilutes it
        pooled = [v.mean(dim=1), v.amax(dim=1), a.mean(dim=1), a.amax(dim=1)]
        return self.norm(torch.cat(pooled, dim=1))  # (B, 4D)


class ConcatFusion(nn.Module):
    """Late fusion: pool each modality, project, swap in the "missing" embedding, concatenate, MLP.

    Same arguments as ``CrossAttentionFusion`` (``heads``/``layers``/token counts are unused).
    """

    def __init__(self, video_dim: int, audio_dim: int, video_tokens: int, audio_tokens: int, dim: int,
                 heads: int, layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        del video_tokens, audio_tokens, heads, layers
        self.proj_v, self.proj_a = nn.Linear(video_dim, dim), nn.Linear(audio_dim, dim)
        self.missing_v = nn.Parameter(torch.zeros(1, dim))
        self.missing_a = nn.Parameter(torch.zeros(1, dim))
        self.mlp = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, 2 * dim), Gelu(),
                                 nn.Dropout(dropout))
        self.out_dim = 2 * dim

    def forward(self, video_tokens: torch.Tensor, audio_tokens: torch.Tensor,
                presence: torch.Tensor) -> torch.Tensor:
        pv, pa = presence[:, 0:1], presence[:, 1:2]  # (B, 1)
        v = self.proj_v(video_tokens.mean(dim=1)) * pv + self.missing_v * (1.0 - pv)  # (B, D)
        a = self.proj_a(audio_tokens.mean(dim=1)) * pa + self.missing_a * (1.0 - pa)  # (B, D)
        return self.mlp(torch.cat([v, a], dim=1))  # (B, 2D)


class SingleModalityFusion(nn.Module):
    """The "fusion" of a single-modality model: project one modality's tokens, pool, normalize.

    Reads only the tokens and the presence of ``modality`` (0 video, 1 audio); where that modality
    is absent its tokens are replaced by the learned "missing" embedding. Output
    ``[mean, max of tokens]`` → ``(B, 2 * dim)``.

    Args:
        in_dim: token width. tokens: token count (learned positions). dim: projected width.
        modality: index of the modality in the presence mask.
    """

    def __init__(self, in_dim: int, tokens: int, dim: int, modality: int) -> None:
        super().__init__()
        self.modality = int(modality)
        self.proj = nn.Linear(in_dim, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.missing = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(2 * dim)
        self.out_dim = 2 * dim

    def forward(self, tokens: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        p = presence[:, self.modality].reshape(-1, 1, 1)
        x = _replace_missing(self.proj(tokens) + self.pos, p, self.missing)  # (B, N, D)
        return self.norm(torch.cat([x.mean(dim=1), x.amax(dim=1)], dim=1))  # (B, 2D)


def time_embedding(seconds: torch.Tensor, dim: int, min_period: float = 0.05,
                   max_period: float = 10.0) -> torch.Tensor:
    """Sinusoidal code of a time in seconds, the same function for every modality.

    ``[sin(2π t / P_k) for k] ++ [cos(2π t / P_k) for k]`` with ``dim / 2`` periods ``P_k`` spaced
    geometrically from ``min_period`` to ``max_period``: equal times get equal codes, and the dot
    product of two codes depends only on the time between them.

    Args:
        seconds: ``(...)`` times, s.
        dim: code width, even.
        min_period: shortest period, s (> 0).
        max_period: longest period, s (>= ``min_period``).

    Raises:
        ValueError: ``dim`` is not a positive even number, or the periods are out of range.

    Returns:
        ``(..., dim)`` float32 codes.
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"time_embedding needs a positive even dim, got {dim}")
    if not 0.0 < min_period <= max_period:
        raise ValueError(f"need 0 < min_period <= max_period, got {min_period}, {max_period}")
    half = dim // 2
    k = torch.arange(half, dtype=torch.float64) / max(half - 1, 1)
    periods = min_period * (max_period / min_period) ** k  # (dim/2,) s
    angle = 2.0 * math.pi * seconds.double().unsqueeze(-1) / periods  # (..., dim/2)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1).float()


class _LocalCrossAttention(nn.Module):
    """Multi-head cross-attention with a learned temporal-locality bias.

    Query ``i`` (at ``query_times[i]``) and key ``j`` (at ``key_times[j]``) get ``-|Δt| / τ_h`` added to
    their logit in head ``h``, ``τ_h = exp(log_tau_h)`` seconds (> 0, learned, one per head, initialized
    geometrically between ``tau_range``): a small τ makes a head look only at keys near the query's
    time, a large one at all of them. A learned null key (bias 0, never masked) keeps the softmax
    defined when every real key is masked. The distances are a constant buffer, so the bias has fixed
    shapes in the exported graph.
    """

    def __init__(self, dim: int, heads: int, dropout: float, query_times: Sequence[float],
                 key_times: Sequence[float], tau_range: tuple[float, float]) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.null = nn.Parameter(torch.zeros(1, 1, dim))
        self.drop = nn.Dropout(dropout)
        dt = torch.tensor(query_times, dtype=torch.float64)[:, None] - torch.tensor(key_times, dtype=torch.float64)
        self.register_buffer("distance", dt.abs().float(), persistent=False)  # (Lq, Lk) s
        lo, hi = tau_range
        steps = torch.arange(heads, dtype=torch.float64) / max(heads - 1, 1)
        self.log_tau = nn.Parameter((math.log(lo) + (math.log(hi) - math.log(lo)) * steps).float())  # (H,)

    def tau(self) -> torch.Tensor:
        """``(H,)`` locality scales in seconds (floored at 1 ms so the bias stays finite)."""
        return self.log_tau.exp().clamp(min=1e-3)

    def bias(self) -> torch.Tensor:
        """``(1, H, Lq, 1 + Lk)`` logit bias: 0 for the null key, ``-|Δt| / τ_h`` for the others."""
        local = -self.distance.unsqueeze(0) / self.tau()[:, None, None]  # (H, Lq, Lk)
        return F.pad(local, (1, 0)).unsqueeze(0)  # a zero column in front for the null key

    def forward(self, x: torch.Tensor, keys: torch.Tensor, absent: torch.Tensor,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, Lq, D) queries, ``keys`` (B, Lk, D), ``absent`` (B, 1) bool (keys' modality missing).

        Returns ``(B, Lq, D)``, and with ``need_weights`` also the weights ``(B, H, Lq, 1 + Lk)``
        (index 0: the null key).
        """
        q = _split_heads(self.q(x), self.heads) * (1.0 / math.sqrt(self.head_dim))  # (B, H, Lq, hd)
        k, v = _split_heads(self.kv(_with_null(keys, self.null)), 2 * self.heads).chunk(2, dim=1)  # (B, H, 1+Lk, hd)
        bias = self.bias() + _key_bias(absent, keys.shape[1])  # (B, H, Lq, 1+Lk)
        out, weights = _attend(q, k, v, bias, self.drop.p, self.training)
        out = self.out(_merge_heads(out))  # (B, Lq, D)
        return (out, weights) if need_weights else out


class _TemporalAlignBlock(nn.Module):
    """Frame tokens attend to audio tokens near their time, and audio tokens to frames near theirs."""

    def __init__(self, dim: int, heads: int, dropout: float, frame_times: Sequence[float],
                 audio_times: Sequence[float], tau_range: tuple[float, float]) -> None:
        super().__init__()
        self.norm_f, self.norm_a = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.f_from_a = _LocalCrossAttention(dim, heads, dropout, frame_times, audio_times, tau_range)
        self.a_from_f = _LocalCrossAttention(dim, heads, dropout, audio_times, frame_times, tau_range)
        self.ff_f, self.ff_a = _FeedForward(dim, 2 * dim, dropout), _FeedForward(dim, 2 * dim, dropout)

    def forward(self, f: torch.Tensor, a: torch.Tensor, v_absent: torch.Tensor,
                a_absent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qf, qa = self.norm_f(f), self.norm_a(a)
        f = f + self.f_from_a(qf, qa, a_absent)  # (B, T, D)
        a = a + self.a_from_f(qa, qf, v_absent)  # (B, Na, D)
        return f + self.ff_f(f), a + self.ff_a(a)


class AlignedAttentionFusion(nn.Module):
    """Cross-modal fusion aligned in time: frames attend to the audio heard around them.

    All three token sets are projected into one ``dim``-wide space. Frame tokens (B, T, Cv) and
    audio tokens (B, Na, Ca) get the same sinusoidal code of their time in seconds
    (``time_embedding``), so a frame and an audio token from the same moment carry the same code;
    the time-merged spatial video tokens (B, Nv, Cv) get learned positions. Each of ``layers`` layers
    runs the spatial block of ``CrossAttentionFusion`` (spatial video ↔ audio) and then a temporal
    block: frame ↔ audio cross-attention with a learned locality bias ``-|t_frame - t_audio| / τ``
    (one τ > 0 per head). Presence works as in ``CrossAttentionFusion``: a missing modality's tokens
    become a learned "missing" embedding (plus the time code, which carries no content) and are
    masked out as keys; a null key is always valid.

    The output is ``[mean, max of spatial tokens, of frame tokens, of audio tokens]`` → ``(B, 6 * dim)``.

    Args:
        video_dim, audio_dim: input token widths (frame tokens have ``video_dim`` too).
        video_tokens, audio_tokens: token counts (fixed by the geometry).
        dim: shared width, even. heads: attention heads (divides ``dim``). layers: layers.
        dropout: inside attention and feed-forward.
        frame_times: ``T`` frame times, s (``encoders.frame_times``).
        audio_times: ``audio_tokens`` token times, s (``encoders.audio_token_times``).

    Raises:
        ValueError: times missing or of the wrong length, or an odd ``dim``.
    """

    uses_frame_tokens = True

    def __init__(self, video_dim: int, audio_dim: int, video_tokens: int, audio_tokens: int, dim: int,
                 heads: int, layers: int, dropout: float = 0.0, *, frame_times: Sequence[float] | None = None,
                 audio_times: Sequence[float] | None = None) -> None:
        super().__init__()
        if frame_times is None or audio_times is None or len(frame_times) < 1:
            raise ValueError("aligned_attention needs frame_times and audio_times (seconds)")
        if len(audio_times) != audio_tokens:
            raise ValueError(f"audio_times has {len(audio_times)} entries for {audio_tokens} audio tokens")
        if dim % 2:
            raise ValueError(f"aligned_attention needs an even dim for its time code, got {dim}")
        self.frame_times, self.audio_times = tuple(map(float, frame_times)), tuple(map(float, audio_times))
        span = max(max(self.frame_times + self.audio_times) - min(self.frame_times + self.audio_times), 1e-2)
        tau_range = (span / 16, span / 2)  # s: from "this frame's own audio" to "most of the clip"
        self.proj_v, self.proj_f, self.proj_a = (nn.Linear(video_dim, dim), nn.Linear(video_dim, dim),
                                                 nn.Linear(audio_dim, dim))
        self.pos_v = nn.Parameter(torch.randn(1, video_tokens, dim) * 0.02)
        # constant time codes, rebuilt from the config (not saved)
        self.register_buffer("time_f", time_embedding(torch.tensor(self.frame_times), dim).unsqueeze(0),
                             persistent=False)  # (1, T, D)
        self.register_buffer("time_a", time_embedding(torch.tensor(self.audio_times), dim).unsqueeze(0),
                             persistent=False)  # (1, Na, D)
        self.missing_v = nn.Parameter(torch.zeros(1, 1, dim))
        self.missing_f = nn.Parameter(torch.zeros(1, 1, dim))
        self.missing_a = nn.Parameter(torch.zeros(1, 1, dim))
        self.spatial = nn.ModuleList([_CrossAttentionBlock(dim, heads, dropout) for _ in range(layers)])
        self.temporal = nn.ModuleList([
            _TemporalAlignBlock(dim, heads, dropout, self.frame_times, self.audio_times, tau_range)
            for _ in range(layers)
        ])
        self.norm = nn.LayerNorm(6 * dim)
        self.out_dim = 6 * dim

    def fuse_tokens(self, video_tokens: torch.Tensor, audio_tokens: torch.Tensor, presence: torch.Tensor,
                    frame_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fused token sets before pooling: ``(spatial (B, Nv, D), frames (B, T, D), audio (B, Na, D))``."""
        pv, pa = presence[:, 0].reshape(-1, 1, 1), presence[:, 1].reshape(-1, 1, 1)  # (B, 1, 1)
        v = _replace_missing(self.proj_v(video_tokens) + self.pos_v, pv, self.missing_v)  # (B, Nv, D)
        f = _replace_missing(self.proj_f(frame_tokens), pv, self.missing_f) + self.time_f  # (B, T, D)
        a = _replace_missing(self.proj_a(audio_tokens), pa, self.missing_a) + self.time_a  # (B, Na, D)
        v_absent, a_absent = pv < 0.5, pa < 0.5  # (B, 1, 1) bool
        for spatial, temporal in zip(self.spatial, self.temporal):
            v, a = spatial(v, a, v_absent, a_absent)
            f, a = temporal(f, a, v_absent, a_absent)
        return v, f, a

    def forward(self, video_tokens: torch.Tensor, audio_tokens: torch.Tensor, presence: torch.Tensor,
                frame_tokens: torch.Tensor) -> torch.Tensor:
        v, f, a = self.fuse_tokens(video_tokens, audio_tokens, presence, frame_tokens)
        pooled = [v.mean(dim=1), v.amax(dim=1), f.mean(dim=1), f.amax(dim=1), a.mean(dim=1), a.amax(dim=1)]
        return self.norm(torch.cat(pooled, dim=1))  # (B, 6D)


#: Fusion modules by config name; each takes the keyword arguments of ``CrossAttentionFusion``
#: (and ``frame_times``/``audio_times`` where ``uses_frame_tokens`` is set).
FUSIONS: dict[str, Callable[..., nn.Module]] = {
    "cross_attention": CrossAttentionFusion,
    "concat": ConcatFusion,
    "aligned_attention": AlignedAttentionFusion,
}


def build_fusion(kind: str, **kwargs) -> nn.Module:
    """Build the fusion module registered as ``kind``.

    Args:
        kind: a key of ``FUSIONS``.
        **kwargs: the constructor arguments (see ``CrossAttentionFusion``).

    Raises:
        KeyError: ``kind`` is not registered.

    Returns:
        The module; its ``out_dim`` attribute is the width of its output.
    """
    if kind not in FUSIONS:
        raise KeyError(f"unknown fusion {kind!r}; known: {', '.join(sorted(FUSIONS))}")
    return FUSIONS[kind](**kwargs)
