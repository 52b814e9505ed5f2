"""PyTorch module -> ``model.onnx``, and the structural checks the file must pass.

Two steps, each a small function:

1. :func:`export_onnx` writes one self-contained ONNX file (opset 18, weights inside) with the
   torch.export-based exporter, from a **batch-2** example and a dynamic batch dimension. (With a
   batch-1 example the exporter can silently fix the batch to 1 — e.g. through attention layers — and
   the ONNX checker still passes; that is why the parity step runs batch 1 *and* 3.) Nodes that
   compute from parameters alone are folded into initializers (:func:`fold_constants`).
2. :func:`check_onnx` runs ``onnx.checker`` with ``full_check`` (shape inference included) and checks
   what the runtime relies on: the contract's input/output names in order and a symbolic batch dim.

:func:`example_inputs` makes the deterministic random inputs that export, parity and the golden
file share.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusionedge.sdk.errors import FusionEdgeError
from fusionedge.sdk.spec import INPUT_NAMES, OUTPUT_NAMES, InputGeometry

__all__ = ["ExportError", "OPSET", "MAX_BATCH", "example_inputs", "export_onnx", "check_onnx", "fold_constants",
           "model_output_names"]

#: ONNX opset written (the dynamo exporter writes 18 whatever older value is asked for).
OPSET = 18
#: Largest batch the exported graph is declared for (also the bundle's ``batch.max``).
MAX_BATCH = 32
#: Largest tensor (elements) that :func:`fold_constants` reads or writes; far above any weight of the registry's models.
_FOLD_LIMIT = 1 << 24

# Presence patterns cycled over a batch: both, video only, audio only (order: video, audio).
_PRESENCE = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]], np.float32)


class ExportError(FusionEdgeError):
    """Exporting a model failed, or the exported model failed a check (checker, names, parity)."""


def example_inputs(geometry: InputGeometry, batch: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random model inputs that exercise every presence pattern.

    Video is standard-normal (like normalized pixels); audio is a waveform in [-0.5, 0.5]; sample
    ``i`` gets presence pattern ``i % 3`` of (both, video only, audio only), with the missing
    modality's tensor zeroed as the runtime does.

    Args:
        geometry: the model's input geometry.
        batch: batch size, >= 1.
        seed: NumPy seed.

    Returns:
        ``{"video": (B, T, 3, H, W), "audio": (B, S), "presence": (B, 2)}``, all float32.

    Raises:
        ExportError: ``batch`` < 1.
    """
    if batch < 1:
        raise ExportError(f"batch must be >= 1, got {batch}")
    rng = np.random.default_rng(seed)
    g = geometry
    video = rng.standard_normal((batch, g.clip_frames, 3, g.height, g.width), dtype=np.float32)
    audio = (rng.random((batch, g.audio_samples), dtype=np.float32) - 0.5).astype(np.float32)
    presence = _PRESENCE[np.arange(batch) % len(_PRESENCE)].copy()
    video *= presence[:, 0, None, None, None, None]
    audio *= presence[:, 1, None]
    return {"video": video, "audio": audio, "presence": presence}


def export_onnx(
    model: nn.Module,
    geometry: InputGeometry,
    path: str | os.PathLike,
    *,
    example_batch: int = 2,
    max_batch: int = MAX_BATCH,
) -> Path:
    """Export a contract model ``model(video, audio, presence) -> outputs`` to one ONNX file.

    The outputs are the model's ``output_names`` (the contract's five, less the heads a task
    lacks; a model without the attribute returns all five).

    Args:
        model: the PyTorch model (put in eval mode here).
        geometry: its input geometry (shapes of the example inputs).
        path: the ``.onnx`` file to write (weights inside, no side files).
        example_batch: batch of the example inputs. Keep 2: a batch-1 example may fix the batch to 1.
        max_batch: upper bound of the dynamic batch dimension.

    Returns:
        ``path``.

    Raises:
        ExportError: the exporter failed (the cause is chained); no partial file is left.
    """
    path = Path(path)
    model.eval()
    inputs = example_inputs(geometry, example_batch, seed=0)
    args = tuple(torch.from_numpy(inputs[name]) for name in INPUT_NAMES)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # exporter internals, not actionable here
            # The three inputs share one Dim, so the exporter notes that it names the axis once.
            warnings.filterwarnings("ignore", message=r"# The axis name: batch will not be used")
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=True,
                opset_version=OPSET,
                external_data=False,
                input_names=list(INPUT_NAMES),
                output_names=list(model_output_names(model)),
                dynamic_shapes=tuple({0: batch} for _ in INPUT_NAMES),
                verbose=False,
            )
    except Exception as e:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"torch.onnx.export failed for {type(model).__name__}: {type(e).__name__}: {e}"
        ) from e
    if not path.is_file():
        raise ExportError(f"torch.onnx.export wrote no file at {path}")
    import onnx

    from fusionedge.export.onnx_compact import compact_model

    try:  # fold weight arithmetic, strip per-node debug metadata, generate the DFT kernels in-graph
        proto = onnx.load(str(path))
        fold_constants(proto)
        compact_model(proto)
        onnx.save(proto, str(path))
    except Exception as e:
        path.unlink(missing_ok=True)
        raise ExportError(f"compacting the exported ONNX failed: {type(e).__name__}: {e}") from e
    return path


def fold_constants(proto: Any) -> None:
    """Fold every node whose inputs are all constants into an initializer, in place, whatever its size.

    A model may compute a weight from its parameters (a slice of a packed projection, a scale folded
    into it); the exporter folds such nodes only for small tensors, which would leave a ``Slice`` or
    ``Mul`` between an initializer and the ``MatMul`` reading it. Folded, every weight is a plain
    initializer of its operator: the graph has fewer nodes, and the INT8 tools (which look for
    weights as initializers) see every weight. Runtimes fold the same nodes when they load a model,
    so what it computes does not change.

    Args:
        proto: an ``onnx.ModelProto`` from :func:`export_onnx`.
    """
    from onnxscript.optimizer import fold_constants as fold

    fold(proto, input_size_limit=_FOLD_LIMIT, output_size_limit=_FOLD_LIMIT)


def model_output_names(model: nn.Module) -> tuple[str, ...]:
    """The outputs a contract model returns: its ``output_names``, or all of ``OUTPUT_NAMES``."""
    return tuple(getattr(model, "output_names", OUTPUT_NAMES))


def check_onnx(path: str | os.PathLike, output_names: tuple[str, ...] = OUTPUT_NAMES) -> None:
    """Check an exported file: ONNX checker (full), contract names in order, symbolic batch dims, opset.

    Args:
        path: the ``.onnx`` file.
        output_names: the outputs it must have, in order (``model_output_names`` of the source model).

    Raises:
        ExportError: naming the file and what is wrong (a fixed batch dimension says how to fix it).
    """
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ExportError(f"{path.name}: ONNX checker failed: {e}") from e
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != list(INPUT_NAMES) or outputs != list(output_names):
        raise ExportError(
            f"{path.name}: inputs {inputs} and outputs {outputs} do not match the contract "
            f"{list(INPUT_NAMES)} -> {list(output_names)}"
        )
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            fixed = dims[0].dim_value if dims else "missing"
            raise ExportError(
                f"{path.name}: '{value.name}' has a fixed batch dimension ({fixed}); the exporter "
                f"specialized the batch — export with a batch-2 example (a batch-1 example can fix it to 1)"
            )
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != OPSET:
        raise ExportError(f"{path.name}: expected ONNX opset {OPSET}, got {opsets}")
