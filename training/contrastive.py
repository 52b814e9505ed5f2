"""The objectives of audio-visual pretraining: projection towers, contrastive losses, views, metrics.

A clip's own audio supervises its video: two towers (``ContrastiveHeads``) project the encoders'
tokens, pooled over the clip and kept in time order, into one L2-normalized space where a
symmetric InfoNCE (``contrastive_loss``) pulls each clip's video and audio together, with the
clip's own audio circularly shifted as hard negatives (``shifted_audio``) so that *when* a sound
happens matters, not only *which* sound. ``match_loss`` trains the model's fusion on the same
question (audio-visual correspondence), and ``view_loss`` lets the video encoder learn from the
video alone (two augmented views of a clip, ``video_view``, with its ``still_copy`` as a hard
negative, so the encoder must see what moves and flashes). ``evaluate_pretrain`` measures all of
it on a held-out split. The loop that uses these is ``pretrain.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .dataset import ClipCache, iterate_batches
from .models.multimodal import MultimodalModel

__all__ = [
    "MAX_LOGIT_SCALE",
    "ContrastiveHeads",
    "contrastive_loss",
    "evaluate_pretrain",
    "match_loss",
    "retrieval_metrics",
    "shifted_audio",
    "still_copy",
    "video_view",
    "view_loss",
]

#: CLIP's bound on the logit scale (1 / temperature <= 100).
MAX_LOGIT_SCALE = 100.0

# ------------------------------------------------------------------------------------- the two towers


def _pool(tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, C) tokens → (B, 2C): mean and max over the tokens."""
    return torch.cat([tokens.mean(dim=1), tokens.amax(dim=1)], dim=1)


def _time_chunks(tokens: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, N, C) time-ordered tokens → (B, steps * 2C): mean and max of ``steps`` consecutive chunks, in order."""
    return torch.cat([_pool(chunk) for chunk in torch.tensor_split(tokens, steps, dim=1)], dim=1)


def _clip_and_frames(tokens: torch.Tensor, per_frame: torch.Tensor) -> torch.Tensor:
    """What a video MLP reads: the pooled tokens (B, 2C) and the per-frame features in order (B, T * 2C)."""
    return torch.cat([_pool(tokens), per_frame.flatten(1)], dim=1)


def _mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    # LayerNorm, not BatchNorm: batch statistics would let a row see the other clips (and its own
    # shifted copies) and leak the answer of the contrastive task.
    return nn.Sequential(nn.Linear(cin, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, cout))


class ContrastiveHeads(nn.Module):
    """The projection MLPs of both towers and the learnable logit scale (``1 / temperature``).

    Each tower sees its clip as a whole *and in time order*: the video tower reads the pooled tokens
    and, frame by frame, the clip encoder's per-frame features; the audio tower reads the pooled
    tokens and the tokens pooled over ``time_steps`` consecutive chunks of the clip, in order. An
    order-free pooling alone would give a circularly shifted waveform nearly the embedding of the
    original (the same sounds, in another order), so the shifted hard negatives could not be told
    apart and "when" (a siren that swells as the vehicle grows in view) could not be learned.

    Args:
        video_dim: width of the video encoder's tokens.
        audio_dim: width of the audio encoder's tokens.
        embed_dim: width of the shared, L2-normalized embedding.
        hidden: hidden width of each MLP.
        temperature: initial temperature.
        time_steps: frames per clip (T); the audio is cut into as many chunks.
        fusion_dim: the model's fused width; adds ``match``, the correspondence head on the fusion.
        view: add ``view_proj``, the MLP of the video-video contrast between two views of a clip.
    """

    def __init__(self, video_dim: int, audio_dim: int, embed_dim: int = 128, hidden: int = 256,
                 temperature: float = 0.07, time_steps: int = 4, fusion_dim: int | None = None,
                 view: bool = False) -> None:
        super().__init__()
        if time_steps < 1:
            raise ValueError(f"time_steps must be >= 1, got {time_steps}")
        self.time_steps = time_steps
        self.video_proj = _mlp(2 * video_dim * (1 + time_steps), hidden, embed_dim)
        self.audio_proj = _mlp(2 * audio_dim * (1 + time_steps), hidden, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))  # log(1/T), as in CLIP
        # with fusion_dim: a logit "this audio belongs to this video, at this time" from the fused embedding
        self.match = nn.Linear(fusion_dim, 1) if fusion_dim is not None else None
        # with view: a third MLP, for the video-video (two views of a clip) contrast
        self.view_proj = _mlp(2 * video_dim * (1 + time_steps), hidden, embed_dim) if view else None

    def project_video(self, tokens: torch.Tensor, per_frame: torch.Tensor) -> torch.Tensor:
        """``ClipEncoder.frame_features`` output ((B, Nv, Cv), (B, T, 2Cv)) → (B, embed_dim) unit vectors."""
        return F.normalize(self.video_proj(_clip_and_frames(tokens, per_frame)), dim=-1)

    def project_view(self, tokens: torch.Tensor, per_frame: torch.Tensor) -> torch.Tensor:
        """As ``project_video``, through the view MLP (built with ``view=True``): (B, embed_dim) unit vectors."""
        return F.normalize(self.view_proj(_clip_and_frames(tokens, per_frame)), dim=-1)

    def project_audio(self, tokens: torch.Tensor) -> torch.Tensor:
        """Audio tokens (B, Na, Ca), in time order → (B, embed_dim) unit vectors."""
        return F.normalize(self.audio_proj(torch.cat([_pool(tokens), _time_chunks(tokens, self.time_steps)], dim=1)),
                           dim=-1)

    def embed_video(self, model: MultimodalModel, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) clips → (B, embed_dim) unit vectors."""
        return self.project_video(*model.video_encoder.frame_features(video))

    def embed_audio(self, model: MultimodalModel, audio: torch.Tensor) -> torch.Tensor:
        """(B, S) waveforms → (B, embed_dim) unit vectors."""
        return self.project_audio(model.audio_encoder(audio)[0])

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep the logit scale in [1, 100] (CLIP's clamp, applied after each optimizer step)."""
        self.logit_scale.clamp_(0.0, math.log(MAX_LOGIT_SCALE))

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.logit_scale.detach()))


