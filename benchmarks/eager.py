"""The PyTorch eager baseline: the bundle's own model, run by the framework it was trained in.

A bundle holds only ONNX, so the eager model is rebuilt from the bundle's ``source`` (``model_name``
and ``model_config``, through ``fusionedge.training.models.create_model``) and given the weights of
the checkpoint the bundle was exported from. That checkpoint is found, in order:

1. the path the caller passes (``--checkpoint``);
2. ``source.checkpoint_path`` in the manifest, if an exporter recorded one;
3. ``<bundle>/../run/best.pt`` (the layout ``fusionedge quickstart`` writes).

A found checkpoint is used only when its SHA-256 equals the manifest's ``source.checkpoint_sha256``
(a checkpoint passed explicitly is also accepted when the bundle records no hash), and only when the
rebuilt model reproduces the bundle's golden outputs within the bundle's own tolerance — so the
baseline is provably the same model. Otherwise the baseline is skipped and the reason recorded.

torch and ``fusionedge.training`` are imported only here, only when a baseline is built.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.sdk.bundle import Bundle, sha256_file

__all__ = ["EAGER_NAME", "EagerBaseline", "EagerStatus", "find_checkpoint", "load_eager_baseline"]

#: The name the baseline carries in results (it is not an SDK backend).
EAGER_NAME = "torch-eager"


@dataclass(frozen=True)
class EagerStatus:
    """Whether the eager baseline ran, and why not if it did not."""

    ran: bool
    reason: str | None = None  # why it was skipped
    checkpoint: str | None = None
    torch_version: str | None = None
    threads: int | None = None
    golden_max_abs_diff: float | None = None  # eager vs the bundle's golden outputs

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "ran" if self.ran else "skipped",
            "reason": self.reason,
            "checkpoint": self.checkpoint,
            "torch_version": self.torch_version,
            "threads": self.threads,
            "golden_max_abs_diff": self.golden_max_abs_diff,
        }


class EagerBaseline:
    """A torch module behind the pipelines' engine interface (``name``, ``infer(feeds)``).

    Args:
        model: the module, in eval mode.
        output_names: names of the module's outputs, in order (the contract's output names).
    """

    name = EAGER_NAME

    def __init__(self, model: Any, output_names: tuple[str, ...]) -> None:
        import torch

        self._torch = torch
        self.model = model
        self.output_names = output_names
        self.restore_threads: int | None = None  # torch's thread count to restore on close

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the module on ``{video, audio, presence}`` arrays; returns numpy outputs by name."""
        torch = self._torch
        with torch.inference_mode():
            outs = self.model(
                *(torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in ("video", "audio", "presence"))
            )
        return {n: o.numpy() for n, o in zip(self.output_names, outs, strict=True)}

    def close(self) -> None:
        """Drop the model and give torch back the thread count it had before the baseline was built."""
        self.model = None
        if self.restore_threads is not None:
            self._torch.set_num_threads(self.restore_threads)
            self.restore_threads = None


def find_checkpoint(bundle: Bundle, explicit: str | Path | None = None) -> tuple[Path | None, str]:
    """Find the checkpoint a bundle was exported from.

    Args:
        bundle: the loaded bundle.
        explicit: a checkpoint path the caller named (takes precedence).

    Returns:
        ``(path, note)``: the checkpoint and how it was matched, or ``(None, reason)``.
    """
    source = bundle.manifest["source"]
    want = source.get("checkpoint_sha256")
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            return None, f"checkpoint {path} does not exist"
        if want is None:
            return path, f"{path} (unverified by hash: the bundle records no checkpoint_sha256)"
        got = sha256_file(path)
        if got != want:
            return None, (
                f"checkpoint {path} has sha256 {got[:12]}…, but the bundle was exported from "
                f"{want[:12]}…: not the bundle's model"
            )
        return path, f"{path} (sha256 matches the bundle)"
    if want is None:
        return None, (
            "the bundle records no source checkpoint (exported from an in-memory model); "
            "pass --checkpoint to build the eager baseline"
        )
    candidates = []
    if isinstance(source.get("checkpoint_path"), str):
        p = Path(source["checkpoint_path"])
        candidates.append(p if p.is_absolute() else bundle.path / p)
    candidates.append(bundle.path.resolve().parent / "run" / "best.pt")
    for path in candidates:
        if path.is_file() and sha256_file(path) == want:
            return path, f"{path} (sha256 matches the bundle)"
    looked = ", ".join(str(c) for c in candidates)
    return None, (
        f"no checkpoint with the bundle's sha256 {want[:12]}… found (looked at {looked}); pass --checkpoint"
    )


def load_eager_baseline(
    bundle: Bundle, checkpoint: str | Path | None = None, *, threads: int | None = None
) -> tuple[EagerBaseline | None, EagerStatus]:
    """Build the eager baseline for ``bundle``, or say why it cannot be built.

    Args:
        bundle: the loaded bundle.
        checkpoint: an explicit checkpoint path (see the module docstring for the search order).
        threads: ``torch.set_num_threads`` (None keeps torch's default).

    Returns:
        ``(baseline, status)``; ``baseline`` is None when ``status.ran`` is False.
    """
    if bundle.task != "fusion":
        return None, EagerStatus(
            False,
            f"{bundle.model_id} is an imported {bundle.task} model: only its ONNX travels with the bundle, "
            f"there is no PyTorch source to run eagerly",
        )
    if importlib.util.find_spec("torch") is None:
        return None, EagerStatus(False, "torch is not installed (pip install 'fusionedge[train]')")
    path, note = find_checkpoint(bundle, checkpoint)
    if path is None:
        return None, EagerStatus(False, note)
    import torch
    from fusionedge.sdk.errors import FusionEdgeError

    try:
        from fusionedge.training.checkpoint import read_checkpoint
        from fusionedge.training.models import create_model
    except ImportError as e:
        return None, EagerStatus(False, f"fusionedge.training does not import: {e}", checkpoint=str(path))
    source = bundle.manifest["source"]
    try:
        model = create_model(source["model_name"], **dict(source["model_config"]))
        state = read_checkpoint(path)
        model.load_state_dict(state["state_dict"], strict=True)
    except (FusionEdgeError, RuntimeError, TypeError, ValueError) as e:
        detail = " ".join(str(e).split())  # torch's multi-line state_dict messages, on one line
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        return None, EagerStatus(
            False,
            f"cannot rebuild {source['model_name']!r} from the bundle's source "
            f"with the checkpoint's weights: {type(e).__name__}: {detail}",
            checkpoint=note,
        )
    model.eval()
    baseline = EagerBaseline(model, tuple(o["name"] for o in bundle.outputs))
    inputs, expected = bundle.golden()
    got = baseline.infer(inputs)
    golden = bundle.manifest["golden"]
    worst = 0.0
    for name, ref in expected.items():
        diff = np.abs(got[name].astype(np.float64) - ref.astype(np.float64))
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
        if not np.all(diff <= float(golden["atol"]) + float(golden["rtol"]) * np.abs(ref)):
            return None, EagerStatus(
                False,
                f"the rebuilt eager model differs from the bundle's golden output "
                f"{name!r} by up to {worst:.3g}: not the same model",
                checkpoint=note,
                golden_max_abs_diff=worst,
            )
    if threads is not None:  # process-wide in torch: restored by baseline.close()
        baseline.restore_threads = torch.get_num_threads()
        torch.set_num_threads(int(threads))
    return baseline, EagerStatus(
        True,
        None,
        checkpoint=note,
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        golden_max_abs_diff=worst,
    )
