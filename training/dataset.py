"""Training data: decode a manifest once into memory, then serve augmented, normalized batches.

Decoding uses the runtime's one definition of preprocessing (``fusionedge.sdk.media`` /
``fusionedge.sdk.preprocess``), so the model trains on exactly what a device feeds it:

1. ``load_clips(manifest, geometry)`` reads every sample ONCE: the clip's ``T`` frames
   already preprocessed by the runtime's ``preprocess_video`` (``clip_frame_indices`` +
   ``preprocess_frame``: resized, normalized float32 CHW, the very function a device calls per
   frame), the mono 16 kHz window (``preprocess_audio``), the labels, and the boxes scaled to
   model-input pixels with their CenterNet targets (``encode_centernet_targets``). A synthetic set
   of 2,000 clips at the default geometry is ~1.5 GB.
2. ``iterate_batches(clips, batch_size, ...)`` draws batches from that cache: optional horizontal
   flip (boxes and targets flipped with it), audio gain, and **modality dropout** (per sample, with
   probability ``modality_dropout``, the video or the audio — never both — is zeroed and its presence
   set to 0, as a missing sensor looks at run time). Flipping a normalized frame equals normalizing
   the flipped frame (the resize and the normalization act per pixel / per axis).
3. **New renderings of the sound** (``Augment.audio_variants``, ``audio_resynth.py``): a generator's
   clip may come with more renderings of its scene's sound (same event and tags); each draw hears
   one of them or its own, so a clip is not learnt by its one tone or ringtone.
4. **Siren swap** (``Augment.siren_swap``, ``siren_swap.py``): with that probability a generator's
   clip hears the rest of its scene without its siren, or with another clip's siren, and its event
   and siren tag follow the sound, so the same tone or voice is heard under both labels. With
   ``Augment.clutter_swap`` such a clip also hears another clip's untagged sound (a tone, a
   ringtone, music ...) or none in place of its own, no label following, so the tonal sounds a
   siren is mistaken for meet every siren and every scene instead of the one they were rendered in.
5. **Background mixing** (``Augment.background_mix``): with that probability a sample also hears the
   sound of another training clip that carries none of ``mix_exclude_tags`` (by default: no
   siren), at -12 to 0 dB. The event stays what it was, because the added sound holds no siren,
   and the tags become both clips' (a tag is decided by the sound alone). A model that must tell a
   siren from a ringtone, a steady tone or a chord then hears each of those sounds with and without
   a siren many times per epoch instead of once.

A sample without an audio file has a zero waveform and audio presence 0; an audio-only sample (no
video file) has zero frames and video presence 0, as a missing sensor looks at run time.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from fusionedge.sdk.errors import DataError
from fusionedge.sdk.evaluate import load_sample_inputs
from fusionedge.sdk.postprocess import encode_centernet_targets
from fusionedge.sdk.preprocess import scale_boxes
from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS, InputGeometry

from .audio_warp import warp_audio, warp_factors
from .losses import IGNORE_INDEX
from .siren_swap import SirenSwap, swap_sirens
from .sound_naming import UNNAMED

__all__ = ["Labels", "ClipCache", "Augment", "load_clips", "split_for_validation", "iterate_batches",
           "flipped_boxes", "background_pool"]


@dataclass(frozen=True)
class Labels:
    """The label vocabularies a model is trained with (defaults: ``sdk.spec``)."""

    events: tuple[str, ...] = EVENTS
    audio_tags: tuple[str, ...] = AUDIO_TAGS
    objects: tuple[str, ...] = OBJECTS

    def to_dict(self) -> dict[str, list[str]]:
        return {"events": list(self.events), "audio_tags": list(self.audio_tags), "objects": list(self.objects)}


@dataclass
class ClipCache:
    """Decoded samples of one split, in memory. ``N`` samples; shapes per field."""

    ids: list[str]
    video: torch.Tensor  # (N, T, 3, H, W) float32, preprocess_video's output; frame T-1 is the current one
    audio: torch.Tensor  # (N, S) float32 mono at geometry.sample_rate
    has_audio: torch.Tensor  # (N,) bool: the sample has an audio file
    event: torch.Tensor  # (N,) int64 class index, IGNORE_INDEX where unlabelled
    audio_tags: torch.Tensor  # (N, A) float32 multi-hot
    boxes: list[np.ndarray]  # per sample (K, 4) float64 x1,y1,x2,y2 in model-input pixels (last frame)
    box_labels: list[np.ndarray]  # per sample (K,) int64 object class indices
    targets: dict[str, torch.Tensor]  # heatmap (N,C,h,w), size (N,2,h,w), offset (N,2,h,w), mask (N,h,w)
    geometry: InputGeometry
    labels: Labels
    has_video: torch.Tensor | None = None  # (N,) bool: the sample has a video file; None: all have one
    # (N, R, S) float32: R more renderings of each clip's sound with the same labels (audio_resynth.py)
    audio_variants: torch.Tensor | None = None
    siren_swap: SirenSwap | None = None  # each row's sound taken apart at its siren (siren_swap.py)
    # (N,) int64: each row's untagged sound, a class of sound_naming.SOUND_NAMES (-1: not known)
    sound_names: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation (all per sample)."""

    modality_dropout: float = 0.1  # probability of zeroing video or audio (50/50, never both)
    hflip: float = 0.5  # probability of a horizontal flip (frames, boxes, targets)
    audio_gain_db: float = 6.0  # gain drawn uniformly from ±this many dB (result clipped to [-1, 1])
    background_mix: float = 0.0  # probability of adding the sound of a clip without any mix_exclude_tags
    mix_exclude_tags: tuple[str, ...] = ("siren",)  # tags a background clip must not carry (they decide events)
    mix_gain_db: tuple[float, float] = (-12.0, 0.0)  # the added sound's gain, drawn uniformly in dB
    audio_warp: float = 0.0  # resample each clip's sound by a factor log-uniform in [1/(1+w), 1+w] (audio_warp.py)
    # hear one of the clip's sounds (its own or one of ClipCache.audio_variants), uniformly, when it has them
    audio_variants: bool = False
    # probability of swapping a clip's siren (its rest of the sound with another clip's siren or none;
    # the event and siren tag follow), when ClipCache.siren_swap holds the parts
    siren_swap: float = 0.0
    # probability that a swapped clip also hears another clip's untagged sound (or none) in place of its own
    clutter_swap: float = 0.0