def shifted_audio(audio: torch.Tensor, count: int, min_shift: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard negatives: each waveform circularly shifted by ``count`` random amounts.

    Args:
        audio: (B, S) waveforms.
        count: shifted copies per waveform (K).
        min_shift: the smallest shift in samples; shifts are drawn uniformly from
            ``[min_shift, S - min_shift]``, so no copy is within ``min_shift`` of the original
            in either direction around the circle.
        generator: source of the shifts.

    Raises:
        ValueError: ``min_shift`` is not in ``1 .. S/2``.

    Returns:
        ``(negatives (B, K, S), shifts (B, K) int64)`` with ``negatives[b, k] ==
        torch.roll(audio[b], shifts[b, k])``.
    """
    b, s = audio.shape
    if not 1 <= min_shift <= s // 2:
        raise ValueError(f"min_shift={min_shift} samples must be in 1..{s // 2} for {s}-sample audio")
    shifts = torch.randint(min_shift, s - min_shift + 1, (b, count), generator=generator)  # (B, K)
    src = (torch.arange(s).view(1, 1, s) - shifts.unsqueeze(2)) % s  # (B, K, S): roll semantics
    negatives = torch.gather(audio.unsqueeze(1).expand(b, count, s), 2, src.to(audio.device))
    return negatives, shifts


def contrastive_loss(video: torch.Tensor, audio: torch.Tensor, hard: torch.Tensor | None,
                     logit_scale: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric InfoNCE with per-row hard negatives for video→audio.

    Args:
        video: (B, D) unit video embeddings.
        audio: (B, D) unit audio embeddings; row ``i`` is clip ``i``'s true audio.
        hard: (B, K, D) unit embeddings of clip ``i``'s shifted audio, or None.
        logit_scale: log of the inverse temperature (a scalar).

    Returns:
        ``(loss, {"loss_va", "loss_av"})``: the mean of the two directions.
    """
    scale = logit_scale.exp()
    logits = scale * video @ audio.T  # (B, B): row i is video i against every audio
    target = torch.arange(len(video), device=video.device)
    rows = logits
    if hard is not None and hard.shape[1]:
        rows = torch.cat([logits, scale * torch.einsum("bd,bkd->bk", video, hard)], dim=1)  # (B, B+K)
    loss_va = F.cross_entropy(rows, target)
    loss_av = F.cross_entropy(logits.T, target)
    return 0.5 * (loss_va + loss_av), {"loss_va": float(loss_va.detach()), "loss_av": float(loss_av.detach())}


def match_loss(model: MultimodalModel, heads: ContrastiveHeads, v_tokens: torch.Tensor, per_frame: torch.Tensor,
               audio_tokens: torch.Tensor, hard_tokens: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """Audio-visual correspondence through the model's own fusion (binary cross-entropy).

    Each clip's video is fused three ways: with its own audio (label 1), with the next clip's audio
    in the batch (another scene: label 0; not for a batch of one) and, when there are hard negatives,
    with its own audio time-shifted (the same sounds at the wrong moments: label 0); ``heads.match``
    reads the fused embedding. This trains what the supervised model fuses with, which the two towers never touch.

    Args:
        model: a two-modality model; its fusion is run with both modalities present.
        heads: contrastive heads built with ``fusion_dim`` (``heads.match`` is not None).
        v_tokens, per_frame: ``model.video_encoder.frame_features`` of the clips, (B, Nv, Cv), (B, T, 2Cv).
        audio_tokens: (B, Na, Ca), clip ``i``'s own audio.
        hard_tokens: (B, Na, Ca), a shifted copy of clip ``i``'s audio, or None.

    Returns:
        ``(loss, accuracy)``: the accuracy is the fraction of pairs on the right side of logit 0
        (a zero loss and NaN when there is no negative pair).
    """
    b = len(v_tokens)
    negatives = ([audio_tokens.roll(1, dims=0)] if b > 1 else []) + ([hard_tokens] if hard_tokens is not None else [])
    if not negatives:  # one clip and no shifted copy: nothing to tell it from
        return audio_tokens.new_zeros(()), float("nan")
    audios = [audio_tokens, *negatives]
    n = len(audios)
    video = v_tokens.repeat(n, 1, 1)  # (nB, Nv, Cv), pairs grouped by audio kind
    presence = torch.ones(n * b, 2, device=v_tokens.device)
    if model.uses_frame_tokens:
        frames = model.video_encoder.frame_proj(per_frame).repeat(n, 1, 1)  # (nB, T, Cv)
        fused = model.fusion(video, torch.cat(audios), presence, frames)
    else:
        fused = model.fusion(video, torch.cat(audios), presence)
    logits = heads.match(fused).squeeze(1)  # (nB,)
    target = torch.zeros_like(logits)
    target[:b] = 1.0
    weight = torch.full_like(logits, 1.0 / (2 * (n - 1)))  # positives and negatives weigh the same in all
    weight[:b] = 0.5
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum") / b
    accuracy = float(((logits.detach() > 0).float() == target).float().mean())
    return loss, accuracy


def video_view(video: torch.Tensor, min_scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A second view of each clip for the video-video contrast (SimCLR's augmentations, minus hue).

    Per clip, the same for all of its frames (so motion and flashing stay as they were): a random
    crop keeping the aspect ratio, each side ``[min_scale, 1]`` of the frame, resized back to the
    frame size; a horizontal flip with probability 1/2; a contrast gain in ``[0.7, 1.3]`` around
    each colour's mean over the clip and a brightness offset of ``±0.3`` (normalized units). Hue and
    saturation are left alone on purpose: colour is meaning in a street scene (red and blue lamps,
    traffic lights), and a view loss that made colours interchangeable would teach the encoder to
    ignore them.

    Args:
        video: (B, T, C, H, W) normalized clips.
        min_scale: the smallest crop side, as a fraction of the frame side, in (0, 1].
        generator: source of the random draws (CPU).

    Returns:
        (B, T, C, H, W) views, on ``video``'s device.
    """
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    b, t = video.shape[:2]
    u = torch.rand(b, 6, generator=generator).to(video.device)
    scale = min_scale + (1 - min_scale) * u[:, 0]
    flip = torch.where(u[:, 3] < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=video.device)  # output grid → input grid, coordinates in [-1, 1]
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, 0, 2], theta[:, 1, 2] = (2 * u[:, 1] - 1) * (1 - scale), (2 * u[:, 2] - 1) * (1 - scale)
    frames = video.flatten(0, 1)
    grid = F.affine_grid(theta.repeat_interleave(t, 0), list(frames.shape), align_corners=False)
    view = F.grid_sample(frames, grid, align_corners=False, padding_mode="border").unflatten(0, (b, t))
    gain = (0.7 + 0.6 * u[:, 4]).view(b, 1, 1, 1, 1)
    offset = (0.6 * u[:, 5] - 0.3).view(b, 1, 1, 1, 1)
    mean = view.mean(dim=(1, 3, 4), keepdim=True)
    return (view - mean) * gain + mean + offset


def still_copy(video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each clip frozen in time: one of its frames, drawn at random, repeated over all T frames.

    The hard negative of the view loss with ``view_still`` (DSM, Wang et al. 2021): the same scene
    as the clip, without anything that moves or flashes.

    Args:
        video: (B, T, C, H, W) clips.
        generator: source of the frame draws (CPU).

    Returns:
        (B, T, C, H, W), on ``video``'s device: ``out[b, t] == video[b, k_b]`` for every ``t``.
    """
    b, t = video.shape[:2]
    frame = torch.randint(0, t, (b,), generator=generator).to(video.device)
    return video[torch.arange(b, device=video.device), frame].unsqueeze(1).expand_as(video).contiguous()


def view_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float,
              still: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between two views: row ``i`` of ``z1`` and of ``z2`` are the same clip.

    Args:
        z1, z2: (B, D) unit embeddings of the two views.
        temperature: the softmax temperature (fixed).
        still: (B, D) unit embeddings of each clip's still copy (``still_copy`` of the second view),
            or None; row ``i`` is one more negative for clip ``i`` in both directions.

    Returns:
        The mean of the two directions' cross-entropy (``ln B`` when the embeddings are uninformative,
        ``ln(B + 1)`` with ``still``).
    """
    logits = z1 @ z2.T / temperature
    target = torch.arange(len(z1), device=z1.device)
    rows, cols = logits, logits.T
    if still is not None:  # clip i's own still, one extra column of row i
        rows = torch.cat([rows, (z1 * still).sum(dim=1, keepdim=True) / temperature], dim=1)
        cols = torch.cat([cols, (z2 * still).sum(dim=1, keepdim=True) / temperature], dim=1)
    return 0.5 * (F.cross_entropy(rows, target) + F.cross_entropy(cols, target))


# ------------------------------------------------------------------------------------------ metrics


def retrieval_metrics(similarity: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Recall@k of a query × gallery similarity matrix whose true matches lie on the diagonal.

    The rank of query ``i`` is the number of other gallery items scoring ``>=`` its true match
    (ties count against the model). Query ``i`` is a hit at ``k`` when its rank is below ``k``.

    Args:
        similarity: (N, N) scores; row = query, column = gallery item.
        ks: cut-offs.

    Raises:
        ValueError: not a square, non-empty matrix.

    Returns:
        ``{"top1": ..., "top5": ...}`` (one key per k), fractions of queries.
    """
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1] or not len(similarity):
        raise ValueError(f"need a square (N, N) similarity matrix, got {tuple(similarity.shape)}")
    true = similarity.diagonal().unsqueeze(1)  # (N, 1)
    rank = (similarity >= true).sum(dim=1) - 1  # (N,): the true item itself is always >=
    return {f"top{k}": float((rank < k).float().mean()) for k in ks}


def _shift_discrimination(video: torch.Tensor, audio: torch.Tensor, hard: torch.Tensor) -> float:
    """Fraction of rows whose true audio outscores all of its shifted copies (strictly)."""
    pos = (video * audio).sum(dim=1)  # (N,)
    neg = torch.einsum("nd,nkd->nk", video, hard)  # (N, K)
    return float((pos.unsqueeze(1) > neg).all(dim=1).float().mean())


@torch.no_grad()
def evaluate_pretrain(model: MultimodalModel, heads: ContrastiveHeads, clips: ClipCache, *, hard_negatives: int = 2,
                      min_shift_seconds: float = 0.25, view_min_scale: float = 0.7, view_still: bool = False,
                      seed: int = 0, batch_size: int = 64, device: torch.device | str = "cpu") -> dict:
    """Held-out retrieval and shift-discrimination metrics (labels ignored).

    Args:
        model: the model whose encoders are measured (eval mode for the call, then restored).
        heads: the projection heads.
        clips: the split (every clip must have audio).
        hard_negatives: shifted copies per clip for shift discrimination (at least 1 is used).
        min_shift_seconds: the smallest shift.
        view_min_scale: the crops of the second views (with a view MLP in ``heads``).
        view_still: also embed each second view's ``still_copy`` (with a view MLP in ``heads``).
        seed: seeds the shifts and views (the same every epoch, so epochs compare).
        batch_size: clips per forward pass.
        device: where the model lives.

    Returns:
        ``loss`` (the training objective over the whole split), ``a2v_top1``, ``a2v_top5``,
        ``v2a_top1``, ``shift_discrimination``, ``samples``, with a view MLP ``view_top1`` (each
        clip's second view ranks every clip's first), with ``view_still`` as well
        ``still_discrimination`` (the fraction of clips whose first view scores its moving second view
        strictly above that view's still copy), and ``chance`` (the same keys at chance).
    """
    was = model.training, heads.training
    model.eval()
    heads.eval()
    k = max(1, hard_negatives)
    min_shift = int(round(min_shift_seconds * clips.geometry.sample_rate))
    gen = torch.Generator().manual_seed(seed)
    view_gen = torch.Generator().manual_seed(seed + 1)  # its own stream: the shifts stay as without views
    still_gen = torch.Generator().manual_seed(seed + 2)  # and the views as without stills
    vs, as_, hs, w1, w2, ws = [], [], [], [], [], []
    for batch in iterate_batches(clips, batch_size):
        audio, video = batch["audio"].to(device), batch["video"].to(device)  # (B, S), (B, T, C, H, W)
        hard, _ = shifted_audio(audio, k, min_shift, gen)  # (B, K, S)
        v_tokens, per_frame = model.video_encoder.frame_features(video)
        vs.append(heads.project_video(v_tokens, per_frame))
        if heads.view_proj is not None:
            w1.append(heads.project_view(v_tokens, per_frame))
            second = video_view(video, view_min_scale, view_gen)
            w2.append(heads.project_view(*model.video_encoder.frame_features(second)))
            if view_still:
                ws.append(heads.project_view(*model.video_encoder.frame_features(still_copy(second, still_gen))))
        emb = heads.embed_audio(model, torch.cat([audio, hard.flatten(0, 1)]))  # (B(1+K), D)
        as_.append(emb[:len(audio)])
        hs.append(emb[len(audio):].reshape(len(audio), k, -1))
    model.train(was[0])
    heads.train(was[1])
    v, a, h = torch.cat(vs).float().cpu(), torch.cat(as_).float().cpu(), torch.cat(hs).float().cpu()
    n = len(v)
    loss, _ = contrastive_loss(v, a, h[:, :hard_negatives], heads.logit_scale.detach().float().cpu())
    sim = a @ v.T  # (N, N): row = audio query, column = video
    a2v, v2a = retrieval_metrics(sim, (1, 5)), retrieval_metrics(sim.T, (1,))
    out = {"loss": float(loss), "a2v_top1": a2v["top1"], "a2v_top5": a2v["top5"], "v2a_top1": v2a["top1"],
           "shift_discrimination": _shift_discrimination(v, a, h), "samples": n,
           "chance": {"a2v_top1": 1.0 / n, "a2v_top5": min(5, n) / n, "v2a_top1": 1.0 / n,
                      "shift_discrimination": 1.0 / (1 + k)}}
    if w1:  # each clip's second view ranks all N clips
        first, second = torch.cat(w1).float().cpu(), torch.cat(w2).float().cpu()
        out["view_top1"] = retrieval_metrics(second @ first.T, (1,))["top1"]
        out["chance"]["view_top1"] = 1.0 / n
    if ws:  # each clip against its own still
        still = torch.cat(ws).float().cpu()
        out["still_discrimination"] = float(((first * second).sum(1) > (first * still).sum(1)).float().mean())
        out["chance"]["still_discrimination"] = 0.5
    return out
