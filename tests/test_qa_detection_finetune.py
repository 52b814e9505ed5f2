"""Fine-tuning the student's detection path for counting (training/qa/detection_finetune.py): the peak
loss, the mirrored targets, and a QA checkpoint of the first layout still loading. The fine-tuned copy
travelling through the QA checkpoint into qa.onnx is checked end to end in test_qa_export.py."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fusionedge.sdk.postprocess import encode_centernet_targets
from fusionedge.training.losses import centernet_focal_loss
from fusionedge.training.qa.detection_finetune import _flip, peak_loss


def _one_centre(h: int = 12, w: int = 16) -> torch.Tensor:
    boxes = np.array([[20.0, 10.0, 44.0, 38.0]])  # 24x28 px: a Gaussian several cells wide
    t = encode_centernet_targets(boxes, np.array([0]), num_classes=1, heatmap_hw=(h, w), stride=4)
    return torch.from_numpy(t["heatmap"])[None]  # (1, 1, h, w)


def _logits(peaks: dict[tuple[int, int], float], h: int = 12, w: int = 16) -> torch.Tensor:
    heat = torch.full((1, 1, h, w), 0.01)
    for (y, x), v in peaks.items():
        heat[0, 0, y, x] = v
    return torch.logit(heat)


def test_a_stray_peak_costs_the_peak_loss_its_full_cross_entropy_and_the_focal_loss_a_quarter():
    target = _one_centre()
    cy, cx = (int(v) for v in torch.nonzero(target[0, 0] >= 1.0)[0])
    one = _logits({(cy, cx): 0.9})
    two = _logits({(cy, cx): 0.9, (cy, cx + 3): 0.5})  # a second peak inside the object's Gaussian
    far = _logits({(cy, cx): 0.9, (cy - 5, cx + 6): 0.5})  # and one away from it
    ones = torch.ones(1)
    focal = [float(centernet_focal_loss(x, target, ones)) for x in (one, two, far)]
    peaks = [float(peak_loss(x, target)) for x in (one, two, far)]
    # the decoder counts 2 in both; the focal loss charges the stray peak 0.5² · log 2 = 0.17
    assert 0.15 < focal[1] - focal[0] < 0.2 and 0.15 < focal[2] - focal[0] < 0.2
    assert abs(peaks[1] - peaks[0] - math.log(2.0)) < 0.01 and abs(peaks[1] - peaks[2]) < 1e-6
    missed = _logits({(cy, cx + 1): 0.1})  # the object's best heat, next to its centre, under the threshold
    assert float(peak_loss(missed, target)) > 1.5  # -log(0.1) * 0.81


def test_mirrored_targets_equal_the_targets_of_mirrored_boxes():
    h, w, stride, width = 12, 16, 4, 64
    boxes = np.array([[5.0, 6.0, 17.0, 30.0], [30.0, 3.0, 47.0, 21.0]])  # centres off the cell borders
    labels = np.array([0, 1])
    kw = {"num_classes": 2, "heatmap_hw": (h, w), "stride": stride}
    t = encode_centernet_targets(boxes, labels, **kw)
    mirrored = boxes.copy()
    mirrored[:, [0, 2]] = width - boxes[:, [2, 0]]
    m = encode_centernet_targets(mirrored, labels, **kw)
    batch = {k: torch.from_numpy(t[k])[None].clone() for k in ("heatmap", "size", "offset", "mask")}
    batch["video"] = torch.arange(2 * 3 * 4 * width, dtype=torch.float32).reshape(1, 2, 3, 4, width)
    video = batch["video"].clone()
    _flip(batch, torch.tensor([0]))
    for k in ("heatmap", "size", "mask"):
        assert torch.equal(batch[k][0], torch.from_numpy(m[k])), k
    on = torch.from_numpy(m["mask"]) > 0
    assert torch.allclose(batch["offset"][0][:, on], torch.from_numpy(m["offset"])[:, on], atol=1e-6)
    assert torch.equal(batch["video"], video.flip(-1))


def test_a_qa_checkpoint_in_the_first_layout_still_loads(tmp_path):
    """A QA checkpoint written before the student could be fine-tuned: the same fields, nothing more."""
    from fusionedge.training.qa.checkpoint import load_qa_checkpoint
    from fusionedge.training.qa.model import QuestionReader, reader_config_for
    from fusionedge.training.qa.vocab import train_tokenizer
    from test_qa_model import tiny_student

    student = tiny_student()
    tok_json, tok = train_tokenizer(["is there a car?", "how many cars are there?"], vocab_size=60, max_tokens=8)
    reader = QuestionReader(reader_config_for(student, vocab_size=tok.vocab_size, max_tokens=8, num_answers=3,
                                              dim=16, heads=2, layers=1))
    info = {"model_name": "fusion_student", "model_config": student.config.to_dict(),
            "geometry": {"clip_frames": 2, "height": 32, "width": 48}, "labels": {"objects": ["car"]}}
    state = {"format": "fusionedge-qa-checkpoint", "format_version": 1,
             "student": {**info, "state_dict": student.state_dict()},
             "reader_config": reader.config.to_dict(), "reader_state": reader.state_dict(),
             "tokenizer": tok_json, "max_tokens": 8, "answers": ["no", "yes", "1"], "question_types": ["count"],
             "metrics": {"val_accuracy": 0.5}, "epoch": 3, "extra": {}}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (tmp_path / "old.pt").write_bytes(buffer.getvalue())
    loaded = load_qa_checkpoint(tmp_path / "old.pt")
    assert loaded.epoch == 3 and loaded.answers == ("no", "yes", "1")
    for k, v in student.state_dict().items():
        assert torch.equal(loaded.model.student.state_dict()[k], v), k


@pytest.mark.parametrize("scope,prefixes", [("head", ("det_head.",)), ("video", ("det_head.", "video_encoder."))])
def test_only_the_detection_path_of_the_scope_is_trained(scope, prefixes):
    from fusionedge.training.qa.detection_finetune import _trainable
    from test_qa_model import tiny_student

    student = tiny_student()
    params = _trainable(student, scope)
    trained = {n for n, p in student.named_parameters() if p.requires_grad}
    assert len(params) == len(trained) > 0
    assert all(n.startswith(prefixes) and not n.startswith("video_encoder.frame_proj") for n in trained), trained
    assert {n.split(".")[0] for n in trained} == {p[:-1] for p in prefixes}
