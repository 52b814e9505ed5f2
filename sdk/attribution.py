"""Modality attribution: which sense a decision came from, measured by withholding each one.

The fused model is trained with modality dropout: a missing sensor reaches it as a zero tensor with
``presence`` 0, and it answers from the other one. That gives a faithful, gradient-free way to ask
what each modality contributed to a result: run the same clip again with the video withheld and
with the audio withheld, and see how the decision moves. The three inputs (full, video withheld,
audio withheld) go to the backend as one batch of 3, so on a backend with batched inputs the cost
is one call, not three.

**The decision's margin.** An event is what sets a clip apart from nothing happening, so the
decision is scored against the background event (``"none"``): its margin is ``logit_e - logit_none``
for the decided event ``e``. Scoring against *all* other events instead would split most decisions
evenly — without its camera the model cannot tell a siren ahead from one behind, and without its
microphone it cannot tell an emergency vehicle behind from an empty road, so either withheld sense
costs the same probability. Against the background the question becomes "which sense showed that
something is happening": sound for a siren behind the car, sight for lights without a siren. When
the decided event is the background itself, or the vocabulary has no ``"none"``, the margin is the
decided event's log-odds, ``log p - log(1 - p)``.

**Contribution.** With ``M`` the margin on the full input and ``M_-m`` with modality ``m`` withheld,
``d_m = max(0, M - M_-m)`` and ``c_m = d_m / (d_video + d_audio)``: the share of the decision that is
lost without ``m``; the two contributions sum to 1. A decision that neither withholding lowers
(each sense alone suffices) splits evenly, 0.5 / 0.5. When a modality is already missing, the one
that is present carries all of the decision (1 / 0) and no extra rows are run.

In a stream (:class:`~fusionedge.sdk.streaming.Pipeline`) the withheld rows run on one step every
``attribution_interval`` seconds (windows a frame apart overlap almost wholly), and on the next step
at once when a sensor comes or goes or a result decides another event; the results between carry
the latest attribution, its ``step`` naming where it came from.

The withheld runs also give the event scores (and, with the video withheld, the audio-tag scores)
each sense alone produces; :class:`Attribution` keeps them, and the fall of the decided event's
probability (``drop``), so a caller can show what was heard and what was seen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.postprocess import sigmoid, softmax

__all__ = ["BACKGROUND_EVENT", "MODALITIES", "Attribution", "attribute", "decision_margin", "infer_withheld",
           "log_odds", "withheld_inputs"]

#: The modalities in presence-mask order.
MODALITIES: tuple[str, str] = ("video", "audio")
#: The event a decision is scored against (see the module docstring).
BACKGROUND_EVENT = "none"


def log_odds(logits: np.ndarray, index: int) -> np.ndarray:
    """``log p - log(1 - p)`` of class ``index`` under a softmax over the last axis, from logits, stably.

    Args:
        logits: ``(..., C)`` with C >= 2.
        index: the class.

    Returns:
        ``(...)`` float64.
    """
    z = np.asarray(logits, np.float64)
    others = np.delete(z, index, axis=-1)
    top = others.max(axis=-1, keepdims=True)
    return z[..., index] - (top[..., 0] + np.log(np.exp(others - top).sum(axis=-1)))


def decision_margin(logits: np.ndarray, decided: int, events: Sequence[str]) -> np.ndarray:
    """The decided event's margin over the background event (see the module docstring).

    Args:
        logits: ``(..., E)`` event logits.
        decided: index of the decided event.
        events: the ``E`` event labels.

    Returns:
        ``(...)`` float64: ``logit_decided - logit_none``, or the decided event's log-odds when it is
        the background or there is no ``"none"`` event.
    """
    z = np.asarray(logits, np.float64)
    events = tuple(events)
    if BACKGROUND_EVENT in events and events[decided] != BACKGROUND_EVENT:
        return z[..., decided] - z[..., events.index(BACKGROUND_EVENT)]
    return log_odds(z, decided)


@dataclass(frozen=True)
class Attribution:
    """What each modality contributed to one clip's decided event (see the module docstring).

    ``contribution`` sums to 1 over the two modalities; ``margin_drop`` is the fall of the decision's
    margin and ``drop`` that of the decided event's probability when that modality is withheld (0
    for a modality that was missing anyway).
    ``scores_without[m]`` are the event probabilities with ``m`` withheld (absent for a missing
    modality); ``audio_tags_without_video`` the audio-tag probabilities from sound alone (empty
    without audio).
    """

    event: str
    contribution: dict[str, float]
    margin_drop: dict[str, float]
    drop: dict[str, float]
    scores_without: dict[str, dict[str, float]]
    audio_tags_without_video: dict[str, float]
    step: int | None = None  # in a stream: the step it was computed on (later results carry it)

    @property
    def dominant(self) -> str:
        """The modality with the larger contribution (``"video"`` on a tie)."""
        return "audio" if self.contribution["audio"] > self.contribution["video"] else "video"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (rounded to 6 decimals, enough for any threshold a reader applies)."""
        return {
            "event": self.event,
            "contribution": {m: round(v, 6) for m, v in self.contribution.items()},
            "margin_drop": {m: round(v, 6) for m, v in self.margin_drop.items()},
            "drop": {m: round(v, 6) for m, v in self.drop.items()},
            "scores_without": {m: {k: round(v, 6) for k, v in s.items()} for m, s in self.scores_without.items()},
            "audio_tags_without_video": {k: round(v, 6) for k, v in self.audio_tags_without_video.items()},
            **({"step": self.step} if self.step is not None else {}),
        }


