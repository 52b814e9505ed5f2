"""Shared, session-cached artifacts for the precision / engine / compare tests (treat as read-only).

A narrow, untrained ``fusion_student`` (the real architecture: DFT-conv audio front end, video CNN,
cross-attention) exported once, 24 synthetic labelled clips, and its FP16 / INT8 variants.
"""

from __future__ import annotations

from pathlib import Path

_CACHE: dict[str, Path] = {}

SMALL_STUDENT = dict(video_channels=(8, 8, 16, 16), audio_channels=(8, 8, 16), audio_dim=16, fusion_dim=16,
                     head_hidden=16, det_channels=8)


def student_bundle(tmp_path_factory) -> Path:
    if "bundle" not in _CACHE:
        import torch

        from fusionedge.export.pipeline import export_model
        from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS, InputGeometry
        from fusionedge.training.models.registry import create_model

        torch.manual_seed(0)
        model = create_model("fusion_student", **SMALL_STUDENT).eval()
        info = {"model_name": "fusion_student", "model_config": model.config.to_dict(),
                "geometry": InputGeometry().to_dict(),
                "labels": {"events": list(EVENTS), "audio_tags": list(AUDIO_TAGS), "objects": list(OBJECTS)},
                "metrics": {}, "epoch": 0}
        root = tmp_path_factory.mktemp("precision")
        _CACHE["bundle"] = export_model(model, info, root / "fp32", progress=False)
    return _CACHE["bundle"]


def synth_data(tmp_path_factory) -> Path:
    if "data" not in _CACHE:
        from fusionedge.training.synth.generate import generate_dataset

        out = tmp_path_factory.mktemp("precision-data") / "data"
        generate_dataset(out, 24, 0, workers=1, progress=False)
        _CACHE["data"] = out
    return _CACHE["data"]


def fp16_variant(tmp_path_factory) -> Path:
    if "fp16" not in _CACHE:
        from fusionedge.export.fp16 import fp16_bundle

        b = student_bundle(tmp_path_factory)
        _CACHE["fp16"] = fp16_bundle(b, b.parent / "fp16")
    return _CACHE["fp16"]


def int8_variant(tmp_path_factory) -> Path:
    if "int8" not in _CACHE:
        from fusionedge.export.quantize import quantize_bundle

        b = student_bundle(tmp_path_factory)
        _CACHE["int8"] = quantize_bundle(b, b.parent / "int8", synth_data(tmp_path_factory), calibration_limit=16)
    return _CACHE["int8"]
