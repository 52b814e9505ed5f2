"""Fusion of video and audio tokens into one clip embedding, honouring the presence mask.

Every fusion module has one contract: ``forward(video_tokens (B, Nv, Cv), audio_tokens (B, Na, Ca),
presence (B, 2)) -> (B, out_dim)``, with ``out_dim`` an attribute. Modules are registered by name in
``FUSIONS`` (the ``fusion`` field of ``ModelConfig``), so single-modality or late-fusion variants are
one class and one registry line each.

A missing modality (presence 0, its tensor all zeros) must not leak into the result: its tokens are
replaced by a learned "missing" embedding and masked out of attention. Attention always keeps one
learned "null" key, so a query whose other modality is missing attends to that token instead of to
an empty set (a fully masked softmax would give NaN).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["CrossAttentionFusion", "ConcatFusion", "SingleModalityFusion", "FUSIONS", "build_fusion"]


def _replace_missing(tokens: torch.Tensor, present: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """``tokens`` (B, N, D) where ``present`` (B,) is 1, the learned ``missing`` (1, 1, D) where it is 0."""
    p = present.reshape(-1, 1, 1)
    return tokens * p + missing * (1.0 - p)


class _FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, dim))


class _CrossAttentionBlock(nn.Module):
    """Video queries attend to audio keys and audio queries to video keys (pre-norm, residual)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_v, self.norm_a = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.v_from_a = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.a_from_v = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.null_v = nn.Parameter(torch.zeros(1, 1, dim))  # always-valid key for audio queries
        self.null_a = nn.Parameter(torch.zeros(1, 1, dim))  # always-valid key for video queries
        self.ff_v, self.ff_a = _FeedForward(dim, 2 * dim, dropout), _FeedForward(dim, 2 * dim, dropout)

    @staticmethod
    def _keys(tokens: torch.Tensor, null: torch.Tensor, absent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepend the null token; mask (True = ignore) every other key where the modality is absent."""
        keys = torch.cat([null.expand(tokens.shape[0], -1, -1), tokens], dim=1)  # (B, 1+N, D)
        mask = torch.cat([torch.zeros_like(absent[:, :1]), absent.expand(-1, tokens.shape[1])], dim=1)
        return keys, mask  # mask (B, 1+N) bool

    def forward(self, v: torch.Tensor, a: torch.Tensor, v_absent: torch.Tensor,
                a_absent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qv, qa = self.norm_v(v), self.norm_a(a)
        ka, mask_a = self._keys(qa, self.null_a, a_absent)
        kv, mask_v = self._keys(qv, self.null_v, v_absent)
        v = v + self.v_from_a(qv, ka, ka, key_padding_mask=mask_a, need_weights=False)[0]
        a = a + self.a_from_v(qa, kv, kv, key_padding_mask=mask_v, need_weights=False)[0]
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
        pv, pa = presence[:, 0], presence[:, 1]  # (B,)
        v = _replace_missing(self.proj_v(video_tokens) + self.pos_v, pv, self.missing_v)  # (B, Nv, D)
        a = _replace_missing(self.proj_a(audio_tokens) + self.pos_a, pa, self.missing_a)  # (B, Na, D)
        v_absent, a_absent = (pv < 0.5).unsqueeze(1), (pa < 0.5).unsqueeze(1)  # (B, 1) bool
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
        self.mlp = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, 2 * dim), nn.GELU(),
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
        x = _replace_missing(self.proj(tokens) + self.pos, presence[:, self.modality], self.missing)  # (B, N, D)
        return self.norm(torch.cat([x.mean(dim=1), x.amax(dim=1)], dim=1))  # (B, 2D)


#: Fusion modules by config name; each takes the keyword arguments of ``CrossAttentionFusion``.
FUSIONS: dict[str, Callable[..., nn.Module]] = {
    "cross_attention": CrossAttentionFusion,
    "concat": ConcatFusion,
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