def background_pool(clips: ClipCache, exclude_tags: Sequence[str]) -> torch.Tensor:
    """Indices of the clips whose sound may be mixed into another: with audio and none of ``exclude_tags``.

    Args:
        clips: the decoded split.
        exclude_tags: audio tags whose sound decides an event (a siren); a clip carrying one is no background.

    Raises:
        DataError: none of ``exclude_tags`` is one of the split's audio tags (mixing would then add
            sounds that may decide an event), or no clip qualifies.

    Returns:
        ``(P,)`` int64 indices into ``clips``.
    """
    known = [clips.labels.audio_tags.index(t) for t in exclude_tags if t in clips.labels.audio_tags]
    if not known:
        raise DataError(f"background mixing needs an audio tag that marks the event's sound "
                        f"({', '.join(exclude_tags) or 'none given'}); the task's tags are "
                        f"{list(clips.labels.audio_tags)}")
    ok = clips.has_audio & (clips.audio_tags[:, known].sum(dim=1) == 0)
    pool = torch.nonzero(ok).flatten()
    if len(pool) == 0:
        raise DataError(f"background mixing: no training clip has audio without {', '.join(exclude_tags)}")
    return pool


def split_for_validation(samples: Sequence, fraction: float = 0.1) -> tuple[list, list]:
    """Deterministic train/validation split by a hash of each sample id (independent of order and seed).

    Args:
        samples: objects with an ``id`` attribute.
        fraction: share of samples that go to validation, in (0, 1).

    Returns:
        ``(train, val)``; ``val`` has at least one sample and ``train`` keeps at least one when
        there are two or more.
    """
    buckets = 10_000
    cut = int(round(fraction * buckets))

    def bucket(s) -> int:
        return int(hashlib.sha256(str(s.id).encode()).hexdigest()[:8], 16) % buckets

    train = [s for s in samples if bucket(s) >= cut]
    val = [s for s in samples if bucket(s) < cut]
    if not val and len(train) > 1:
        val = [train.pop()]
    return train, val


