"""Turn a user's own ONNX model into a bundle: ``fusionedge import``.

A classifier, a YOLO-style or CenterNet detector, or an audio classifier exported by any framework
becomes a schema-2 bundle that every runtime tool serves like the project's own model. The manifest
declares what the model cannot say for itself — the input's modality, layout, colour order, size,
``scale`` / ``mean`` / ``std`` (or its sample rate and length), the decoder of each output and the
label list it scores — from a ``preset`` (``yolov8``, ``yolo11``, ``yolov5``, ``centernet``,
``imagenet``) and an ``--input`` declaration. Everything is checked against the ONNX graph before
anything is written (the label count against the output's class count, the declared size and layout
against the input's shape), then the model runs on ONNX Runtime on seeded inputs to record the golden
outputs, and the bundle is written and verified atomically by
:func:`~fusionedge.export.bundle_writer.write_bundle_folder`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.export.bundle_writer import (
    check_target,
    git_rev,
    package_version,
    utc_now,
    write_bundle_folder,
)
from fusionedge.export.import_spec import PRESETS, TASK_DEFAULTS, InputDecl
from fusionedge.export.onnx_export import MAX_BATCH, ExportError
from fusionedge.sdk.bundle import GOLDEN_NAME, SCHEMA_VERSION, Bundle, sha256_file
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.fileio import json_safe
from fusionedge.sdk.generic import GENERIC_TASKS, GenericModel
from fusionedge.sdk.image_input import ImageSpec, preprocess_image
from fusionedge.sdk.spec import InputGeometry

__all__ = ["import_onnx"]

#: Golden tolerances of an imported model (ONNX Runtime on the same CPU reproduces it closely).
GOLDEN_RTOL, GOLDEN_ATOL = 1e-3, 1e-4


# ------------------------------------------------------------------------------------ the model


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int | str, ...]  # an int is fixed; a str is named or unknown ("?")
    dtype: str


def _graph_io(path: Path) -> tuple[list[_Tensor], list[_Tensor], Any]:
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ExportError(f"{path.name}: cannot be read as ONNX: {type(e).__name__}: {e}") from e
    inits = {t.name for t in model.graph.initializer}

    def tensors(values: Sequence[Any]) -> list[_Tensor]:
        out = []
        for v in values:
            if v.name in inits:
                continue
            t = v.type.tensor_type
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim
            )
            out.append(_Tensor(v.name, dims, str(helper.tensor_dtype_to_np_dtype(t.elem_type))))
        return out

    return tensors(model.graph.input), tensors(model.graph.output), model


def _fixed(dim: int | str) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _resolve_input(tensor: _Tensor, decl: InputDecl, task: str) -> InputDecl:
    """Fill the declaration from the model's input shape, refusing one that disagrees with it."""
    where = f"input {tensor.name!r} {list(tensor.shape)}"
    if decl.name is not None and decl.name != tensor.name:
        raise InputError(f"--input names {decl.name!r}, but the model's input is {tensor.name!r}")
    if tensor.dtype != "float32":
        raise InputError(f"{where}: expected a float32 input, the model takes {tensor.dtype}")
    want = "audio" if task == "audio-classify" else "image"
    if decl.modality != want:
        raise InputError(f"--input modality {decl.modality} does not fit --task {task} (expected {want})")
    shape = tensor.shape
    if want == "audio":
        if decl.layout not in (None, "NS") or len(shape) != 2:
            raise InputError(f"{where}: an audio input must be a (batch, samples) waveform (layout NS)")
        if decl.sample_rate is None:
            raise InputError("--input: an audio model needs sample_rate=HZ (and seconds=S)")
        samples = _fixed(shape[1])
        seconds = (
            decl.seconds if decl.seconds is not None else (samples / decl.sample_rate if samples else 1.0)
        )
        if samples is not None and round(seconds * decl.sample_rate) != samples:
            raise InputError(
                f"{where}: takes {samples} samples, not sample_rate {decl.sample_rate} x seconds "
                f"{seconds:g} = {round(seconds * decl.sample_rate)}"
            )
        return replace(decl, layout="NS", seconds=seconds)
    if decl.layout not in ("NCHW", "NHWC") or len(shape) != 4:
        raise InputError(f"{where}: an image input must be 4-D with layout NCHW or NHWC (got {decl.layout})")
    c_axis, h_axis, w_axis = (1, 2, 3) if decl.layout == "NCHW" else (3, 1, 2)
    if _fixed(shape[c_axis]) not in (None, 3):
        raise InputError(
            f"{where}: has {shape[c_axis]} channels on the {decl.layout} channel axis, expected 3 "
            f"(is the layout right?)"
        )
    h, w = _fixed(shape[h_axis]), _fixed(shape[w_axis])
    if decl.size is not None:
        if (w is not None and decl.size[0] != w) or (h is not None and decl.size[1] != h):
            raise InputError(
                f"{where}: size {decl.size[0]}x{decl.size[1]} does not match the model's "
                f"{w or '?'}x{h or '?'} (WIDTHxHEIGHT)"
            )
        return decl
    if h is None or w is None:
        raise InputError(
            f"{where}: the model's image size is not fixed; give it with --input size=WIDTHxHEIGHT"
        )
    return replace(decl, size=(w, h))


