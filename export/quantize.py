"""Post-training INT8 quantization of a bundle's ONNX model, written as a sibling bundle.

The graph gets explicit Q/DQ nodes (``onnxruntime.quantization.quantize_static``, QDQ format,
per-channel weights), the form TensorRT 10 and 11 and ONNX Runtime all run (DESIGN.md, "INT8 as
explicit Q/DQ nodes"). Two profiles:

* ``cpu``       uint8 activations + int8 weights: all convolutions fuse in ONNX Runtime (TOOLCHAIN.md).
* ``tensorrt``  int8 activations and weights, symmetric (``ActivationSymmetric``/``WeightSymmetric``),
  so every zero-point is 0 as TensorRT requires.

Calibration samples come from a data-set manifest through the runtime's own preprocessing
(:func:`fusionedge.sdk.evaluate.load_sample_inputs`, or for an imported model its one declared input,
:func:`fusionedge.sdk.generic.file_tensor`), so the ranges describe what the device feeds.
The audio front end (fixed DFT convolution → power → mel matmul → log) and numerically sensitive
operators are kept in float through ``nodes_to_exclude``. So is an imported model's decode tail
(:func:`output_tail_nodes`): an exporter such as Ultralytics' ends the graph with the box decode and
one ``Concat`` of pixel boxes (0 to hundreds) and class scores (0 to 1), which one INT8 scale would
grind down to a handful of score levels.

**How a variant lives**: a quantized model is a separate, complete bundle (its own ``manifest.json``
with ``precision: "int8"``, ``model.onnx``, and a ``golden.npz`` whose outputs the quantized model
produced), so ``Perception.load(variant_dir)`` runs it unchanged and an engine cache keyed by the ONNX
hash stays per-variant. The manifest's ``variant`` section names the FP32 parent (name, version,
model sha256) and what was kept in float.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.export.bundle_writer import check_golden_finite, check_target, fsync_file, publish_folder
from fusionedge.export.float_nodes import (  # re-exported: they were defined here
    SENSITIVE_OPS,
    WEIGHT_OPS,
    frontend_nodes,
    output_tail_nodes,
    sensitive_nodes,
    weight_nodes,
)
from fusionedge.export.onnx_export import ExportError
from fusionedge.sdk.bundle import (
    GOLDEN_NAME,
    MANIFEST_NAME,
    MODEL_NAME,
    Bundle,
    json_safe,
    load_bundle,
    sha256_file,
    write_json_atomic,
)
from fusionedge.sdk.errors import FusionEdgeError
from fusionedge.sdk.fileio import fsync_dir

__all__ = [
    "CALIBRATION_METHODS",
    "PROFILES",
    "SENSITIVE_OPS",
    "WEIGHT_OPS",
    "ArrayCalibrationReader",
    "ManifestCalibrationReader",
    "QuantizeConfig",
    "for_bundle",
    "frontend_nodes",
    "load_calibration_feeds",
    "output_tail_nodes",
    "quantize_bundle",
    "quantize_onnx",
    "requantize_weights",
    "sensitive_nodes",
    "weight_nodes",
    "write_variant_bundle",
]

PROFILES = ("cpu", "tensorrt")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")

#: Golden tolerances a quantized bundle's self-test uses (another backend / CPU ISA rounds differently).
INT8_GOLDEN_TOL = {"rtol": 0.05, "atol": 0.05}


@dataclass(frozen=True)
class QuantizeConfig:
    """What :func:`quantize_onnx` does.

    Attributes:
        profile: ``cpu`` (uint8 activations, int8 weights) or ``tensorrt`` (symmetric int8).
        calibration: ``minmax``, ``entropy`` or ``percentile``.
        per_channel: per-output-channel weight scales (False: one scale per tensor).
        exclude_frontend: keep the audio front end (DFT conv, power, mel, log) in float.
        exclude_sensitive: keep :data:`SENSITIVE_OPS` in float.
        exclude_output_tail: keep in float every node between the last weight-carrying node and each graph
            output (:func:`output_tail_nodes`); :func:`quantize_bundle` turns it on for an imported model.
        keep_float: further node names to keep in float (e.g. the precision gate's choice).
        percentile: the percentile for ``percentile`` calibration.
        weight_bits: 8, or fewer for a coarser symmetric grid (``2^(b-1) - 1`` levels each side, e.g.
            4 → [-7, 7]) stored as int8: W4A8, to study what QAT recovers; the Q/DQ form is unchanged.
        weight_int8: also store the float ``MatMul``/``Gemm`` weights (and learned embeddings) as
            weight-only INT8 (:mod:`fusionedge.export.weight_int8`): compute stays float, the file shrinks.
        reduce_range: ``cpu`` profile: 7-bit weights, [-64, 64]. ONNX Runtime's uint8 x int8 kernels on
            x86 without VNNI add product pairs in 16 bits, which 255 x 127 x 2 overflows (an imported
            detector lost 0.65 mAP@0.5 on an AMD EPYC); on by default, as a bundle may run on another
            CPU. The ``tensorrt`` profile keeps 8-bit weights.
    """

    profile: str = "cpu"
    calibration: str = "minmax"
    per_channel: bool = True
    exclude_frontend: bool = True
    exclude_sensitive: bool = True
    exclude_output_tail: bool = False
    keep_float: tuple[str, ...] = ()
    percentile: float = 99.999
    weight_bits: int = 8
    weight_int8: bool = False
    reduce_range: bool = True

    def __post_init__(self) -> None:
        if not 2 <= int(self.weight_bits) <= 8:
            raise ExportError(f"quantize: weight_bits must be in 2..8, got {self.weight_bits}")
        if self.profile not in PROFILES:
            raise ExportError(f"quantize: profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if self.calibration not in CALIBRATION_METHODS:
            raise ExportError(
                f"quantize: calibration must be one of {', '.join(CALIBRATION_METHODS)}, got {self.calibration!r}"
            )
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ExportError(f"quantize: percentile must be in (50, 100], got {self.percentile}")

    @property
    def weights_7bit(self) -> bool:
        """Whether weights go on the 7-bit grid: ``reduce_range`` in the ``cpu`` profile."""
        return self.reduce_range and self.profile == "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile, "calibration": self.calibration, "per_channel": self.per_channel,
            "exclude_frontend": self.exclude_frontend, "exclude_sensitive": self.exclude_sensitive,
            "exclude_output_tail": self.exclude_output_tail,
            "keep_float": list(self.keep_float), "percentile": self.percentile, "weight_bits": self.weight_bits,
            "weight_int8": self.weight_int8, "reduce_range": self.weights_7bit,
        }


# ------------------------------------------------------------------------------------ calibration


def load_calibration_feeds(
    bundle: Bundle, data: str | os.PathLike, *, limit: int = 64, batch_size: int = 8, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Decode and preprocess samples of a data-set manifest into model feeds (the runtime's path).

    Args:
        bundle: the bundle whose geometry preprocesses the media.
        data: a ``manifest.jsonl`` or its folder (labels are not needed).
        limit: most samples used, drawn evenly spaced after a seeded shuffle.
        batch_size: samples per feed dict (at most the bundle's largest batch).
        seed: shuffle seed.

    Returns:
        A list of ``{"video", "audio", "presence"}`` batches; for an imported model, batches of its one
        input (``{input name: (B, ...)}``: an image model's last frame of each clip, an audio model's
        waveform).

    Raises:
        ExportError: no samples (for an audio model: none with audio), or ``limit``/``batch_size`` < 1.
        DataError / MediaError: the manifest or a media file is invalid.
    """
    from fusionedge.sdk.datamanifest import read_manifest
    from fusionedge.sdk.evaluate import load_sample_inputs

    if limit < 1 or batch_size < 1:
        raise ExportError(f"calibration: limit and batch_size must be >= 1, got {limit}, {batch_size}")
    samples = read_manifest(data, require_labels=False, events=None, audio_tags=None, objects=None)
    model = None
    if bundle.task != "fusion":
        from fusionedge.sdk.generic import GenericModel

        model = GenericModel.from_bundle(bundle)
        batch_size = min(batch_size, int(bundle.manifest["batch"]["max"]))
        if model.modality == "audio":
            samples = [s for s in samples if s.audio is not None]
    if not samples:
        what = " with audio" if model is not None and model.modality == "audio" else ""
        raise ExportError(f"calibration: {data} has no samples{what}")
    order = np.random.default_rng(seed).permutation(len(samples))[:limit]
    chosen = [samples[i] for i in sorted(order)]
    if model is not None:
        from fusionedge.sdk.generic import file_tensor

        tensors = [file_tensor(model, bundle.geometry, video_path=s.video, audio_path=s.audio) for s in chosen]
        return [model.feed(np.stack(tensors[i : i + batch_size])) for i in range(0, len(tensors), batch_size)]
    feeds = []
    for i in range(0, len(chosen), batch_size):
        loaded = [load_sample_inputs(s, bundle.geometry) for s in chosen[i : i + batch_size]]
        feeds.append({
            "video": np.stack([v for v, _, _, _ in loaded]).astype(np.float32),
            "audio": np.stack([a for _, a, _, _ in loaded]).astype(np.float32),
            "presence": np.stack([p for _, _, p, _ in loaded]).astype(np.float32),
        })
    return feeds


class ArrayCalibrationReader:
    """A ``CalibrationDataReader`` over feed dicts already in memory (rewindable)."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        if not feeds:
            raise ExportError("calibration: no feeds given")
        self._feeds = [dict(f) for f in feeds]
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


class ManifestCalibrationReader(ArrayCalibrationReader):
    """A ``CalibrationDataReader`` fed from a data-set manifest through the runtime's preprocessing.

    Args:
        bundle: the bundle (for its geometry).
        data: a ``manifest.jsonl`` or its folder.
        limit: most samples.
        batch_size: samples per calibration batch.
    """

    def __init__(self, bundle: Bundle, data: str | os.PathLike, *, limit: int = 64, batch_size: int = 8) -> None:
        super().__init__(load_calibration_feeds(bundle, data, limit=limit, batch_size=batch_size))


# ------------------------------------------------------------------------------ graph inspection


def _load_onnx(path: str | os.PathLike) -> Any:
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as e:
        raise ExportError(f"{path}: cannot be read as ONNX: {e}") from e


def for_bundle(config: QuantizeConfig, bundle: Bundle) -> QuantizeConfig:
    """``config`` as it applies to ``bundle``: an imported model keeps its decode tail in float."""
    if bundle.task != "fusion" and not config.exclude_output_tail:
        return replace(config, exclude_output_tail=True)
    return config


# ---------------------------------------------------------------------------------- quantization


def quantize_onnx(
    model_in: str | os.PathLike,
    model_out: str | os.PathLike,
    reader: Any,
    config: QuantizeConfig = QuantizeConfig(),
) -> dict[str, Any]:
    """Quantize an FP32 ONNX model to a Q/DQ INT8 model with ``quantize_static``.

    Args:
        model_in: the FP32 model (opset ≥ 13).
        model_out: where to write the Q/DQ model (one file, weights inside).
        reader: an ONNX Runtime ``CalibrationDataReader`` (e.g. :class:`ManifestCalibrationReader`);
            it is rewound first when it can be.
        config: profile, calibration method, exclusions.

    Returns:
        ``{"config", "excluded": [node names kept in float], "quantized_nodes": int}``.

    Raises:
        ExportError: the model cannot be read or quantization failed (the cause is chained).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as _quantize_static

    model = _load_onnx(model_in)
    excluded: list[str] = []
    if config.exclude_frontend:
        excluded += frontend_nodes(model)
    if config.exclude_sensitive:
        excluded += [n for n in sensitive_nodes(model) if n not in excluded]
    if config.exclude_output_tail:
        excluded += [n for n in output_tail_nodes(model) if n not in excluded]
    known = {n.name for n in model.graph.node}
    unknown = [n for n in config.keep_float if n not in known]
    if unknown:
        raise ExportError(f"quantize: keep_float names node(s) not in the graph: {', '.join(unknown[:5])}")
    excluded += [n for n in config.keep_float if n not in excluded]

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[config.calibration]
    extra: dict[str, Any] = {}
    if config.profile == "tensorrt":
        activation_type = QuantType.QInt8
        extra.update(ActivationSymmetric=True, WeightSymmetric=True)
    else:
        activation_type = QuantType.QUInt8
    if config.calibration == "percentile":
        extra["CalibPercentile"] = float(config.percentile)
    if hasattr(reader, "rewind"):
        reader.rewind()
    kwargs: dict[str, Any] = {}
    if _supports_calibration_providers():
        kwargs["calibration_providers"] = ["CPUExecutionProvider"]
    source = str(model_in)
    if not config.exclude_frontend:
        # the front end is quantized: its DFT kernels must be a weight (an initializer) again, not a
        # generated activation (export/onnx_compact.py), to get weight quantization
        import onnx
        from fusionedge.export.onnx_compact import inline_generated

        if inline_generated(model):
            source = str(Path(model_out).with_suffix(".inlined.onnx"))
            onnx.save(model, source)
    try:
        # the entropy/percentile calibrators print to stdout; keep stdout clean for --json output
        with contextlib.redirect_stdout(sys.stderr):
            _quantize_static(
                source, str(model_out), reader,
                quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
                reduce_range=config.weights_7bit,
                activation_type=activation_type, weight_type=QuantType.QInt8,
                calibrate_method=method, nodes_to_exclude=excluded, extra_options=extra, **kwargs,
            )
    except FusionEdgeError:
        raise
    except Exception as e:
        raise ExportError(f"quantize: quantize_static failed: {type(e).__name__}: {e}") from e
    finally:
        if source != str(model_in):
            Path(source).unlink(missing_ok=True)
    out = _load_onnx(model_out)
    n_q = sum(1 for n in out.graph.node if n.op_type == "QuantizeLinear")
    if n_q == 0:
        raise ExportError("quantize: the output has no QuantizeLinear node; nothing was quantized")
    report: dict[str, Any] = {"config": config.to_dict(), "excluded": excluded, "quantized_nodes": n_q}
    if config.weight_bits < 8:
        report["requantized_weights"] = requantize_weights(out, config.weight_bits)
    if config.weight_int8:
        from fusionedge.export.weight_int8 import int8_weights

        w8 = int8_weights(out)
        report["weight_int8"] = {"weights": len(w8["weights"]), "max_rel_error": w8["max_rel_error"]}
    if config.weight_bits < 8 or config.weight_int8:
        import onnx

        onnx.save(out, str(model_out))
    return report


def requantize_weights(model: Any, bits: int) -> int:
    """Put every int8 weight of a Q/DQ model on a coarser symmetric grid, in place.

    Each weight ``DequantizeLinear`` (int8 initializer, zero-point 0) is dequantized, given a new scale
    ``max|w| / (2^(bits-1) - 1)`` (per output channel when its scale is per channel) and rounded again;
    values stay int8, so the graph and its runtimes are unchanged.

    Args:
        model: an ``onnx.ModelProto`` from :func:`quantize_onnx` (modified).
        bits: 2..8.

    Returns:
        The number of weights requantized.
    """
    from onnx import numpy_helper

    qmax = 2 ** (bits - 1) - 1
    init = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    done = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in init or len(node.input) < 2:
            continue
        q = numpy_helper.to_array(init[node.input[0]])
        if q.dtype != np.int8 or node.input[1] not in init:
            continue
        if len(node.input) > 2 and node.input[2] in init and np.any(numpy_helper.to_array(init[node.input[2]])):
            continue  # not a symmetric weight
        scale = numpy_helper.to_array(init[node.input[1]]).astype(np.float64)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis] = -1
        w = q.astype(np.float64) * scale.reshape(shape)
        reduce = tuple(i for i in range(q.ndim) if shape[i] == 1) if scale.size > 1 else None
        amax = np.abs(w).max(axis=reduce, keepdims=scale.size > 1) if reduce is not None else np.abs(w).max()
        new_scale = np.maximum(amax / qmax, 1e-12)
        new_q = np.clip(np.round(w / new_scale), -qmax, qmax).astype(np.int8)
        init[node.input[0]].CopyFrom(numpy_helper.from_array(new_q, node.input[0]))
        out_scale = np.asarray(new_scale, dtype=np.float32).reshape(scale.shape)
        init[node.input[1]].CopyFrom(numpy_helper.from_array(out_scale, node.input[1]))
        for user in consumers.get(node.output[0], []):
            _rederive_bias(user, out_scale, init, producer)
        done += 1
    return done