def _index(name: str, vocab: Sequence[str], what: str, sample_id: str) -> int:
    try:
        return vocab.index(name)
    except ValueError:
        raise DataError(f"sample {sample_id!r}: unknown {what} {name!r}; the model knows {list(vocab)}") from None


def _decode(sample, geometry: InputGeometry, labels: Labels) -> dict:
    """Decode one manifest sample into cache entries (numpy)."""
    # (T, 3, H, W), (S,): exactly what the runtime feeds the model for this sample
    frames, audio, _, (frame_w, frame_h) = load_sample_inputs(sample, geometry)
    sid = str(sample.id)
    event = IGNORE_INDEX if sample.event is None else _index(sample.event, labels.events, "event", sid)
    tags = np.zeros(len(labels.audio_tags), np.float32)
    for t in sample.audio_tags:
        tags[_index(t, labels.audio_tags, "audio tag", sid)] = 1.0
    if sample.boxes:
        raw = np.array([[b.x1, b.y1, b.x2, b.y2] for b in sample.boxes], np.float64)
        boxes = scale_boxes(raw, (frame_w, frame_h), (geometry.width, geometry.height))
        box_labels = np.array([_index(b.label, labels.objects, "object", sid) for b in sample.boxes], np.int64)
    else:
        boxes, box_labels = np.zeros((0, 4)), np.zeros((0,), np.int64)
    targets = _targets(boxes, box_labels, geometry, labels)
    return {"id": sid, "video": frames, "audio": audio, "has_audio": sample.audio is not None,
            "has_video": sample.video is not None, "event": event,
            "tags": tags, "boxes": boxes, "box_labels": box_labels, "targets": targets}


def _targets(boxes: np.ndarray, box_labels: np.ndarray, geometry: InputGeometry, labels: Labels) -> dict:
    """CenterNet targets of one sample; a task without object classes gets empty ones (no detection head)."""
    if not labels.objects:
        h, w = geometry.heatmap_size
        return {"heatmap": np.zeros((0, h, w), np.float32), "size": np.zeros((2, h, w), np.float32),
                "offset": np.zeros((2, h, w), np.float32), "mask": np.zeros((h, w), np.float32)}
    return encode_centernet_targets(boxes, box_labels, num_classes=len(labels.objects),
                                    heatmap_hw=geometry.heatmap_size, stride=geometry.output_stride)