def _batch(tensor: _Tensor) -> int:
    """The largest batch the model accepts: 1 when its batch dimension is fixed to 1."""
    b = _fixed(tensor.shape[0]) if tensor.shape else None
    if b is None:
        return MAX_BATCH
    if b != 1:
        raise InputError(
            f"input {tensor.name!r}: a fixed batch of {b} is not supported (export it with batch 1 "
            f"or a dynamic batch)"
        )
    return 1


def _image_spec(decl: InputDecl) -> ImageSpec:
    assert decl.size is not None
    return ImageSpec(
        height=decl.size[1],
        width=decl.size[0],
        mean=decl.mean or (0.0, 0.0, 0.0),
        std=decl.std or (1.0, 1.0, 1.0),
        scale=decl.scale if decl.scale is not None else 1 / 255,
        color=decl.color or "RGB",
        layout=decl.layout or "NCHW",
        resize=decl.resize or "stretch",
        pad_value=decl.pad_value if decl.pad_value is not None else 114.0,
    )


def _golden_inputs(decl: InputDecl, batch: int, seed: int = 0) -> np.ndarray:
    """Seeded inputs the way the runtime makes them: preprocessed random images, or quiet noise."""
    rng = np.random.default_rng(seed)
    if decl.modality == "audio":
        n = round(float(decl.seconds or 1.0) * int(decl.sample_rate or 16000))
        return rng.uniform(-0.5, 0.5, (batch, n)).astype(np.float32)
    spec = _image_spec(decl)
    images = [
        rng.integers(0, 256, (spec.height * 3 // 4 + 1, spec.width, 3), dtype=np.uint8) for _ in range(batch)
    ]
    return np.stack([preprocess_image(im, spec)[0] for im in images])


def _run(path: Path, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, {name: x})))
    except Exception as e:
        raise ExportError(
            f"{path.name}: ONNX Runtime cannot run the model on its declared input "
            f"{list(x.shape)}: {type(e).__name__}: {e}"
        ) from e