def _rederive_bias(op: Any, weight_scale: np.ndarray, init: dict, producer: dict) -> None:
    """Keep an int32 bias on ``input scale x weight scale`` after the weight scale changed.

    ONNX Runtime fuses DQ→Conv→Q into QLinearConv only when the bias is quantized that way; the bias's
    real value is kept (to the new, finer int32 step).
    """
    from onnx import numpy_helper

    if op.op_type not in ("Conv", "Gemm", "ConvTranspose") or len(op.input) < 3:
        return
    b_dq, x_dq = producer.get(op.input[2]), producer.get(op.input[0])
    if b_dq is None or x_dq is None or "DequantizeLinear" not in (b_dq.op_type, x_dq.op_type) \
            or b_dq.op_type != x_dq.op_type or b_dq.input[0] not in init or len(x_dq.input) < 2 \
            or x_dq.input[1] not in init or b_dq.input[1] not in init:
        return
    q_b = numpy_helper.to_array(init[b_dq.input[0]])
    if q_b.dtype != np.int32:
        return
    bias = q_b.astype(np.float64) * numpy_helper.to_array(init[b_dq.input[1]]).astype(np.float64)
    s_in = float(numpy_helper.to_array(init[x_dq.input[1]]))
    old_scale = numpy_helper.to_array(init[b_dq.input[1]])
    s_b = (s_in * weight_scale.astype(np.float64)).reshape(-1)
    if old_scale.size == 1:  # per-tensor weights: the bias scale stays a scalar (its DQ has no axis)
        s_b = s_b[:1].reshape(old_scale.shape)
    else:
        s_b = s_b * np.ones_like(bias)
    new_q = np.clip(np.round(bias / s_b), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
    init[b_dq.input[0]].CopyFrom(numpy_helper.from_array(new_q, b_dq.input[0]))
    init[b_dq.input[1]].CopyFrom(numpy_helper.from_array(s_b.astype(np.float32), b_dq.input[1]))


def _supports_calibration_providers() -> bool:
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_providers" in inspect.signature(quantize_static).parameters


# ----------------------------------------------------------------------------------- bundle output


def _run_onnx(path: Path, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    outs = session.run(list(names), dict(feeds))
    return dict(zip(names, outs))


def write_variant_bundle(
    source: Bundle,
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    precision: str,
    variant: Mapping[str, Any],
    golden_tol: Mapping[str, float],
    overwrite: bool = False,
) -> Path:
    """Write a complete bundle for a variant model of ``source`` (atomically, then verify it).

    The golden outputs are recomputed with the variant model on the source's golden inputs, so the
    variant's self-test checks the variant itself.

    Args:
        source: the FP32 bundle.
        model_path: the variant ONNX model.
        out_dir: the new bundle folder.
        precision: the manifest ``precision`` (``int8``, ``fp16``, ``mixed``).
        variant: what to record under the manifest's ``variant`` key (merged with the parent's identity).
        golden_tol: ``{"rtol", "atol"}`` for the variant's golden self-test.
        overwrite: replace an existing folder.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ExportError: the target exists, the variant computes NaN/Inf on the golden inputs, or the
            written bundle does not verify.
    """
    out = check_target(out_dir, overwrite=overwrite)
    golden_in, _ = source.golden()
    names = [o["name"] for o in source.outputs]
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        shutil.copyfile(model_path, tmp / MODEL_NAME)
        try:
            golden_out = _run_onnx(tmp / MODEL_NAME, golden_in, names)
        except Exception as e:
            raise ExportError(f"variant: the {precision} model does not run in ONNX Runtime: {e}") from e
        check_golden_finite(golden_in, golden_out)
        arrays = {f"input.{k}": v for k, v in golden_in.items()}
        arrays.update({f"output.{k}": v for k, v in golden_out.items()})
        np.savez(tmp / GOLDEN_NAME, **arrays)
        manifest = json_safe(dict(source.manifest))
        qa = manifest.get("qa")  # question answering travels unchanged: qa.onnx stays FP32
        qa_files = tuple(qa[k] for k in ("model", "tokenizer", "golden")) if isinstance(qa, dict) else ()
        for rel in qa_files:
            shutil.copyfile(source.path / rel, tmp / rel)
        files = {rel: {"sha256": sha256_file(tmp / rel), "size": (tmp / rel).stat().st_size}
                 for rel in (MODEL_NAME, GOLDEN_NAME, *qa_files)}
        if qa_files:
            variant = {**dict(variant), "qa": f"{qa['model']} kept FP32 (copied from the parent)"}
        manifest.update(
            precision=precision,
            files=files,
            metrics={},
            golden={**manifest["golden"], "file": GOLDEN_NAME, "rtol": float(golden_tol["rtol"]),
                    "atol": float(golden_tol["atol"])},
            variant=json_safe({
                "parent": {"name": source.name, "version": source.version,
                           "model_sha256": source.manifest["files"][MODEL_NAME]["sha256"],
                           "model_size": source.manifest["files"][MODEL_NAME]["size"]},
                **dict(variant),
            }),
        )
        for rel in files:
            fsync_file(tmp / rel)
        write_json_atomic(tmp / MANIFEST_NAME, manifest)
        try:
            load_bundle(tmp)
        except FusionEdgeError as e:
            raise ExportError(f"variant: the written bundle does not verify: {e}") from e
        fsync_dir(tmp)
        publish_folder(tmp, out, overwrite)  # an existing variant is replaced only once this one verified
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def quantize_bundle(
    bundle_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    config: QuantizeConfig = QuantizeConfig(),
    reader: Any = None,
    calibration_limit: int = 64,
    extra_manifest: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Quantize a bundle to INT8 Q/DQ and write the result as a sibling bundle (``precision: int8``).

    Args:
        bundle_dir: the FP32 bundle.
        out_dir: the INT8 bundle folder to create.
        data: a data-set manifest for calibration (required unless ``reader`` is given).
        config: see :class:`QuantizeConfig` (an imported model also keeps its decode tail in float).
        reader: a ready ``CalibrationDataReader`` (overrides ``data``).
        calibration_limit: most calibration samples taken from ``data``.
        extra_manifest: more to record under the manifest's ``variant`` key (e.g. the precision gate's
            measured drop).
        overwrite: replace an existing folder.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ExportError: no calibration data, quantization failed, or the result does not verify.
        BundleError: the source bundle is invalid.
    """
    source = load_bundle(bundle_dir)
    config = for_bundle(config, source)
    if source.precision != "fp32":
        raise ExportError(f"{bundle_dir}: quantize an fp32 bundle, this one is {source.precision}")
    check_target(out_dir, overwrite=overwrite)
    if reader is None:
        if data is None:
            raise ExportError("quantize: pass calibration data (a data-set manifest) or a reader")
        reader = ManifestCalibrationReader(source, data, limit=calibration_limit)
    with tempfile.TemporaryDirectory(prefix="fusionedge-quant-") as work:
        q_path = Path(work) / "model.int8.onnx"
        report = quantize_onnx(source.model_path, q_path, reader, config)
        variant = {"kind": f"int8-{config.profile}", "method": "ptq", "quantization": report,
                   **dict(extra_manifest or {})}
        return write_variant_bundle(source, q_path, out_dir, precision="int8", variant=variant,
                                    golden_tol=INT8_GOLDEN_TOL, overwrite=overwrite)