def load_clips(samples: Sequence, geometry: InputGeometry, labels: Labels = Labels(), *, workers: int = 1,
               progress: bool = True, desc: str = "decode") -> ClipCache:
    """Decode samples (from ``read_manifest``) into an in-memory ``ClipCache``.

    Args:
        samples: manifest samples (``id, video, audio, event, audio_tags, boxes``).
        geometry: the model input geometry.
        labels: label vocabularies; a label outside them is an error.
        workers: decoding threads (OpenCV and NumPy release the GIL).
        progress: show a tqdm bar on stderr.
        desc: the bar's title.

    Raises:
        DataError: no samples, or a sample uses an unknown label.
        MediaError: a media file cannot be decoded.

    Returns:
        The cache.
    """
    if not samples:
        raise DataError("no samples to load")
    # The clips' video and audio go straight into arrays of the final size as they are decoded: the
    # decoded clips are never held twice (a list of them and the stacked copy), which halved the peak
    # memory of a large training set.
    n = len(samples)
    video: np.ndarray | None = None
    audio: np.ndarray | None = None
    items = []
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        decoded = pool.map(lambda s: _decode(s, geometry, labels), samples)
        for i, it in enumerate(tqdm(decoded, total=n, desc=desc, unit="clip", disable=not progress, leave=False)):
            if video is None:
                video = np.empty((n, *it["video"].shape), it["video"].dtype)
                audio = np.empty((n, *it["audio"].shape), np.float32)
            video[i], audio[i] = it.pop("video"), it.pop("audio")
            items.append(it)
    assert video is not None and audio is not None
    return ClipCache(
        ids=[it["id"] for it in items],
        video=torch.from_numpy(video),
        audio=torch.from_numpy(audio),
        has_audio=torch.tensor([it["has_audio"] for it in items], dtype=torch.bool),
        event=torch.tensor([it["event"] for it in items], dtype=torch.int64),
        audio_tags=torch.from_numpy(np.stack([it["tags"] for it in items])),
        boxes=[it["boxes"] for it in items],
        box_labels=[it["box_labels"] for it in items],
        targets={k: torch.from_numpy(np.stack([it["targets"][k] for it in items]))
                 for k in ("heatmap", "size", "offset", "mask")},
        geometry=geometry,
        labels=labels,
        has_video=torch.tensor([it["has_video"] for it in items], dtype=torch.bool),
    )