def _output_entries(
    task: str,
    decode: str,
    params: Mapping[str, Any],
    outputs: Mapping[str, np.ndarray],
    labels: Sequence[str],
    kind: str,
) -> list[dict]:
    """The manifest's outputs, after checking the label count against each decoded output's classes."""
    n = len(labels)
    entries = [
        {"name": k, "shape": ["batch", *(int(d) for d in v.shape[1:])], "dtype": "float32", "decode": "none"}
        for k, v in outputs.items()
    ]
    if decode in ("softmax", "sigmoid", "none"):
        two_d = [e for e in entries if len(e["shape"]) == 2]
        if len(two_d) != 1:
            raise InputError(
                f"a {task} model needs exactly one (batch, classes) output; this one has "
                f"{[e['shape'] for e in entries]}"
            )
        e = two_d[0]
        if e["shape"][1] != n:
            raise InputError(
                f"the labels file has {n} labels but output {e['name']!r} scores {e['shape'][1]} classes"
            )
        e.update(decode=decode, labels=kind)
    elif decode == "yolo":
        width = 4 + int(bool(params.get("objectness"))) + n
        axis = 1 if params.get("layout") == "channels-first" else 2
        three_d = [e for e in entries if len(e["shape"]) == 3]
        if len(three_d) != 1:
            raise InputError(
                f"a YOLO-style detector has one (batch, 4 + classes, boxes) output; this one has "
                f"{[e['shape'] for e in entries]} (wrong --preset?)"
            )
        e = three_d[0]
        if e["shape"][axis] != width:
            extra = " + objectness" if params.get("objectness") else ""
            raise InputError(
                f"the labels file has {n} labels but output {e['name']!r} {e['shape']} has "
                f"{e['shape'][axis] - (width - n)} classes on axis {axis} (4 box values{extra} + classes)"
            )
        e.update(decode="yolo", labels="objects", params=dict(params))
    else:  # centernet: heatmap (C, h, w), size (2, h, w), offset (2, h, w), in the model's output order
        four_d = [e for e in entries if len(e["shape"]) == 4]
        if len(four_d) != 3 or [e["shape"][1] for e in four_d][1:] != [2, 2]:
            raise InputError(
                f"a CenterNet detector has three outputs: heatmap (C, h, w), size (2, h, w) and "
                f"offset (2, h, w); this one has {[e['shape'] for e in entries]} (wrong --preset?)"
            )
        if four_d[0]["shape"][1] != n:
            raise InputError(
                f"the labels file has {n} labels but the heatmap {four_d[0]['name']!r} has "
                f"{four_d[0]['shape'][1]} classes"
            )
        for e, d in zip(four_d, ("centernet-heatmap", "centernet-size", "centernet-offset")):
            e["decode"] = d
        four_d[0].update(labels="objects", params=dict(params))
    return entries