def withheld_inputs(
    video: np.ndarray, audio: np.ndarray, presence: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str | None, ...]]:
    """The batch that attributes one preprocessed clip: the full input, then each present modality withheld.

    Args:
        video: ``(T, 3, H, W)`` float32, preprocessed.
        audio: ``(S,)`` float32, preprocessed.
        presence: ``(2,)`` 1 where the modality is present (video, audio).

    Returns:
        ``(video (R, T, 3, H, W), audio (R, S), presence (R, 2), rows)``; ``rows[i]`` names the
        modality withheld in row ``i`` (None for the full input, always row 0). Rows with a
        modality withheld exist only when both modalities are present (R is 3 or 1).

    Raises:
        InputError: ``presence`` is not two values.
    """
    p = np.asarray(presence, np.float32).reshape(-1)
    if p.shape != (2,):
        raise InputError(f"presence must hold 2 values (video, audio), got shape {np.shape(presence)}")
    rows: list[str | None] = [None]
    if p[0] >= 0.5 and p[1] >= 0.5:
        rows += list(MODALITIES)
    n = len(rows)
    videos = np.repeat(np.asarray(video, np.float32)[None], n, axis=0)
    audios = np.repeat(np.asarray(audio, np.float32)[None], n, axis=0)
    presences = np.repeat(p[None], n, axis=0)
    for i, m in enumerate(rows):
        if m == "video":
            videos[i] = 0.0
            presences[i, 0] = 0.0
        elif m == "audio":
            audios[i] = 0.0
            presences[i, 1] = 0.0
    return videos, audios, presences, tuple(rows)


def infer_withheld(
    backend: Any, video: np.ndarray, audio: np.ndarray, presence: np.ndarray
) -> tuple[dict[str, np.ndarray], tuple[str | None, ...]]:
    """Run :func:`withheld_inputs` on ``backend`` in as few calls as its batch limit allows.

    Args:
        backend: a loaded :class:`~fusionedge.sdk.backends.Backend` of the fused model.
        video, audio, presence: one preprocessed clip (see :func:`withheld_inputs`).

    Returns:
        ``(outputs with the rows as batch, rows)``: row 0 is the ordinary result's input.

    Raises:
        InputError: a bad ``presence``.
        BackendError: the backend failed to run.
    """
    videos, audios, presences, rows = withheld_inputs(video, audio, presence)
    step = max(1, int(getattr(getattr(backend, "io", None), "batch_max", len(rows)) or len(rows)))
    chunks = [backend.infer({"video": videos[i : i + step], "audio": audios[i : i + step],
                             "presence": presences[i : i + step]}) for i in range(0, len(rows), step)]
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}, rows


