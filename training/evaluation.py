"""Validation metrics of a model on a decoded split: ``evaluate_model(model, clips)``.

The training loop calls it every epoch to select the best checkpoint, and the report calls it on
the test split. Boxes are compared in model-input pixels, and a metric that is undefined on a split
(no labelled event, no clip with audio) is ``nan`` rather than a misleading number.
"""

from __future__ import annotations

import numpy as np
import torch

from fusionedge.sdk import metrics as M
from fusionedge.sdk.postprocess import decode_centernet

from .dataset import ClipCache, iterate_batches
from .losses import IGNORE_INDEX, LossWeights, multitask_loss, named_outputs
from .models.multimodal import MultimodalModel

__all__ = ["evaluate_model"]


@torch.no_grad()
def evaluate_model(model: MultimodalModel, clips: ClipCache, *, batch_size: int = 64,
                   loss_weights: LossWeights = LossWeights(), score_threshold: float = 0.05,
                   device: torch.device | str = "cpu") -> dict:
    """Validation metrics of a model on a decoded split (boxes in model-input pixels).

    Args:
        model: the model (put in eval mode for the call, then restored).
        clips: the split.
        batch_size: samples per forward pass.
        loss_weights: for the reported validation loss.
        score_threshold: lowest detection score decoded for mAP.
        device: where the model lives (batches are moved there).

    Returns:
        ``loss``, ``event_accuracy``, ``event_macro_f1``, ``audio_tag_map``, ``detection_map50``
        (``nan`` where undefined), ``samples``; a head the model lacks has no metric.
    """
    was_training = model.training
    model.eval()
    labels, g = clips.labels, clips.geometry
    names = model.output_names
    losses, y_true, y_pred, tag_true, tag_score, det_pred, det_true = [], [], [], [], [], [], []
    for batch in iterate_batches(clips, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        raw = model(batch["video"], batch["audio"], batch["presence"])
        outputs = named_outputs([o.float() for o in raw], names)
        loss, _ = multitask_loss(outputs, batch, loss_weights)
        losses.append(float(loss) * len(batch["index"]))
        out = {k: v.cpu().numpy() for k, v in outputs.items()}
        for j, i in enumerate(batch["index"].tolist()):
            if "event_logits" in out and int(clips.event[i]) != IGNORE_INDEX:
                y_true.append(int(clips.event[i]))
                y_pred.append(int(np.argmax(out["event_logits"][j])))
            if "audio_tag_logits" in out and bool(clips.has_audio[i]):
                tag_true.append(clips.audio_tags[i].numpy())
                tag_score.append(out["audio_tag_logits"][j])
            if "det_heatmap" in out:
                det_pred.append(decode_centernet(out["det_heatmap"][j], out["det_size"][j], out["det_offset"][j],
                                                 stride=g.output_stride, labels=labels.objects,
                                                 score_threshold=score_threshold, top_k=100))
                det_true.append([(labels.objects[k], *map(float, box))
                                 for box, k in zip(clips.boxes[i], clips.box_labels[i])])
    model.train(was_training)
    nan = float("nan")
    yt, yp = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    metrics: dict = {"loss": sum(losses) / len(clips)}
    if "event_logits" in names:
        metrics["event_accuracy"] = M.event_accuracy(yt, yp) if len(yt) else nan
        metrics["event_macro_f1"] = M.event_macro_f1(yt, yp, len(labels.events)) if len(yt) else nan
    if "audio_tag_logits" in names:
        metrics["audio_tag_map"] = M.audio_tag_map(np.stack(tag_true), np.stack(tag_score)) if tag_true else nan
    if "det_heatmap" in names:
        metrics["detection_map50"] = M.detection_map50(det_pred, det_true, labels.objects)
    metrics["samples"] = len(clips)
    return metrics