def import_onnx(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    task: str,
    labels: Sequence[str],
    preset: str | None = None,
    input_decl: InputDecl | None = None,
    decode: str | None = None,
    name: str | None = None,
    version: str = "0.1.0",
    overwrite: bool = False,
) -> Path:
    """Write a verified bundle for an ONNX model at ``out_dir``; nothing is written when a check fails.

    Args:
        model_path: the ``.onnx`` file (one float32 input; external data beside it is copied along).
        out_dir: the bundle folder to create.
        task: ``classify``, ``detect`` or ``audio-classify``.
        labels: the class names, in the model's output order.
        preset: a :data:`PRESETS` name; it must be for ``task``.
        input_decl: the input declaration, over the preset's (see :func:`parse_input_spec`).
        decode: for a classifier, how its output becomes scores: ``softmax`` (logits, the default),
            ``sigmoid`` (multi-label logits) or ``none`` (already probabilities).
        name: bundle name (default: the model file's stem).
        version: bundle version.
        overwrite: replace an existing bundle at ``out_dir``.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        InputError: a bad task/preset/decode, a preset for another task, labels that do not match the
            output's class count, or an input declaration that does not match the model (each named).
        ExportError: the model cannot be read or run, or the target cannot be written.
    """
    path = Path(model_path)
    if task not in GENERIC_TASKS:
        raise InputError(f"--task must be one of {', '.join(GENERIC_TASKS)}, got {task!r}")
    if preset is not None and preset not in PRESETS:
        raise InputError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    base = PRESETS[preset] if preset is not None else TASK_DEFAULTS[task]
    if base.task != task:
        raise InputError(f"--preset {preset} is for --task {base.task}, not {task}")
    if decode is not None:
        if task == "detect" or decode not in ("softmax", "sigmoid", "none"):
            raise InputError(f"--decode {decode!r}: only a classifier takes one (softmax, sigmoid or none)")
        base = replace(base, decode=decode)
    labels = [str(x) for x in labels]
    if not labels or len(set(labels)) != len(labels) or not all(labels):
        raise InputError("labels must be non-empty, unique and not blank")
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    check_target(out_dir, overwrite=overwrite)
    graph_inputs, _, model = _graph_io(path)
    if len(graph_inputs) != 1:
        raise InputError(
            f"{path.name}: an imported model has one input; this one has {[t.name for t in graph_inputs]}"
        )
    tensor = graph_inputs[0]
    decl = _resolve_input(tensor, base.input.merged(input_decl or InputDecl()), task)
    batch_max = _batch(tensor)
    golden_batch = min(2, batch_max)
    x = _golden_inputs(decl, golden_batch)
    outputs = _run(path, tensor.name, x)
    kind = (
        "audio_tags"
        if task == "audio-classify" and base.decode == "sigmoid"
        else ("objects" if task == "detect" else "events")
    )
    entries = _output_entries(task, base.decode, base.params, outputs, labels, kind)
    label_lists = {"events": [], "objects": [], "audio_tags": []}
    label_lists[kind] = labels

    if decl.modality == "image":
        spec = _image_spec(decl)
        pre = {
            "height": spec.height,
            "width": spec.width,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "scale": spec.scale,
            "color": spec.color,
            "resize": spec.resize,
        }
        if spec.resize == "letterbox":
            pre["pad_value"] = spec.pad_value
        input_entry = {
            "name": tensor.name,
            "modality": "image",
            "shape": ["batch", *spec.tensor_shape],
            "dtype": "float32",
            "layout": spec.layout,
            "preprocessing": pre,
        }
        heat = next((e for e in entries if e["decode"] == "centernet-heatmap"), None)
        stride = max(1, spec.height // int(heat["shape"][2])) if heat is not None else 1
        if heat is not None:
            heat["params"] = {**heat.get("params", {}), "stride": stride}
        geometry = InputGeometry(
            clip_frames=1,
            height=spec.height,
            width=spec.width,
            clip_seconds=1.0,
            output_stride=stride,
            mean=spec.mean,
            std=spec.std,
        )
    else:
        rate, seconds = int(decl.sample_rate or 16000), float(decl.seconds or 1.0)
        input_entry = {
            "name": tensor.name,
            "modality": "audio",
            "shape": ["batch", round(seconds * rate)],
            "dtype": "float32",
            "layout": "NS",
            "preprocessing": {"sample_rate": rate, "clip_seconds": seconds, "channels": 1},
        }
        geometry = InputGeometry(
            clip_frames=1, height=1, width=1, clip_seconds=seconds, sample_rate=rate, output_stride=1
        )
    model_sha = sha256_file(path)

    def manifest_for(files: Mapping[str, Mapping[str, Any]]) -> dict:
        return json_safe(
            {
                "schema_version": SCHEMA_VERSION,
                "task": task,
                "name": name or path.stem,
                "version": version,
                "created": utc_now(),
                "source": {
                    "checkpoint_sha256": model_sha,
                    "model_name": path.stem,
                    "model_config": {
                        "imported_from": path.name,
                        "preset": preset,
                        "producer": f"{model.producer_name} {model.producer_version}".strip() or None,
                    },
                    "git_rev": git_rev(),
                    "fusionedge_version": package_version("fusionedge") or "0+unknown",
                },
                "inputs": [input_entry],
                "outputs": entries,
                "labels": label_lists,
                "geometry": geometry.to_dict(),
                "precision": "fp32",
                "metrics": {},
                "files": {rel: dict(e) for rel, e in files.items()},
                "golden": {
                    "file": GOLDEN_NAME,
                    "rtol": GOLDEN_RTOL,
                    "atol": GOLDEN_ATOL,
                    "batch": golden_batch,
                },
                "batch": {"min": 1, "opt": 1, "max": batch_max},
                "import": {
                    "opset": max(
                        (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None
                    ),
                    "onnxruntime_version": package_version("onnxruntime"),
                },
            }
        )

    def check(bundle: Bundle) -> None:
        GenericModel.from_bundle(bundle)

    return write_bundle_folder(
        out_dir, path, {tensor.name: x}, outputs, manifest_for, overwrite=overwrite, check=check
    )
