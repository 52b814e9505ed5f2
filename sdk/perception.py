"""The embedded Python API: load a bundle, run it on a clip, get events, audio tags and boxes.

::

    from fusionedge.sdk import Perception

    with Perception.load("bundle/", backends=["tensorrt", "onnxruntime"]) as p:
        r = p.infer(video_path="clip.mp4", audio_path="clip.wav")
        print(r.event, r.scores[r.event], r.boxes, r.audio_tags, r.backend, r.timings)

:meth:`Perception.load` verifies the bundle and tries the backends in the order given: a backend
that cannot load is logged (``logging.warning``) and recorded in :attr:`Perception.fallbacks`, and
every :class:`Result` names the backend that ran — a fallback is never silent.

:meth:`Perception.infer` takes raw arrays (frames at any size, audio at any rate and channel count)
or file paths, preprocesses them with the bundle's own geometry, runs the model and decodes its heads.
A missing modality runs as zeros with presence 0 (the model is trained with modality dropout) and is
listed in ``Result.missing``.

A bundle of an imported model (``task`` classify, detect or audio-classify;
:mod:`fusionedge.sdk.generic`) is served the same way: ``infer(image=...)``, ``infer(video_path=...)``
(the last frame of the window) or ``infer(audio_path=...)`` gives class ``scores``, ``boxes`` in the
original image's pixels, or ``audio_tags``, as the model declares.

:meth:`Perception.ask` answers a question in words about a clip when the bundle has a ``qa`` block
(:mod:`fusionedge.sdk.qa`): the clip is decoded and preprocessed exactly as for :meth:`~Perception.infer`,
and the question model is loaded on the first question.

This module is past 600 lines because it is the one public facade of the runtime: loading with
fallbacks, background engine builds, both inference paths and questions share one object's state.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from fusionedge.sdk.attribution import Attribution, attribute, infer_withheld
from fusionedge.sdk.backends import Backend, ModelIO, backend_class, get_backend
from fusionedge.sdk.bundle import Bundle, load_bundle
from fusionedge.sdk.calibration import ALARM_EVENTS, DEFAULT_SCORE_THRESHOLD, DEFAULT_TAG_THRESHOLD, Calibration
from fusionedge.sdk.engine_fingerprint import NoEngineError
from fusionedge.sdk.errors import BackendError, InputError
from fusionedge.sdk.generic import GenericModel, in_source_pixels, last_frame, reader_target
from fusionedge.sdk.media import read_audio_window, read_video
from fusionedge.sdk.postprocess import Detection, decode_centernet, sigmoid, softmax
from fusionedge.sdk.preprocess import preprocess_audio, preprocess_video
from fusionedge.sdk.qa import Answer, QaModel, QaSpec, check_questions, no_qa_error
from fusionedge.sdk.selftest import compare_golden
from fusionedge.sdk.spec import MODALITIES, InputGeometry, bundle_modalities, check_fusion_contract

__all__ = ["Fallback", "Perception", "Result"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Fallback:
    """A backend that was asked for but could not be loaded, and why."""

    backend: str
    reason: str


@dataclass(frozen=True)
class Result:
    """What the model made of one clip.

    ``boxes`` refer to the last frame of the clip window, in the original frame's pixels; they are
    empty when video is missing. ``audio_tags`` is empty when audio is missing. A task without a
    head gives none of its answer: ``event`` None and ``scores`` empty (no events), ``audio_tags``
    empty (no audio tags) or ``boxes`` empty (no object classes). A calibrated bundle
    (:mod:`fusionedge.sdk.calibration`) tempers ``scores``, turns tags on at their own thresholds and
    scores how far the clip lies from its validation data: ``uncertain`` means too far to trust the
    answer, and an uncertain result raises no alarm. Without calibration ``ood_score`` is None,
    ``uncertain`` False and a tag is on at 0.5.
    """

    event: str | None  # the most likely event class; None for a task without events
    scores: dict[str, float]  # softmax over event classes (with the bundle's temperature, if calibrated)
    audio_tags: dict[str, float]  # sigmoid per audio tag (multi-label)
    boxes: list[Detection]  # best score first
    backend: str  # the backend that ran
    model: str  # name@version of the bundle
    missing: tuple[str, ...] = ()  # modalities that were absent ("video", "audio")
    timings: dict[str, float] = field(default_factory=dict)  # ms: decode, preprocess, infer, postprocess
    engine: str | None = None  # background engine build: "building", "ready" or "failed: ..."; None: none
    attribution: Attribution | None = None  # each sensor's share of the decision (load with attribution=True)
    tags_on: tuple[str, ...] | None = None  # tags at or above their threshold (None given: 0.5)
    ood_score: float | None = None  # out-of-distribution score (higher: farther); None: not calibrated
    uncertain: bool = False  # the OOD score is above the bundle's threshold

    def __post_init__(self) -> None:
        if self.tags_on is None:
            on = tuple(t for t, s in self.audio_tags.items() if s >= DEFAULT_TAG_THRESHOLD)
            object.__setattr__(self, "tags_on", on)

    @property
    def alarm(self) -> bool:
        """Whether the result raises an emergency alarm: an emergency event, and not ``uncertain``."""
        return self.event in ALARM_EVENTS and not self.uncertain

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the result (boxes as ``{label, score, x1, y1, x2, y2}``)."""
        return {
            "event": self.event,
            "scores": {k: float(v) for k, v in self.scores.items()},
            "audio_tags": {k: float(v) for k, v in self.audio_tags.items()},
            "boxes": [
                {"label": b.label, "score": float(b.score), "x1": float(b.x1), "y1": float(b.y1),
                 "x2": float(b.x2), "y2": float(b.y2)}
                for b in self.boxes
            ],
            "backend": self.backend,
            "model": self.model,
            "missing": list(self.missing),
            "timings": {k: round(float(v), 3) for k, v in self.timings.items()},
            "engine": self.engine,
            "attribution": None if self.attribution is None else self.attribution.to_dict(),
            "tags_on": list(self.tags_on or ()),
            "ood_score": None if self.ood_score is None else float(self.ood_score),
            "uncertain": bool(self.uncertain),
            "alarm": self.alarm,
        }


