"""Add scene question answering to a fused bundle: ``qa.onnx``, its tokenizer, golden file and ``qa`` block.

:func:`export_qa` takes an existing fused-model bundle and a QA checkpoint (``fusionedge qa train``)
whose student has the bundle's geometry, and:

1. exports :class:`~fusionedge.training.qa.model.QAModel` to ``qa.onnx`` (opset and exporter of the
   main model, :mod:`.onnx_export`, from a batch-2 example with a dynamic batch axis): inputs
   ``video``, ``audio``, ``presence`` (exactly what ``model.onnx`` takes) plus ``question_ids`` int64
   and ``question_mask`` float32 (B, L); output ``answer_logits`` (B, K);
2. checks ONNX Runtime against PyTorch at batch 1 and 3 (as :mod:`.parity` does for the main model),
   with real questions encoded by the shipped tokenizer;
3. writes ``qa_golden.npz`` (the five inputs at batch 2 and ``answer_logits``) and
   ``qa_tokenizer.json``;
4. with validation data, fits the answer temperature by NLL over the validation questions
   (:func:`fusionedge.export.calibrate.fit_temperature`) and sets ``min_confidence`` from questions
   the model cannot answer: the same validation questions with every sensor masked (presence 0, 0),
   whose tempered top score is the answer prior. ``min_confidence`` is the smallest score above
   :data:`UNANSWERABLE_SHARE` of them (rounded up to 0.01), so a question asked of nothing comes out
   "not confident" at least that often; without data the temperature is 1.0 and the threshold 0.5;
5. lists the three files with size and SHA-256 in ``files`` and writes the ``qa`` block, rewriting
   ``manifest.json`` atomically. Like calibration this changes the bundle's digest: a signed bundle
   is refused unless re-signed (``sign_key``) or its signature dropped (``drop_signature``).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fusionedge.export.calibrate import fit_temperature, negative_log_likelihood
from fusionedge.export.onnx_export import MAX_BATCH, OPSET, ExportError, example_inputs
from fusionedge.export.parity import DEFAULT_ATOL, DEFAULT_RTOL, ParityError, ParityReport, compare_outputs
from fusionedge.sdk.bundle import MANIFEST_NAME, load_bundle, manifest_digest, sha256_file, validate_manifest
from fusionedge.sdk.bundle_signature import renew_signature, signing_for_change
from fusionedge.sdk.datamanifest import read_manifest
from fusionedge.sdk.errors import BundleError
from fusionedge.sdk.fileio import fsync_dir, write_json_atomic
from fusionedge.sdk.qa_tokenizer import QuestionTokenizer
from fusionedge.sdk.spec import INPUT_NAMES, InputGeometry
from fusionedge.training.qa.checkpoint import QACheckpoint, load_qa_checkpoint
from fusionedge.training.qa.model import QAModel

__all__ = [
    "QA_GOLDEN_NAME",
    "QA_INPUT_NAMES",
    "QA_MODEL_NAME",
    "QA_OUTPUT_NAME",
    "QA_TOKENIZER_NAME",
    "UNANSWERABLE_SHARE",
    "check_qa_parity",
    "export_qa",
    "export_qa_onnx",
    "fit_qa_scores",
    "qa_example_inputs",
]

QA_MODEL_NAME, QA_TOKENIZER_NAME, QA_GOLDEN_NAME = "qa.onnx", "qa_tokenizer.json", "qa_golden.npz"
QA_INPUT_NAMES: tuple[str, ...] = (*INPUT_NAMES, "question_ids", "question_mask")
QA_OUTPUT_NAME = "answer_logits"
#: Share of questions asked with no sensor at all that must come out not confident.
UNANSWERABLE_SHARE = 0.95
_GOLDEN_TOL = {"golden_rtol": 1e-3, "golden_atol": 1e-4}
_PROBE_QUESTIONS = ("is there a car?", "how many pedestrians are there?", "can you hear a siren?",
                    "what colour is the traffic light?", "where is the siren coming from: ahead, behind, or none?",
                    "is the flashing emergency vehicle on the left, on the right or ahead?")


def qa_example_inputs(geometry: InputGeometry, tokenizer: QuestionTokenizer, batch: int, *,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """The main model's example inputs (every presence pattern) plus real questions, encoded."""
    inputs = example_inputs(geometry, batch, seed=seed)
    ids, mask = tokenizer.encode_batch([_PROBE_QUESTIONS[(seed + i) % len(_PROBE_QUESTIONS)] for i in range(batch)])
    return {**inputs, "question_ids": ids, "question_mask": mask}


