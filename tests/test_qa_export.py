"""End to end, tiny: generated clips with questions -> the student's detection path fine-tuned for
counting -> QA training (1 epoch) on it -> qa.onnx into a bundle with parity at batch 1 and 3, carrying
the tuned student while model.onnx keeps the original -> the bundle verifies with the qa files hashed ->
the runtime answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")

from fusionedge.sdk.bundle import load_bundle, sha256_file
from fusionedge.sdk.errors import BundleError


@pytest.mark.slow
def test_train_export_and_ask(tmp_path, capsys):
    from fusionedge.cli.main import main
    from fusionedge.export import export_checkpoint
    from fusionedge.export.qa_export import _run_onnx, _run_torch, export_qa, qa_example_inputs
    from fusionedge.sdk.datamanifest import read_manifest
    from fusionedge.sdk.perception import Perception
    from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS, InputGeometry
    from fusionedge.training.checkpoint import load_checkpoint, save_checkpoint
    from fusionedge.training.models.registry import create_model
    from fusionedge.training.qa.checkpoint import load_qa_checkpoint
    from fusionedge.training.qa.train import QATrainConfig, train_qa
    from fusionedge.training.synth import generate_dataset

    torch.manual_seed(0)
    geometry = InputGeometry(clip_frames=2, height=32, width=48, clip_seconds=0.25, sample_rate=16000)
    student = create_model("fusion_student", clip_frames=2, height=32, width=48, fusion="aligned_attention",
                           audio_samples=geometry.audio_samples).eval()
    ckpt = save_checkpoint(tmp_path / "run" / "best.pt", student, model_name="fusion_student",
                           model_config=student.config.to_dict(), geometry=geometry,
                           labels={"events": EVENTS, "audio_tags": AUDIO_TAGS, "objects": OBJECTS}, metrics={}, epoch=1)
    bundle = export_checkpoint(ckpt, tmp_path / "bundle", progress=False)
    model_onnx = sha256_file(bundle / "model.onnx")
    data = generate_dataset(tmp_path / "data", samples=4, seed=11, workers=1, progress=False).parent

    # the detection path fine-tuned: a perception checkpoint whose video encoder and detection head
    # differ, and nothing else (BatchNorm statistics fixed)
    assert main(["qa", "finetune-detection", "--checkpoint", str(ckpt), "--data", str(data), "--val", str(data),
                 "--out", str(tmp_path / "det"), "--epochs", "2", "--lr", "1e-2", "--batch-size", "2", "--json"]) == 0
    tuned, info = load_checkpoint(tmp_path / "det" / "best.pt")
    assert info["model_config"] == student.config.to_dict() and "val_count" in info["metrics"]
    original, after = student.state_dict(), tuned.state_dict()
    changed = {k for k in original if not torch.equal(original[k], after[k])}
    assert any(k.startswith("det_head.") for k in changed) and any(k.startswith("video_encoder.") for k in changed)
    assert all(k.startswith(("det_head.", "video_encoder.")) and "running_" not in k for k in changed), changed
    assert (tmp_path / "det" / "clips" / "train" / "key.json").is_file()  # decoded once, kept
    tuned_ckpt = tmp_path / "det" / "best.pt"

    summary = train_qa(QATrainConfig(checkpoint=str(tuned_ckpt), data=str(data), val=str(data),
                                     out=str(tmp_path / "qa"), epochs=1, progress=False, workers=1))
    asked = sum(len(s.questions) for s in read_manifest(data))
    assert summary["train_questions"] == asked > 0 and (tmp_path / "qa" / "best.pt").is_file()
    assert (tmp_path / "qa" / "context.pt").is_file()
    capsys.readouterr()
    args = ["qa", "train", "--checkpoint", str(tuned_ckpt), "--data", str(data), "--val", str(data),
            "--out", str(tmp_path / "qa"), "--epochs", "1", "--json"]
    assert main(args + ["--dim", "30"]) == 2  # the reader has 4 heads
    assert "dim must be a multiple of heads (4), got 30" in capsys.readouterr().err
    assert main(args + ["--dim", "32", "--layers", "1"]) == 0  # a smaller reader, on the kept contexts
    again = json.loads(capsys.readouterr().out)
    assert again["train_questions"] == summary["train_questions"]
    assert set(json.loads((tmp_path / "qa" / "metrics.json").read_text())["val"]["ablations"]) == {
        "question_only", "question_video", "question_audio", "all"}
    loaded = load_qa_checkpoint(tmp_path / "qa" / "best.pt")
    assert (loaded.model.reader.config.dim, loaded.model.reader.config.layers) == (32, 1)
    assert set(loaded.answers) == {q.answer for s in read_manifest(data) for q in s.questions}
    for k, v in after.items():  # the QA checkpoint carries the fine-tuned student
        assert torch.equal(loaded.model.student.state_dict()[k], v), k

    out = export_qa(bundle, tmp_path / "qa" / "best.pt", calibrate_on=data)
    assert out["parity"]["batches"] == [1, 3] and all(r["ok"] for r in out["parity"]["results"])
    assert sha256_file(bundle / "model.onnx") == model_onnx  # infer keeps the original student
    probe = qa_example_inputs(geometry, loaded.tokenizer, 3, seed=5)
    answers = _run_onnx(bundle / "qa.onnx", probe)
    assert np.allclose(answers, _run_torch(loaded.model, probe), atol=1e-4)
    loaded.model.student.load_state_dict(original)  # the same reader on the original student answers otherwise
    assert not np.allclose(answers, _run_torch(loaded.model, probe), atol=1e-4)
    b = load_bundle(bundle)  # verifies every listed file's size and hash
    qa = b.manifest["qa"]
    assert qa["model"] == "qa.onnx" and qa["answers"] == list(loaded.answers)
    for rel in ("qa.onnx", "qa_tokenizer.json", "qa_golden.npz"):
        assert b.manifest["files"][rel]["sha256"] == sha256_file(bundle / rel)
    assert 0.0 <= qa["min_confidence"] <= 1.0 and qa["temperature"] > 0
    with np.load(bundle / "qa_golden.npz") as g:
        assert set(g.files) == {"video", "audio", "presence", "question_ids", "question_mask", "answer_logits"}
        assert g["question_ids"].dtype == np.int64 and g["answer_logits"].shape == (2, len(qa["answers"]))
    assert out["digest"]["before"] != out["digest"]["after"] == b.digest

    clip = next(iter((data / "media").glob("*.mp4")))
    with Perception.load(bundle) as p:  # the runtime golden-checks qa.onnx on its first question
        a = p.ask("is there a car?", video_path=clip, audio_path=clip.with_suffix(".wav"))
    assert a.answer in qa["answers"] and 0.0 < a.score <= 1.0

    from fusionedge.export.quantize import write_variant_bundle  # what quantize / fp16 write

    variant = write_variant_bundle(b, bundle / "model.onnx", tmp_path / "variant", precision="int8", variant={},
                                   golden_tol={"rtol": 1e-3, "atol": 1e-4})
    vb = load_bundle(variant)  # the qa files travel, hashed, and qa.onnx stays FP32
    assert vb.manifest["qa"] == qa and "kept FP32" in vb.manifest["variant"]["qa"]
    assert vb.manifest["files"]["qa.onnx"] == b.manifest["files"]["qa.onnx"]

    (bundle / "manifest.sig").write_bytes(b"x")  # a signed bundle: its signature would stop verifying
    with pytest.raises(BundleError, match="signed"):
        export_qa(bundle, tmp_path / "qa" / "best.pt")
    (bundle / "manifest.sig").unlink()
    assert main(["qa", "export", "--bundle", str(bundle), "--checkpoint", str(tmp_path / "run" / "best.pt")]) == 2
