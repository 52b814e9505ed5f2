"""A tiny model that honours the FusionEdge model contract, for export / bundle / runtime tests.

It has the parts that matter for export: per-frame convolutions over a ``(B, T, 3, H, W)`` clip, a
strided 1-D convolution over the waveform, presence gating, and multi-head attention over the
modality tokens — attention is where a batch-1 export example silently fixes the batch to 1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS, InputGeometry

__all__ = ["TOY_GEOMETRY", "ToyFusionNet", "DivergentToyFusionNet", "make_toy", "shared_toy_bundle",
           "shared_toy_model", "copy_bundle"]

#: Small enough that an export takes a couple of seconds: 2 frames of 48x32, 0.25 s of 8 kHz audio.
TOY_GEOMETRY = InputGeometry(clip_frames=2, height=32, width=48, clip_seconds=0.25, sample_rate=8000,
                             output_stride=4)


class ToyFusionNet(nn.Module):
    def __init__(self, n_events: int = len(EVENTS), n_tags: int = len(AUDIO_TAGS),
                 n_objects: int = len(OBJECTS), dim: int = 16, stride: int = 4) -> None:
        super().__init__()
        self.frame = nn.Conv2d(3, dim, 3, stride=stride, padding=1)
        self.wave = nn.Conv1d(1, dim, 64, stride=32)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.event = nn.Linear(dim, n_events)
        self.tags = nn.Linear(dim, n_tags)
        self.heatmap = nn.Conv2d(2 * dim, n_objects, 1)
        self.size = nn.Conv2d(2 * dim, 2, 1)
        self.offset = nn.Conv2d(2 * dim, 2, 1)

    def forward(self, video: torch.Tensor, audio: torch.Tensor, presence: torch.Tensor):
        b, t, c, h, w = video.shape
        maps = self.frame(video.reshape(b * t, c, h, w)).relu()  # (B*T, D, h/s, w/s)
        maps = maps.reshape(b, t, *maps.shape[1:])  # (B, T, D, h', w')
        v_tok = maps.mean(dim=(3, 4)) * presence[:, None, :1]  # (B, T, D)
        a_tok = self.wave(audio[:, None]).relu().mean(-1)[:, None] * presence[:, None, 1:]  # (B, 1, D)
        tokens = torch.cat([v_tok, a_tok], 1)  # (B, T+1, D)
        fused = self.attn(tokens, tokens, tokens, need_weights=False)[0].mean(1)  # (B, D)
        last = maps[:, -1]  # (B, D, h', w') the current frame
        det = torch.cat([last, fused[:, :, None, None].expand_as(last)], 1)
        return (self.event(fused), self.tags(a_tok[:, 0]), self.heatmap(det),
                self.size(det).relu() * 4.0, self.offset(det).sigmoid())


class DivergentToyFusionNet(ToyFusionNet):
    """Computes something else while being exported, so parity with eager PyTorch must fail."""

    def forward(self, video, audio, presence):
        out = super().forward(video, audio, presence)
        if torch.compiler.is_exporting():
            return (out[0] + 0.5,) + tuple(out[1:])
        return out


def make_toy(cls: type[ToyFusionNet] = ToyFusionNet, *, seed: int = 0,
             geometry: InputGeometry = TOY_GEOMETRY) -> tuple[ToyFusionNet, dict]:
    """A seeded toy model in eval mode and the info dict ``load_checkpoint`` would return for it."""
    torch.manual_seed(seed)
    model = cls(stride=geometry.output_stride).eval()
    info = {
        "model_name": "toy",
        "model_config": {"dim": 16},
        "geometry": geometry.to_dict(),
        "labels": {"events": list(EVENTS), "audio_tags": list(AUDIO_TAGS), "objects": list(OBJECTS)},
        "metrics": {"val_accuracy": 0.5},
        "epoch": 1,
    }
    return model, info


_SHARED: dict[str, object] = {}


def shared_toy_bundle(tmp_path_factory) -> Path:
    """Export the toy model once per test session and return the bundle folder (treat as read-only).

    Test modules call this from their own session-scoped fixtures; the module-level cache makes
    every module share one export. Tests that alter a bundle copy it first (:func:`copy_bundle`).
    """
    if "bundle" not in _SHARED:
        from fusionedge.export import export_model

        model, info = make_toy()
        root = tmp_path_factory.mktemp("toy-bundle")
        _SHARED["bundle"] = export_model(model, info, root / "toy", progress=False)
        _SHARED["model"], _SHARED["info"] = model, info
    return _SHARED["bundle"]  # type: ignore[return-value]


def shared_toy_model() -> tuple[ToyFusionNet, dict]:
    """The model (and info) the shared bundle was exported from; call after :func:`shared_toy_bundle`."""
    return _SHARED["model"], _SHARED["info"]  # type: ignore[return-value]


def copy_bundle(src: Path, dest: Path) -> Path:
    """Copy a bundle folder to ``dest`` (for tests that tamper with it)."""
    import shutil

    return Path(shutil.copytree(src, dest))