def _run_torch(model: QAModel, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out = model(*(torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in QA_INPUT_NAMES))
    return out.numpy().astype(np.float32)


def _run_onnx(path: Path, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    batch = inputs["video"].shape[0]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        return session.run([QA_OUTPUT_NAME], {n: np.ascontiguousarray(inputs[n]) for n in QA_INPUT_NAMES})[0]
    except Exception as e:
        raise ExportError(f"{path.name}: ONNX Runtime cannot run it at batch {batch}: {e}") from e


def export_qa_onnx(model: QAModel, geometry: InputGeometry, tokenizer: QuestionTokenizer, path: str | os.PathLike,
                   *, max_batch: int = MAX_BATCH) -> Path:
    """Export the QA model to one ONNX file (see the module docstring); checks names and a dynamic batch.

    Raises:
        ExportError: the exporter failed or the file fails the ONNX checker / name / batch checks.
    """
    import onnx
    from fusionedge.export.onnx_compact import compact_model

    path = Path(path)
    model.eval()
    ex = qa_example_inputs(geometry, tokenizer, 2)
    args = tuple(torch.from_numpy(ex[n]) for n in QA_INPUT_NAMES)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=r"# The axis name: batch will not be used")
            torch.onnx.export(model, args, str(path), dynamo=True, opset_version=OPSET, external_data=False,
                              input_names=list(QA_INPUT_NAMES), output_names=[QA_OUTPUT_NAME],
                              dynamic_shapes=tuple({0: batch} for _ in QA_INPUT_NAMES), verbose=False)
        proto = onnx.load(str(path))
        compact_model(proto)
        onnx.save(proto, str(path))
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        path.unlink(missing_ok=True)
        raise ExportError(f"exporting the QA model failed: {type(e).__name__}: {e}") from e
    proto = onnx.load(str(path))
    names_in = [i.name for i in proto.graph.input]
    names_out = [o.name for o in proto.graph.output]
    if names_in != list(QA_INPUT_NAMES) or names_out != [QA_OUTPUT_NAME]:
        raise ExportError(f"{path.name}: inputs {names_in} and outputs {names_out} are not "
                          f"{list(QA_INPUT_NAMES)} -> {[QA_OUTPUT_NAME]}")
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            raise ExportError(f"{path.name}: '{value.name}' has a fixed batch dimension")
    return path


def check_qa_parity(model: QAModel, path: str | os.PathLike, geometry: InputGeometry, tokenizer: QuestionTokenizer,
                    batches: Sequence[int] = (1, 3), *, seed: int = 0, rtol: float = DEFAULT_RTOL,
                    atol: float = DEFAULT_ATOL) -> ParityReport:
    """ONNX Runtime against PyTorch on ``answer_logits`` at each batch size.

    Raises:
        ParityError: outside tolerance (``.report`` holds the report).
        ExportError: ONNX Runtime cannot run a batch size.
    """
    results = []
    for b in batches:
        inputs = qa_example_inputs(geometry, tokenizer, b, seed=seed + b)
        results.extend(compare_outputs({QA_OUTPUT_NAME: _run_torch(model, inputs)},
                                       {QA_OUTPUT_NAME: _run_onnx(Path(path), inputs)}, batch=b, rtol=rtol, atol=atol))
    report = ParityReport(rtol=rtol, atol=atol, batches=tuple(batches), seed=seed, results=tuple(results))
    if not report.ok:
        raise ParityError(f"{Path(path).name}: ONNX Runtime does not match PyTorch: {report.summary()}", report)
    return report


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_qa_scores(ckpt: QACheckpoint, data: str | os.PathLike, *, progress: bool = False) -> dict[str, Any]:
    """Fit the answer temperature and ``min_confidence`` on validation questions (module docstring, step 4).

    Returns:
        ``temperature``, ``min_confidence`` and what they were measured on: ``questions``, NLL
        before/after, accuracy, the share of answers confident with all sensors and its accuracy, the
        share of sensorless answers confident.

    Raises:
        DataError: the data carries no question with an answer the model knows.
        MediaError: a clip cannot be decoded.
    """
    from fusionedge.sdk.errors import DataError
    from fusionedge.training.qa.data import build_examples
    from fusionedge.training.qa.evaluate import reader_logits

    geometry = InputGeometry.from_dict(ckpt.student["geometry"])
    ex = build_examples(ckpt.model, read_manifest(data), geometry, ckpt.tokenizer, ckpt.answers,
                        progress=progress, desc="qa calibrate")
    ok = (ex.answer >= 0).numpy()
    if not ok.any():
        raise DataError(f"{data}: no question has an answer the model knows")
    y = ex.answer.numpy()[ok]
    logits = reader_logits(ckpt.model.reader, ex).numpy().astype(np.float64)[ok]
    blind = reader_logits(ckpt.model.reader, ex, (0.0, 0.0)).numpy().astype(np.float64)[ok]
    t = float(fit_temperature(logits, y))
    top = _softmax(logits / t).max(axis=1)
    blind_top = _softmax(blind / t).max(axis=1)
    conf = math.ceil(float(np.quantile(blind_top, UNANSWERABLE_SHARE)) * 100 - 1e-9) / 100
    conf = min(max(conf, 0.0), 1.0)
    correct = logits.argmax(1) == y
    confident = top >= conf
    return {"temperature": t, "min_confidence": conf, "questions": int(ok.sum()),
            "nll_before": negative_log_likelihood(logits, y), "nll_after": negative_log_likelihood(logits, y, t),
            "accuracy": float(correct.mean()), "confident_share": float(confident.mean()),
            "confident_accuracy": float(correct[confident].mean()) if confident.any() else float("nan"),
            "sensorless_confident_share": float((blind_top >= conf).mean())}


def export_qa(bundle: str | os.PathLike, checkpoint: str | os.PathLike, *, calibrate_on: str | os.PathLike | None = None,
              sign_key: Any = None, drop_signature: bool = False, progress: bool = False) -> dict[str, Any]:
    """Add (or replace) the question-answering model of a fused bundle (see the module docstring).

    Args:
        bundle: the fused bundle folder (verified first; updated in place).
        checkpoint: a QA checkpoint (``QA_RUN/best.pt``).
        calibrate_on: validation data with questions, to fit the temperature and ``min_confidence``.
        sign_key: an ed25519 private key to re-sign a signed bundle with.
        drop_signature: remove a signed bundle's signature instead.
        progress: progress bars on stderr.

    Returns:
        A summary: ``bundle``, ``qa`` (the block written), ``parity``, ``calibration`` (or None),
        ``digest`` (before, after), ``signature``, ``seconds``.

    Raises:
        BundleError: an invalid bundle, not a fused model, a geometry other than the student's, or a
            signed bundle without ``sign_key`` / ``drop_signature``.
        CheckpointError: the checkpoint cannot be loaded.
        ExportError / ParityError: the export or the parity check failed (nothing is written).
    """
    t0 = time.perf_counter()
    root = Path(bundle)
    b = load_bundle(root)
    if b.task != "fusion":
        raise BundleError(f"{root}: a {b.task!r} model; question answering extends the fused camera + audio model")
    signed, key = signing_for_change(root, "adding question answering", sign_key, drop_signature)
    ckpt = load_qa_checkpoint(checkpoint)
    geometry = InputGeometry.from_dict(ckpt.student["geometry"])
    bundle_geometry = InputGeometry.from_dict(b.manifest["geometry"])
    if geometry != bundle_geometry:
        raise BundleError(f"{root}: the bundle's geometry {bundle_geometry} is not the QA student's {geometry}; "
                          f"train the QA model on the checkpoint this bundle was exported from")
    calibration = fit_qa_scores(ckpt, calibrate_on, progress=progress) if calibrate_on is not None else None
    tmp = Path(tempfile.mkdtemp(prefix=".qa-export-", dir=root.parent))
    try:
        export_qa_onnx(ckpt.model, geometry, ckpt.tokenizer, tmp / QA_MODEL_NAME)
        parity = check_qa_parity(ckpt.model, tmp / QA_MODEL_NAME, geometry, ckpt.tokenizer)
        golden_in = qa_example_inputs(geometry, ckpt.tokenizer, 2, seed=1234)
        golden_out = _run_torch(ckpt.model, golden_in)
        if not np.isfinite(golden_out).all():
            raise ExportError("the QA model computes NaN/Inf on the golden inputs")
        np.savez(tmp / QA_GOLDEN_NAME, **golden_in, **{QA_OUTPUT_NAME: golden_out})
        (tmp / QA_TOKENIZER_NAME).write_text(ckpt.tokenizer_json, encoding="utf-8")
        old = dict(b.manifest)
        manifest = dict(old)
        files = dict(old["files"])
        for rel in (QA_MODEL_NAME, QA_TOKENIZER_NAME, QA_GOLDEN_NAME):
            files[rel] = {"sha256": sha256_file(tmp / rel), "size": (tmp / rel).stat().st_size}
        manifest["files"] = files
        manifest["qa"] = {
            "model": QA_MODEL_NAME, "tokenizer": QA_TOKENIZER_NAME, "golden": QA_GOLDEN_NAME,
            "max_tokens": ckpt.tokenizer.max_tokens, "answers": list(ckpt.answers),
            "question_types": list(ckpt.question_types),
            "temperature": calibration["temperature"] if calibration else 1.0,
            "min_confidence": calibration["min_confidence"] if calibration else 0.5,
            **_GOLDEN_TOL,
        }
        validate_manifest(manifest)
        for rel in (QA_MODEL_NAME, QA_TOKENIZER_NAME, QA_GOLDEN_NAME):
            os.replace(tmp / rel, root / rel)
        fsync_dir(root)
        write_json_atomic(root / MANIFEST_NAME, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    signature = renew_signature(root, signed, key)
    after = load_bundle(root).digest
    return {"bundle": str(root), "qa": manifest["qa"], "parity": parity.to_dict(), "calibration": calibration,
            "digest": {"before": manifest_digest(old), "after": after}, "signature": signature,
            "seconds": round(time.perf_counter() - t0, 3)}
