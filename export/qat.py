"""QAT to bundle: fine-tune a checkpoint with INT8 rounding simulated, export it, quantize it like PTQ.

Quantization-aware fine-tuning itself is training-side (:mod:`fusionedge.training.qat`: fake
quantization, ``finetune_qat``). Turning its result into a deployable INT8 bundle needs the
exporter and the post-training quantizer, which sit in this part: the fine-tuned FP32 model is
exported beside the target as ``<name>-fp32``, then quantized with the *same* ``quantize_static``
settings as PTQ (:mod:`fusionedge.export.quantize`), so the QAT graph has exactly the PTQ graph's
Q/DQ form (node placement, per-channel axes, zero-points) and only the weights differ.
"""

from __future__ import annotations

import os
from pathlib import Path

from fusionedge.export.pipeline import export_model
from fusionedge.export.quantize import QuantizeConfig, quantize_bundle
from fusionedge.training.qat import QATConfig, finetune_qat

__all__ = ["qat_to_bundle"]


def qat_to_bundle(
    checkpoint: str | os.PathLike, data: str | os.PathLike, calibration: str | os.PathLike,
    out_dir: str | os.PathLike, cfg: QATConfig = QATConfig(), *, limit: int | None = None,
    calibration_limit: int = 64, overwrite: bool = False, progress: bool = True,
) -> Path:
    """QAT fine-tune, export FP32 (beside ``out_dir`` as ``<name>-fp32``), then quantize with PTQ's settings.

    Args:
        checkpoint: the trained checkpoint.
        data: training data for fine-tuning.
        calibration: calibration data for the final ``quantize_static``.
        out_dir: the INT8 bundle to create.
        cfg: see :class:`~fusionedge.training.qat.QATConfig` (its ``per_channel`` / ``quantize_frontend``
            / ``weight_bits`` / ``reduce_range`` pick the PTQ settings, so the fine-tuning rounds weights
            to the grid the export uses).
        limit: fine-tuning samples.
        calibration_limit: calibration samples.
        overwrite: replace existing folders.
        progress: progress bars.

    Returns:
        ``out_dir``; its manifest's ``variant.method`` is ``"qat"``.

    Raises:
        CheckpointError: the checkpoint is invalid. DataError: a manifest is invalid.
        QATError: fine-tuning diverged. ExportError: export or quantization failed.
    """
    model, info = finetune_qat(checkpoint, data, cfg, limit=limit, progress=progress)
    out = Path(out_dir)
    fp32 = export_model(model, info, out.parent / f"{out.name}-fp32", overwrite=overwrite, progress=progress)
    qcfg = QuantizeConfig(per_channel=cfg.per_channel, exclude_frontend=not cfg.quantize_frontend,
                          weight_bits=cfg.weight_bits, reduce_range=cfg.reduce_range)
    return quantize_bundle(fp32, out, calibration, config=qcfg, calibration_limit=calibration_limit,
                           extra_manifest={"method": "qat", "qat": info["extra"]["qat"]}, overwrite=overwrite)