def attribute(
    outputs: Mapping[str, np.ndarray], rows: Sequence[str | None], labels: Mapping[str, Sequence[str]],
    presence: np.ndarray,
) -> Attribution | None:
    """The :class:`Attribution` of row 0 of ``outputs``, from the withheld rows beside it.

    Args:
        outputs: raw model outputs whose batch rows are ``rows`` (from :func:`infer_withheld`, or a
            pipeline that ran :func:`withheld_inputs`).
        rows: what each row withheld (None: the full input, which must be row 0).
        labels: the bundle's labels (``"events"``, ``"audio_tags"``).
        presence: ``(2,)`` of the full input (with one row it tells which modality is present).

    Returns:
        The attribution of the decided event of row 0; None for a model without an event head (it
        decides no event).

    Raises:
        InputError: row 0 is not the full input, the rows do not match the outputs, or (with one
            row) ``presence`` names no single present modality.
    """
    rows = tuple(rows)
    if "event_logits" not in outputs:
        return None
    events, tags = tuple(labels["events"]), tuple(labels["audio_tags"])
    logits = np.asarray(outputs["event_logits"], np.float64)
    if not rows or rows[0] is not None or logits.shape[0] < len(rows):
        raise InputError(f"attribution needs the full input as row 0 and one output row per input row, got "
                         f"rows {list(rows)} for {logits.shape[0]} output rows")
    probs = softmax(logits[: len(rows)])
    decided = int(np.argmax(probs[0]))
    p_full = float(probs[0, decided])
    margins = decision_margin(logits[: len(rows)], decided, events)
    drop = {m: 0.0 for m in MODALITIES}
    margin_drop = {m: 0.0 for m in MODALITIES}
    scores_without: dict[str, dict[str, float]] = {}
    for i, m in enumerate(rows[1:], start=1):
        assert m is not None
        drop[m] = max(0.0, p_full - float(probs[i, decided]))
        margin_drop[m] = max(0.0, float(margins[0] - margins[i]))
        scores_without[m] = {e: float(s) for e, s in zip(events, probs[i])}
    tags_alone: dict[str, float] = {}
    if len(rows) == 1:
        present = [m for m, v in zip(MODALITIES, np.asarray(presence).reshape(-1)) if v >= 0.5]
        if len(present) != 1:
            raise InputError(f"a single-row attribution needs exactly one present modality, got {present}")
        contribution = {m: float(m == present[0]) for m in MODALITIES}
        if present[0] == "audio":
            tags_alone = _tags(outputs, 0, tags)
    else:
        total = margin_drop["video"] + margin_drop["audio"]
        if total <= 1e-9:
            contribution = {m: 0.5 for m in MODALITIES}
        else:
            contribution = {m: margin_drop[m] / total for m in MODALITIES}
        if "video" in rows:
            tags_alone = _tags(outputs, rows.index("video"), tags)
    return Attribution(event=events[decided], contribution=contribution, margin_drop=margin_drop, drop=drop,
                       scores_without=scores_without, audio_tags_without_video=tags_alone)


def _tags(outputs: Mapping[str, np.ndarray], row: int, tags: Sequence[str]) -> dict[str, float]:
    if "audio_tag_logits" not in outputs:  # a model without an audio-tag head
        return {}
    values = sigmoid(np.asarray(outputs["audio_tag_logits"][row], np.float64))
    return {t: float(v) for t, v in zip(tags, values)}