def iterate_batches(clips: ClipCache, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, augment: Augment | None = None,
                    drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Yield batches from the cache.

    Args:
        clips: the decoded split.
        batch_size: samples per batch, >= 1.
        shuffle: draw a random order (from ``generator``).
        generator: the source of all randomness (order and augmentation); required when
            ``shuffle`` or ``augment`` is used, so runs are reproducible.
        augment: augmentation, or ``None`` for none (validation).
        drop_last: skip a last incomplete batch.

    Raises:
        ValueError: a bad batch size, or randomness asked for without a generator.

    Yields:
        ``video`` (B,T,3,H,W) float32 normalized, ``audio`` (B,S), ``presence`` (B,2), ``event`` (B,),
        ``audio_tags`` (B,A), ``heatmap`` (B,C,h,w), ``size`` (B,2,h,w), ``offset`` (B,2,h,w),
        ``mask`` (B,h,w), ``index`` (B,) positions in the cache, ``flipped`` (B,) bool: the samples
        mirrored by the augmentation (all False without ``augment``); with ``clips.sound_names``,
        ``sound_name`` (B,): each draw's untagged sound as heard (``sound_naming.UNNAMED`` where its
        audio was dropped or mixed with another clip's).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if (shuffle or augment is not None) and generator is None:
        raise ValueError("shuffle/augment need a torch.Generator for reproducibility")
    n = len(clips)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    pool = None
    if augment is not None and augment.background_mix > 0:
        pool = background_pool(clips, augment.mix_exclude_tags)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield _make_batch(clips, idx, generator, augment, pool)


def _make_batch(clips: ClipCache, idx: torch.Tensor, generator: torch.Generator | None,
                augment: Augment | None, pool: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    b = len(idx)
    frames = clips.video[idx]  # (B, T, 3, H, W) float32 normalized (a copy)
    audio = clips.audio[idx].clone()  # (B, S)
    if augment is not None and augment.audio_variants and clips.audio_variants is not None:
        # drawn only with variants, so runs without them keep their random stream; 0: the clip's own sound
        pick = torch.randint(clips.audio_variants.shape[1] + 1, (b,), generator=generator)  # (B,)
        other = pick > 0
        if other.any():
            audio[other] = clips.audio_variants[idx[other], pick[other] - 1]
    tags = clips.audio_tags[idx]  # (B, A) (a copy)
    event = clips.event[idx]  # (B,) (a copy)
    names = None if clips.sound_names is None else clips.sound_names[idx]  # (B,) (a copy)
    video_on = torch.ones(b) if clips.has_video is None else clips.has_video[idx].float()  # (B,)
    presence = torch.stack([video_on, clips.has_audio[idx].float()], dim=1)  # (B, 2)
    targets = {k: v[idx].clone() for k, v in clips.targets.items()}
    flip = torch.zeros(b, dtype=torch.bool)
    if augment is not None:
        # Draw every random number up front, in a fixed order, so a batch depends only on the generator.
        u_flip, u_drop, u_which, u_gain = torch.rand(4, b, generator=generator)
        flip = u_flip < augment.hflip
        if flip.any():
            frames[flip] = frames[flip].flip(4)
            _flip_targets(clips, idx, flip, targets)
        if augment.siren_swap > 0 and clips.siren_swap is not None:  # drawn only when swapping (same stream otherwise)
            swap_sirens(clips.siren_swap, augment.siren_swap, idx, audio, event, tags, generator,
                        clutter_probability=augment.clutter_swap, names=names)
        if pool is not None:  # drawn only when mixing, so runs without it keep their random stream
            u_mix, u_mix_gain = torch.rand(2, b, generator=generator)
            donor = pool[torch.randint(len(pool), (b,), generator=generator)]  # (B,)
            mix = (u_mix < augment.background_mix) & clips.has_audio[idx]
            if mix.any():
                lo, hi = augment.mix_gain_db
                g_mix = 10.0 ** ((lo + (hi - lo) * u_mix_gain[mix]) / 20.0)  # (M,)
                audio[mix] = audio[mix] + g_mix.unsqueeze(1) * clips.audio[donor[mix]]
                tags[mix] = torch.maximum(tags[mix], clips.audio_tags[donor[mix]])
                if names is not None:  # two clips' untagged sounds: no one name
                    names[mix] = UNNAMED
        if augment.audio_warp > 0:  # drawn only when warping, so runs without it keep their random stream
            audio = warp_audio(audio, warp_factors(torch.rand(b, generator=generator), augment.audio_warp))
        gain = 10.0 ** ((u_gain * 2.0 - 1.0) * augment.audio_gain_db / 20.0)  # (B,)
        audio = (audio * gain.unsqueeze(1)).clamp(-1.0, 1.0)
        drop = u_drop < augment.modality_dropout
        drop_audio = drop & (u_which < 0.5) & (presence[:, 1] > 0) & (presence[:, 0] > 0)
        drop_video = drop & ~drop_audio & (presence[:, 1] > 0)  # never leave a sample with nothing
        presence[drop_video, 0] = 0.0
        presence[drop_audio, 1] = 0.0
        if names is not None:
            names[drop_audio] = UNNAMED
    video = frames * presence[:, 0].reshape(-1, 1, 1, 1, 1)  # a missing modality's tensor is zeros
    audio = audio * presence[:, 1].reshape(-1, 1)
    batch = {"video": video, "audio": audio, "presence": presence, "event": event,
             "audio_tags": tags, **targets, "index": idx, "flipped": flip}
    if names is not None:
        batch["sound_name"] = names
    return batch


def _flip_targets(clips: ClipCache, idx: torch.Tensor, flip: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
    """Re-encode the CenterNet targets of the flipped samples from their mirrored boxes (exact cells)."""
    g = clips.geometry
    if not clips.labels.objects:  # no detection head: nothing to re-encode
        return
    for j in torch.nonzero(flip).flatten().tolist():
        i = int(idx[j])
        t = encode_centernet_targets(flipped_boxes(clips.boxes[i], g.width), clips.box_labels[i],
                                     num_classes=len(clips.labels.objects), heatmap_hw=g.heatmap_size,
                                     stride=g.output_stride)
        for k, v in t.items():
            targets[k][j] = torch.from_numpy(v)


def flipped_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror ``(K, 4)`` x1,y1,x2,y2 boxes horizontally in an image ``width`` pixels wide."""
    out = np.asarray(boxes, dtype=np.float64).copy()
    out[:, [0, 2]] = width - out[:, [2, 0]]
    return out
