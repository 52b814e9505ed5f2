"""The options every training run shares: data, model, optimisation and housekeeping (``RunConfig``).

``TrainConfig`` (supervised training, ``train.py``) and ``PretrainConfig`` (self-supervised
pretraining, ``pretrain.py``) both read a manifest, build a registered model, run AdamW under a
warm-up + cosine schedule and write a run folder. Those options are declared here once and
inherited, so the two loops cannot drift apart in how a shared option is spelled, checked or
saved. Each subclass may give a shared option its own default (pretraining uses larger batches)
and lists the order of its keys in ``config.json`` (``KEY_ORDER``), which stays as it has always
been: a resumed or reused run compares its saved config with the new one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from fusionedge.sdk.errors import FusionEdgeError
from fusionedge.sdk.spec import InputGeometry

__all__ = ["RunConfig"]


@dataclass
class RunConfig:
    """Options shared by supervised training and pretraining. Subclasses add their own."""

    data: Path  # manifest.jsonl, or the folder holding it
    out: Path  # run folder (created)
    val_data: Path | None = None  # held-out manifest; None: a deterministic 10% of `data`
    model: str = "fusion_student"  # registry name
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields to change
    device: str = "auto"  # "auto": cuda (cuda:LOCAL_RANK under torchrun) when available, else cpu; or e.g. "cpu"
    geometry: InputGeometry = field(default_factory=InputGeometry)
    epochs: int = 10
    batch_size: int = 32  # samples per step (per process)
    lr: float = 3e-3  # peak AdamW learning rate
    min_lr_ratio: float = 0.02  # cosine floor, as a fraction of lr
    warmup_epochs: float = 0.5  # linear warm-up
    weight_decay: float = 0.05  # on weight matrices/kernels only (not norms, biases, embeddings)
    grad_clip: float = 2.0  # max global gradient norm
    seed: int = 0
    hflip: float = 0.5  # per-sample horizontal flip probability
    audio_gain_db: float = 6.0  # random gain range, ± dB
    num_workers: int = 2  # threads decoding media into the cache
    max_train_samples: int | None = None  # use only the first N training samples
    max_val_samples: int | None = None
    progress: bool = True  # tqdm bars and one line per epoch on stderr

    #: The order of ``to_dict()``'s keys (as in the ``config.json`` files already written);
    #: fields not listed follow in declaration order.
    KEY_ORDER: ClassVar[tuple[str, ...]] = ()
    #: Fields that hold a path (``None`` allowed for all but ``data`` and ``out``).
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("data", "out", "val_data")

    def __post_init__(self) -> None:
        self._convert()
        bad = self._problems()
        if bad:
            raise FusionEdgeError(f"invalid {type(self).__name__}: " + ", ".join(bad))

    def _convert(self) -> None:
        """Accept what a JSON config holds: strings for paths, a dict for the geometry."""
        for name in self.PATH_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        if isinstance(self.geometry, dict):
            self.geometry = InputGeometry.from_dict(self.geometry)

    def _problems(self) -> list[str]:
        """Every invalid shared option, as ``name=value (need ...)``; subclasses extend the list."""
        bad = []
        if self.epochs < 1:
            bad.append(f"epochs={self.epochs} (need >= 1)")
        if self.batch_size < 1:
            bad.append(f"batch_size={self.batch_size} (need >= 1)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad.append(f"lr={self.lr} (need > 0)")
        if not 0.0 <= self.hflip <= 1.0:
            bad.append(f"hflip={self.hflip} (need 0..1)")
        bad.extend(f"geometry {problem}" for problem in self.geometry.problems())
        for name in ("max_train_samples", "max_val_samples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                bad.append(f"{name}={v} (need >= 1 or None)")
        return bad

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready data (paths as strings, the geometry as a dict), in ``KEY_ORDER``."""
        names = [f.name for f in fields(self)]
        ordered = [n for n in self.KEY_ORDER if n in names] + [n for n in names if n not in self.KEY_ORDER]
        d = {}
        for name in ordered:
            value = getattr(self, name)
            if name in self.PATH_FIELDS:
                value = None if value is None else str(value)
            elif isinstance(value, InputGeometry):
                value = value.to_dict()
            d[name] = value
        return d