class Perception:
    """A loaded bundle bound to one backend. Create with :meth:`Perception.load`."""

    def __init__(
        self,
        bundle: Bundle,
        backend: Backend,
        *,
        fallbacks: Sequence[Fallback] = (),
        score_threshold: float | None = None,
        top_k: int = 50,
        attribution: bool = False,
    ) -> None:
        """Bind a loaded backend to a bundle (use :meth:`load`, which does the loading and fallback).

        With ``attribution`` every result of the fused model carries :class:`Attribution
        <fusionedge.sdk.attribution.Attribution>` (the clip is also run with each modality withheld,
        in the same batch: about the cost of a batch of 3).

        Raises:
            BundleError: the bundle does not follow the FusionEdge model contract.
            InputError: ``score_threshold`` outside [0, 1] or ``top_k`` < 1.
        """
        if score_threshold is not None and not 0.0 <= float(score_threshold) <= 1.0:
            raise InputError(f"score_threshold must be in [0, 1], got {score_threshold!r}")
        if int(top_k) < 1:
            raise InputError(f"top_k must be >= 1, got {top_k!r}")
        #: the declared interface of an imported model; None for the fused camera + audio model
        self.generic: GenericModel | None = _check_contract(bundle)
        #: the bundle's fitted calibration (temperature, tag thresholds, OOD score); None when it has none
        self.calibration: Calibration | None = Calibration.from_manifest(bundle.manifest) if self.generic is None \
            else None
        #: what the fused model reads ("video", "audio"); a one-modality model needs that input
        self.modalities: tuple[str, ...] = MODALITIES if self.generic else bundle_modalities(bundle.manifest)
        self.bundle = bundle
        self.backend = backend
        self.fallbacks: tuple[Fallback, ...] = tuple(fallbacks)
        #: state of a background engine build (see ``engine_build`` in :meth:`load`); None when there is none
        self.engine_state: str | None = None
        self._retired: list[Backend] = []  # backends replaced by a finished build; closed in close()
        self._builder: threading.Thread | None = None
        #: the one detection threshold the caller gave for every class; None: the bundle's own
        self.score_threshold_override: float | None = None if score_threshold is None else float(score_threshold)
        #: the lowest detection score kept: the caller's, or the default where none was given
        self.score_threshold = DEFAULT_SCORE_THRESHOLD if score_threshold is None else float(score_threshold)
        cal = self.calibration
        #: per object class of the fused model, the lowest score of a box in ``Result.boxes``: the
        #: calibration's fitted thresholds unless the caller gave ``score_threshold``
        self.detection_thresholds: dict[str, float] = (
            dict(cal.detection_thresholds) if score_threshold is None and cal is not None and cal.detection_thresholds
            else {c: self.score_threshold for c in (self.labels["objects"] if self.generic is None else ())})
        self.top_k = int(top_k)
        self.attribution = bool(attribution)
        self._qa: QaModel | None = None  # the question-answering model, loaded by the first ask
        self._qa_lock = threading.Lock()
        #: backend names and options the question-answering model is loaded with (those of load())
        self._qa_backends: tuple[tuple[str, ...], dict[str, Any]] = ((backend.name,), {})

    # ----------------------------------------------------------------------------------- loading

    @classmethod
    def load(
        cls,
        bundle_path: str | os.PathLike,
        backends: Sequence[str] = ("onnxruntime",),
        *,
        verify: bool = True,
        score_threshold: float | None = None,
        top_k: int = 50,
        backend_options: Mapping[str, Mapping[str, Any]] | None = None,
        engine_build: str = "first",
        expected_digest: str | None = None,
        public_key: Any = None,
        attribution: bool = False,
    ) -> Perception:
        """Load and verify a bundle, then the first backend in ``backends`` that loads.

        Args:
            bundle_path: the bundle folder.
            backends: backend names in order of preference, e.g. ``["tensorrt", "onnxruntime"]``.
                Each one that fails is logged and recorded in :attr:`fallbacks` before the next is tried.
            verify: check every bundle file's size and SHA-256 first (see :func:`load_bundle`).
            score_threshold: lowest detection score kept in ``Result.boxes``, in [0, 1], for every
                class. None (default): each class's threshold from the bundle's calibration when it
                has them (:mod:`~fusionedge.sdk.calibration`), else 0.3.
            top_k: most boxes per result.
            backend_options: per-backend constructor options, e.g.
                ``{"onnxruntime": {"intra_op_threads": 2}}``.
            engine_build: for a backend that compiles a device engine (TensorRT) when this device has
                none yet: ``"first"`` (default) builds it during load — minutes on a Jetson, nothing
                served meanwhile; ``"background"`` serves on the next backend in ``backends`` at once,
                builds in a background thread, and switches to the engine when it is ready. The state
                is on every result (``Result.engine``) and in :attr:`engine_state`.
            expected_digest: the bundle's pinned digest (:attr:`Bundle.digest
                <fusionedge.sdk.bundle.Bundle.digest>`); a bundle whose manifest has another is refused.
            public_key: a trusted ed25519 public key (or a list); the bundle's ``manifest.sig`` must
                verify with one of them (see :func:`~fusionedge.sdk.bundle.load_bundle`).
            attribution: attach each modality's contribution to every result (see ``__init__``).

        Returns:
            A ready :class:`Perception`.

        Raises:
            BundleError: the bundle is invalid, altered, not the pinned one, not signed by a trusted
                key (when ``public_key`` is given), or does not follow the model contract.
            InputError: ``expected_digest`` is not 64 hex digits, or ``public_key`` is not ed25519.
            BackendError: no backend could be loaded (the message gives each one's reason), or
                ``backends`` is empty.
        """
        names = [backends] if isinstance(backends, str) else list(backends)
        if not names:
            raise BackendError("no backend given; pass e.g. backends=['onnxruntime']")
        if engine_build not in ("first", "background"):
            raise BackendError(f"engine_build must be 'first' or 'background', got {engine_build!r}")
        bundle = load_bundle(bundle_path, verify=verify, expected_digest=expected_digest, public_key=public_key)
        if _check_contract(bundle) is None:
            Calibration.from_manifest(bundle.manifest)  # a malformed block is refused before a backend loads
        io = ModelIO.from_manifest(bundle.manifest)
        options = dict(backend_options or {})
        fallbacks: list[Fallback] = []
        deferred: str | None = None  # a backend whose engine builds in the background
        for name in names:
            opts = dict(options.get(name, {}))
            try:
                if engine_build == "background" and deferred is None and backend_class(name).builds_engines:
                    opts["build"] = "never"  # don't block on a build: NoEngineError defers it
                backend = get_backend(name, **opts)
                backend.load(bundle.model_path, io)
            except NoEngineError as e:
                deferred = name
                fallbacks.append(Fallback(name, f"no engine for this device yet; building it in the background ({e})"))
                log.warning("backend %r has no engine for this device yet: serving on the next backend while "
                            "it builds", name)
                continue
            except BackendError as e:
                fallbacks.append(Fallback(name, str(e)))
                if len(fallbacks) < len(names):
                    log.warning("backend %r could not be loaded, trying the next one: %s", name, e)
                continue
            if fallbacks:
                log.warning("running %s on backend %r (fell back from %s)", bundle.model_id, name,
                            ", ".join(f.backend for f in fallbacks))
            p = cls(bundle, backend, fallbacks=fallbacks, score_threshold=score_threshold, top_k=top_k,
                    attribution=attribution)
            p._qa_backends = (tuple(names), options)
            if deferred is not None:
                p._build_in_background(deferred, dict(options.get(deferred, {})), io)
            return p
        reasons = "; ".join(f"{f.backend}: {f.reason}" for f in fallbacks)
        raise BackendError(f"no backend could load {bundle.model_id} ({reasons})")

    # -------------------------------------------------------------------------------- properties

    @property
    def geometry(self) -> InputGeometry:
        """The model's input geometry, from the bundle manifest."""
        return self.bundle.geometry

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        """``{"events", "objects", "audio_tags"}`` from the bundle manifest."""
        return self.bundle.labels

    @property
    def backend_name(self) -> str:
        """The name of the backend that runs the model."""
        return self.backend.name

    @property
    def model(self) -> str:
        """``name@version`` of the bundle."""
        return self.bundle.model_id

    # ---------------------------------------------------------------------------------- inference

    def infer(
        self,
        *,
        video: np.ndarray | None = None,
        audio: np.ndarray | None = None,
        image: np.ndarray | None = None,
        sample_rate: int | None = None,
        fps: float | None = None,
        video_path: str | os.PathLike | None = None,
        audio_path: str | os.PathLike | None = None,
        start_seconds: float = 0.0,
    ) -> Result:
        """Run the model on one clip window ``[start_seconds, start_seconds + clip_seconds)``.

        Args:
            video: ``(N, H, W, 3)`` uint8 RGB frames, any size.
            audio: ``(S,)`` or ``(S, C)`` float samples in [-1, 1], any rate and channel count.
            image: ``(H, W, 3)`` uint8 RGB, any size: the input of an imported image model (a
                classifier or detector bundle); the fused model takes ``video`` instead.
            sample_rate: Hz of ``audio`` (required with ``audio``).
            fps: frame rate of ``video``; None takes the N frames as spanning one clip window.
            video_path: a video file or a folder of images, instead of ``video``.
            audio_path: a WAV file, instead of ``audio``.
            start_seconds: where the window starts, from the first frame / sample, >= 0.

        Returns:
            A :class:`Result`; boxes are in the original frames' pixels (last frame of the window).

        Raises:
            InputError: both modalities missing, or the one a one-modality bundle reads (a modality
                the bundle does not read is ignored), an array and a path for the same modality, a bad
                shape/dtype/rate, or NaN/Inf (each named).
            MediaError: a file cannot be decoded.
            BackendError: the backend failed to run.
        """
        if self.generic is not None:
            return self._infer_generic(video, audio, image, sample_rate, fps, video_path, audio_path,
                                       start_seconds)
        video_t, audio_t, presence, frame_wh, timings = self._clip_tensors(
            video, audio, image, sample_rate, fps, video_path, audio_path, start_seconds)

        t0 = time.perf_counter()
        backend = self.backend  # a background engine build may replace it; this call stays on one
        rows = None
        if self.attribution:  # the full clip and each modality withheld, in one batch
            out, rows = infer_withheld(backend, video_t, audio_t, presence)
        else:
            out = backend.infer({"video": video_t[None], "audio": audio_t[None], "presence": presence[None]})
        timings["infer"] = _ms(t0)

        t0 = time.perf_counter()
        result = self.decode(out, frame_wh=frame_wh, has_audio=bool(presence[1]), timings=timings,
                             backend_name=backend.name)
        if rows is not None:
            result = replace(result, attribution=attribute(out, rows, self.labels, presence))
        timings["postprocess"] = _ms(t0)  # the same dict the result holds
        return result

    def _clip_tensors(
        self, video: np.ndarray | None, audio: np.ndarray | None, image: np.ndarray | None,
        sample_rate: int | None, fps: float | None, video_path: str | os.PathLike | None,
        audio_path: str | os.PathLike | None, start_seconds: float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int] | None, dict[str, float]]:
        """Check, decode and preprocess one clip for the fused model (what :meth:`infer` takes).

        Returns:
            ``(video (T,3,H,W), audio (S,), presence (2,), (w, h) of the frames or None, timings)``.
        """
        if image is not None:
            raise InputError(f"image= is for a single-image model; {self.model} takes video (and audio)")
        if video is not None and video_path is not None:
            raise InputError("pass either video or video_path, not both")
        if audio is not None and audio_path is not None:
            raise InputError("pass either audio or audio_path, not both")
        if video is None and video_path is None and audio is None and audio_path is None:
            raise InputError("no input: pass video/video_path, audio/audio_path, or both")
        given = {"video": video is not None or video_path is not None,
                 "audio": audio is not None or audio_path is not None}
        if len(self.modalities) == 1 and not given[self.modalities[0]]:
            only = self.modalities[0]
            raise InputError(f"{self.model} reads {only} only; no {only} given (pass {only} or {only}_path)")
        if "video" not in self.modalities:  # never decoded: the model does not read it
            video = video_path = None
        if "audio" not in self.modalities:
            audio = audio_path = None
        start = float(start_seconds)
        if not math.isfinite(start) or start < 0:
            raise InputError(f"start_seconds must be a finite number >= 0, got {start_seconds!r}")
        g = self.geometry
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        frames, frame_fps, video_start, frame_wh = self._decode_video(video, video_path, fps, start)
        samples, rate, audio_start = self._decode_audio(audio, audio_path, sample_rate, start)
        timings["decode"] = _ms(t0)

        t0 = time.perf_counter()
        if frames is not None:
            video_t = preprocess_video(frames, frame_fps, g, start_seconds=video_start)  # (T, 3, H, W)
        else:
            video_t = np.zeros((g.clip_frames, 3, g.height, g.width), np.float32)
        if samples is not None:
            audio_t = preprocess_audio(samples, rate, g, start_seconds=audio_start)  # (S,)
        else:
            audio_t = np.zeros(g.audio_samples, np.float32)
        presence = np.array([frames is not None, samples is not None], np.float32)  # (2,) video, audio
        timings["preprocess"] = _ms(t0)
        return video_t, audio_t, presence, frame_wh, timings

    def ask(
        self,
        question: str,
        *,
        video: np.ndarray | None = None,
        audio: np.ndarray | None = None,
        image: np.ndarray | None = None,
        sample_rate: int | None = None,
        fps: float | None = None,
        video_path: str | os.PathLike | None = None,
        audio_path: str | os.PathLike | None = None,
        start_seconds: float = 0.0,
        top_k: int = 3,
    ) -> Answer:
        """Answer a question in words about one clip window, from what is seen and heard.

        The clip is given as to :meth:`infer`; the bundle's question-answering model (its ``qa``
        block) is loaded on the first question, on the backends this object was loaded with.

        Returns:
            An :class:`~fusionedge.sdk.qa.Answer`: the answer, its score and the ``top_k`` best, and
            ``confident`` False when the score is below the bundle's ``min_confidence``.

        Raises:
            BundleError: the bundle answers no questions (the message says how to add a model), or
                its question-answering model fails its golden self-test.
            QuestionError: a question that is not a string, blank, over 1000 characters or holds
                control characters.
            InputError, MediaError, BackendError: as for :meth:`infer`.
        """
        return self.ask_batch([question], video=video, audio=audio, image=image, sample_rate=sample_rate,
                              fps=fps, video_path=video_path, audio_path=audio_path,
                              start_seconds=start_seconds, top_k=top_k)[0]

    def ask_batch(
        self,
        questions: Sequence[str],
        *,
        video: np.ndarray | None = None,
        audio: np.ndarray | None = None,
        image: np.ndarray | None = None,
        sample_rate: int | None = None,
        fps: float | None = None,
        video_path: str | os.PathLike | None = None,
        audio_path: str | os.PathLike | None = None,
        start_seconds: float = 0.0,
        top_k: int = 3,
    ) -> tuple[Answer, ...]:
        """Answer several questions about one clip: the clip is decoded once and run in one batch.

        Returns:
            One :class:`~fusionedge.sdk.qa.Answer` per question, in order (see :meth:`ask`).
        """
        qa = self.qa  # loaded on the first question; not part of an answer's latency
        t0 = time.perf_counter()
        check_questions(questions)  # a question that cannot be asked is refused before the clip is decoded
        video_t, audio_t, presence, _, _ = self._clip_tensors(video, audio, image, sample_rate, fps, video_path,
                                                              audio_path, start_seconds)
        return qa.answer(questions, video_t, audio_t, presence, top_k=top_k, started=t0)

    @property
    def qa(self) -> QaModel:
        """The bundle's question-answering model, loaded on first use (see :meth:`ask`).

        Raises:
            BundleError: the bundle answers no questions, or its model fails its golden self-test.
            BackendError: no backend could load it, or the ``tokenizers`` package is missing.
        """
        with self._qa_lock:
            if self._qa is None:
                if self.generic is not None or QaSpec.from_manifest(self.bundle.manifest) is None:
                    raise no_qa_error(self.bundle)
                names, options = self._qa_backends
                self._qa = QaModel.load(self.bundle, names, backend_options=options)
            return self._qa

    def decode(
        self,
        outputs: Mapping[str, np.ndarray],
        *,
        frame_wh: tuple[int, int] | None,
        has_audio: bool,
        timings: dict[str, float] | None = None,
        index: int = 0,
        backend_name: str | None = None,
    ) -> Result:
        """Turn one sample of raw model outputs into a :class:`Result` — the one post-processing path.

        Args:
            outputs: the backend's outputs (batch first).
            frame_wh: (width, height) of the original frame the boxes are scaled to; None when video
                was missing (then no boxes, and "video" is listed as missing).
            has_audio: False when audio was missing (then no audio tags, and "audio" is listed as missing).
            timings: stage timings (ms) to attach to the result; kept by reference.
            index: which sample of the batch.
            backend_name: the backend that produced ``outputs`` (default: the current one).

        Returns:
            The result: softmax event scores, sigmoid audio tags, boxes in the frame's pixels; with the
            bundle's calibration applied when it has one (tempered scores, tag thresholds, OOD score,
            ``uncertain`` also when a modality the alarm needs is missing).
        """
        g = self.geometry
        events, tags = self.labels["events"], self.labels["audio_tags"]
        cal = self.calibration
        # a head the task lacks has no output: no event (None, scores {}), no tags or no boxes
        has_events = "event_logits" in outputs
        has_tags = has_audio and "audio_tag_logits" in outputs
        event_logits = outputs["event_logits"][index].astype(np.float64) if has_events else np.zeros(0)
        scores = event_logits if not has_events else softmax(event_logits) if cal is None else cal.event_probs(
            event_logits)
        boxes: list[Detection] = []
        if frame_wh is not None and "det_heatmap" in outputs:
            boxes = decode_centernet(
                outputs["det_heatmap"][index], outputs["det_size"][index], outputs["det_offset"][index],
                stride=g.output_stride, labels=self.labels["objects"],
                score_threshold=[self.detection_thresholds[c] for c in self.labels["objects"]],
                top_k=self.top_k, out_wh=tuple(frame_wh), in_wh=(g.width, g.height),
            )
        tag_scores = sigmoid(outputs["audio_tag_logits"][index].astype(np.float64)) if has_tags else None
        audio_tags = {} if tag_scores is None else {t: float(s) for t, s in zip(tags, tag_scores)}
        missing = tuple(m for m, present in (("video", frame_wh is not None), ("audio", has_audio))
                        if not present and m in self.modalities)  # a modality the model never reads is not missing
        ood: float | None = None
        if cal is not None and has_events:
            tag_logits = outputs["audio_tag_logits"][index][None] if has_tags else None
            ood = float(cal.ood_scores(event_logits[None], tag_logits)[0])
        return Result(
            event=events[int(np.argmax(scores))] if has_events else None,
            scores={e: float(s) for e, s in zip(events, scores)},
            audio_tags=audio_tags,
            boxes=boxes,
            backend=backend_name or self.backend_name,
            model=self.model,
            missing=missing,
            timings=timings if timings is not None else {},
            engine=self.engine_state,
            tags_on=None if cal is None else cal.tags_on(audio_tags),
            ood_score=ood,
            uncertain=False if ood is None else bool(cal.is_uncertain(ood, has_audio=has_audio,
                                                                      has_video=frame_wh is not None)),
        )

    def _infer_generic(
        self,
        video: np.ndarray | None,
        audio: np.ndarray | None,
        image: np.ndarray | None,
        sample_rate: int | None,
        fps: float | None,
        video_path: str | os.PathLike | None,
        audio_path: str | os.PathLike | None,
        start_seconds: float,
    ) -> Result:
        """:meth:`infer` for an imported model: one image (or a video's last frame) or one waveform."""
        model = self.generic
        assert model is not None
        given = [n for n, v in (("image", image), ("video", video), ("video_path", video_path),
                                ("audio", audio), ("audio_path", audio_path)) if v is not None]
        takes = ("audio", "audio_path") if model.modality == "audio" else ("image", "video", "video_path")
        if len(given) != 1 or given[0] not in takes:
            raise InputError(f"{self.model} ({model.task}) takes exactly one of {', '.join(takes)}, got "
                             f"{', '.join(given) or 'none'}")
        start = float(start_seconds)
        if not math.isfinite(start) or start < 0:
            raise InputError(f"start_seconds must be a finite number >= 0, got {start_seconds!r}")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        transform = None
        source_wh: tuple[int, int] | None = None
        if model.modality == "audio":
            samples, rate, audio_start = self._decode_audio(audio, audio_path, sample_rate, start)
            timings["decode"] = _ms(t0)
            t0 = time.perf_counter()
            tensor = preprocess_audio(samples, rate, self.geometry, start_seconds=audio_start)
        else:
            if image is None:
                target = reader_target(video_path, model.image) if video_path is not None else None
                frames, frame_fps, window_start, source_wh = self._decode_video(video, video_path, fps, start,
                                                                                target)
                assert frames is not None
                image = last_frame(frames, frame_fps, window_start, self.geometry.clip_seconds)
            timings["decode"] = _ms(t0)
            t0 = time.perf_counter()
            tensor, transform = model.image_tensor(image)
        timings["preprocess"] = _ms(t0)
        t0 = time.perf_counter()
        backend = self.backend
        out = backend.infer(model.feed(tensor[None]))
        timings["infer"] = _ms(t0)
        t0 = time.perf_counter()
        decoded = model.decode(out, transform=transform, score_threshold=self.score_threshold,
                               top_k=self.top_k)
        boxes = in_source_pixels(decoded.boxes, transform, source_wh)  # the reader may shrink a large frame
        timings["postprocess"] = _ms(t0)
        return Result(event=decoded.event, scores=decoded.scores, audio_tags=decoded.audio_tags, boxes=boxes,
                      backend=backend.name, model=self.model, timings=timings, engine=self.engine_state)

    def infer_inputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch of preprocessed inputs of an imported model, in chunks of the bundle's maximum batch.

        Args:
            batch: ``(B, ...)`` float32 input tensors (:meth:`GenericModel.image_tensor
                <fusionedge.sdk.generic.GenericModel.image_tensor>` or a preprocessed waveform each).

        Returns:
            The raw outputs ``{name: (B, ...) array}``.

        Raises:
            InputError: the bundle is the fused model, an empty batch, or a bad shape (named).
            BackendError: the backend failed to run.
        """
        if self.generic is None:
            raise InputError(f"{self.model} is the fused model; use infer_batch(video, audio, presence)")
        if not isinstance(batch, np.ndarray) or batch.ndim == 0 or batch.shape[0] == 0:
            raise InputError("expected a non-empty batched numpy array")
        step = self.backend.io.batch_max
        model = self.generic
        chunks = [self.backend.infer(model.feed(batch[i : i + step])) for i in range(0, len(batch), step)]
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    def infer_batch(
        self, video: np.ndarray, audio: np.ndarray, presence: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Run preprocessed inputs, split into chunks of at most the bundle's maximum batch.

        Args:
            video: ``(B, T, 3, H, W)`` float32, preprocessed.
            audio: ``(B, S)`` float32, preprocessed.
            presence: ``(B, 2)`` float32, 1 where the modality is present (video, audio).

        Returns:
            The raw outputs ``{name: (B, ...) array}`` in the manifest's output order.

        Raises:
            InputError: wrong shapes/dtypes, batch sizes that differ, or NaN/Inf (named).
            BackendError: the backend failed to run.
        """
        arrays = {"video": video, "audio": audio, "presence": presence}
        for name, arr in arrays.items():
            if not isinstance(arr, np.ndarray) or arr.ndim == 0:
                raise InputError(f"input '{name}': expected a batched numpy array, got {type(arr).__name__}")
        sizes = {name: arr.shape[0] for name, arr in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise InputError(f"inputs have different batch sizes: {sizes}")
        total = sizes["video"]
        if total == 0:
            raise InputError("empty batch")
        step = self.backend.io.batch_max
        chunks = [
            self.backend.infer({k: v[i : i + step] for k, v in arrays.items()}) for i in range(0, total, step)
        ]
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    def run_batch(
        self, video: np.ndarray, audio: np.ndarray, presence: np.ndarray
    ) -> tuple[dict[str, np.ndarray], Perception]:
        """:meth:`infer_batch`, plus the model that ran it — decode its outputs with that model.

        A pipeline that infers in one stage and decodes in another calls this, so that a model that
        can be replaced while it serves (``fusionedge.sdk.fleet.hotswap.HotSwapPerception``) decodes
        every output with the labels of the model that produced it.
        """
        return self.infer_batch(video, audio, presence), self

    def self_test(self) -> float:
        """Run the bundle's golden inputs on the loaded backend and compare with the golden outputs.

        The same check as :func:`fusionedge.sdk.selftest.run_golden`, on the backend already loaded.

        Returns:
            The largest absolute difference over all outputs.

        Raises:
            NonFiniteOutputError: the model computed NaN or Inf (names the output).
            BundleError: an output differs beyond the bundle's recorded tolerance (``golden.rtol`` /
                ``golden.atol``, elementwise ``|a - b| <= atol + rtol * |b|``), or the golden file
                holds NaN/Inf, naming the output.
            BackendError: the backend failed to run.
        """
        inputs, expected = self.bundle.golden()
        backend = self.backend
        got = backend.infer(inputs)
        golden = self.bundle.manifest["golden"]
        errors = compare_golden(got, expected, rtol=float(golden["rtol"]), atol=float(golden["atol"]),
                                where=f"self-test on {backend.name}", golden_file=golden["file"])
        return max(errors.values(), default=0.0)

    # -------------------------------------------------------------------------------- lifecycle

    def wait_for_engine(self, timeout: float | None = None) -> str | None:
        """Wait for a background engine build to finish; returns :attr:`engine_state`."""
        if self._builder is not None:
            self._builder.join(timeout)
        return self.engine_state

    def _build_in_background(self, name: str, options: dict[str, Any], io: ModelIO) -> None:
        """Build ``name``'s engine in a thread, then make it the backend between two inferences."""
        self.engine_state = "building"

        def build() -> None:
            try:
                backend = get_backend(name, **{**options, "build": "first", "build_progress": False})
                backend.load(self.bundle.model_path, io)  # builds the engine, then loads it
            except Exception as e:  # noqa: BLE001 - reported on every result, never raised into serving
                self.engine_state = f"failed: {e}"
                log.error("background engine build for %s failed; staying on %s: %s", self.model,
                          self.backend_name, e)
                return
            # An inference in flight keeps its reference to the old backend, which stays open until
            # close(); the next inference uses the new one.
            self._retired.append(self.backend)
            self.backend = backend
            self.engine_state = "ready"
            log.warning("engine for %s is ready: now running on %s", self.model, name)

        self._builder = threading.Thread(target=build, name=f"engine-build-{name}", daemon=True)
        self._builder.start()

    def close(self) -> None:
        """Release the backend (and wait for a background engine build). Safe to call more than once."""
        if self._builder is not None:
            self._builder.join()
        for old in self._retired:
            old.close()
        if self._qa is not None:
            self._qa.close()
        self.backend.close()

    def __enter__(self) -> Perception:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Perception {self.model} on {self.backend_name}>"

    # ---------------------------------------------------------------------------------- helpers

    def _decode_video(
        self, video: np.ndarray | None, path: str | os.PathLike | None, fps: float | None, start: float,
        downscale_to: tuple[int, int] | None = None,
    ) -> tuple[np.ndarray | None, float, float, tuple[int, int] | None]:
        """``(frames, fps, window start within frames, (w, h) boxes map to)``; frames None without video."""
        g = self.geometry
        if path is not None:  # the reader cuts the window and shrinks huge frames as it decodes
            clip = read_video(path, max_seconds=g.clip_seconds, start_seconds=start,
                              downscale_to=downscale_to or (g.width, g.height))
            return clip.frames, clip.fps, 0.0, clip.size
        if video is None:
            return None, 0.0, 0.0, None
        if not (isinstance(video, np.ndarray) and video.dtype == np.uint8 and video.ndim == 4
                and video.shape[-1] == 3):
            raise InputError(
                f"video must be uint8 RGB frames of shape (N, H, W, 3), got "
                f"{getattr(video, 'dtype', type(video).__name__)} {getattr(video, 'shape', '')}"
            )
        if fps is None:
            fps = video.shape[0] / g.clip_seconds  # the frames span one clip window
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise InputError(f"fps must be a finite number > 0, got {fps!r}")
        return video, float(fps), start, (video.shape[2], video.shape[1])

    def _decode_audio(
        self, audio: np.ndarray | None, path: str | os.PathLike | None, sample_rate: int | None, start: float
    ) -> tuple[np.ndarray | None, int, float]:
        """``(samples, rate, window start within samples)``; samples None when audio is missing."""
        if path is not None:  # only the window (and the resampler's context) is read
            g = self.geometry
            clip = read_audio_window(path, start, g.clip_seconds, target_rate=g.sample_rate)
            return clip.samples, clip.rate, clip.start_seconds
        if audio is None:
            return None, 0, start
        if sample_rate is None:
            raise InputError("audio given as an array needs sample_rate (Hz)")
        return audio, sample_rate, start


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def _check_contract(bundle: Bundle) -> GenericModel | None:
    """Check that a bundle's manifest describes a model Perception can drive.

    Returns:
        The imported model's declared interface, or None for the fused camera + audio model.
    """
    if bundle.task != "fusion":
        return GenericModel.from_bundle(bundle)
    check_fusion_contract(bundle)
    return None
