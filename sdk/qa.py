"""Scene question answering on the device: a question in words about a clip, an answer with its score.

A fused bundle that answers questions carries a ``qa`` manifest block naming three more files: the
question-answering model (``qa.onnx``: the clip tensors ``model.onnx`` takes, plus the question's
token ids and mask, in; ``answer_logits`` over the block's ``answers``, out), its question tokenizer
(:mod:`fusionedge.sdk.qa_tokenizer`) and golden inputs and outputs. All three are hashed in the
manifest like every bundle file, so the tokenizer is as verified as the weights. :class:`QaModel`
loads them through the same backend layer as the main model — lazily, on the first question, so a
bundle that is never asked anything costs nothing — and checks the model against its golden outputs
before answering. Answer scores are ``softmax(logits / temperature)`` with the block's fitted
temperature; an answer scoring below ``min_confidence`` is returned as not ``confident`` (the top
answer and its true score, never a made-up certainty). :meth:`fusionedge.sdk.Perception.ask` is the
public entry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from fusionedge.sdk.backends import Backend, ModelIO, TensorSpec, backend_class, get_backend
from fusionedge.sdk.bundle_schema import QA_KEY
from fusionedge.sdk.errors import BackendError, BundleError, InputError
from fusionedge.sdk.postprocess import softmax
from fusionedge.sdk.qa_tokenizer import QuestionTokenizer, check_question
from fusionedge.sdk.selftest import compare_golden

if TYPE_CHECKING:
    from fusionedge.sdk.bundle import Bundle
    from fusionedge.sdk.perception import Fallback

__all__ = ["QA_INPUTS", "QA_OUTPUT", "Answer", "QaModel", "QaSpec", "answer_scores", "check_questions",
           "no_qa_error"]

log = logging.getLogger(__name__)

#: The question inputs ``qa.onnx`` takes after the clip tensors of ``model.onnx``.
QA_INPUTS = ("question_ids", "question_mask")
#: Its one output: a logit per answer of the ``qa`` block.
QA_OUTPUT = "answer_logits"
_DEFAULTS = {"temperature": 1.0, "min_confidence": 0.5, "golden_rtol": 1e-3, "golden_atol": 1e-4}


@dataclass(frozen=True)
class QaSpec:
    """A bundle's ``qa`` block, read (the schema is checked by :func:`~fusionedge.sdk.bundle.load_bundle`)."""

    model: str  # the question-answering ONNX file, relative to the bundle
    tokenizer: str  # its tokenizer.json
    golden: str  # its golden inputs and outputs (.npz)
    max_tokens: int  # token ids per question, [CLS] included
    answers: tuple[str, ...]  # answer index = logit index
    question_types: tuple[str, ...]  # the question types it was trained on (informational)
    temperature: float  # scores are softmax(logits / temperature)
    min_confidence: float  # a top answer scoring below this is not confident
    golden_rtol: float
    golden_atol: float

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> QaSpec | None:
        """The manifest's ``qa`` block, or None when the bundle answers no questions."""
        block = manifest.get(QA_KEY)
        if block is None:
            return None
        get = {**_DEFAULTS, **block}
        return cls(model=str(block["model"]), tokenizer=str(block["tokenizer"]), golden=str(block["golden"]),
                   max_tokens=int(block["max_tokens"]), answers=tuple(block["answers"]),
                   question_types=tuple(block.get("question_types", ())),
                   temperature=float(get["temperature"]), min_confidence=float(get["min_confidence"]),
                   golden_rtol=float(get["golden_rtol"]), golden_atol=float(get["golden_atol"]))


@dataclass(frozen=True)
class Answer:
    """The answer to one question about one clip.

    ``answer`` is the best-scoring answer and ``score`` its probability (tempered softmax over the
    bundle's answers); ``top_k`` the best ``k`` as ``(answer, score)``, best first. ``confident`` is
    False when ``score`` is below the bundle's ``min_confidence``: the model does not know, and the
    answer should be read as "I don't know". ``unknown_words`` are the question's words the tokenizer
    could not spell, ``truncated`` says the question was cut to the model's token length.
    ``latency_ms`` is the time from the call to the answer, decoding the clip included.
    """

    question: str
    answer: str
    score: float
    top_k: tuple[tuple[str, float], ...]
    confident: bool
    unknown_words: tuple[str, ...]
    truncated: bool
    latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the answer (``top_k`` as ``[{"answer", "score"}]``)."""
        return {
            "question": self.question,
            "answer": self.answer,
            "score": float(self.score),
            "top_k": [{"answer": a, "score": float(s)} for a, s in self.top_k],
            "confident": bool(self.confident),
            "unknown_words": list(self.unknown_words),
            "truncated": bool(self.truncated),
            "latency_ms": round(float(self.latency_ms), 3),
        }


def answer_scores(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Answer probabilities ``softmax(logits / temperature)`` of ``(A,)`` or ``(B, A)`` logits (float64)."""
    return softmax(np.asarray(logits, np.float64) / float(temperature), axis=-1)


def check_questions(questions: Sequence[str]) -> None:
    """Refuse anything but a non-empty sequence of questions that can be asked.

    Raises:
        InputError: a single string or an empty sequence.
        QuestionError: a question that is not a string, blank, too long or holds control characters.
    """
    if isinstance(questions, str) or not isinstance(questions, Sequence) or not questions:
        raise InputError("expected a non-empty list of questions")
    for q in questions:
        check_question(q)


def no_qa_error(bundle: Bundle) -> BundleError:
    """The error for a question to a bundle without a ``qa`` block: says how to add one."""
    return BundleError(
        f"{bundle.model_id} ({bundle.path}) answers no questions: its manifest has no '{QA_KEY}' block; add a "
        f"question-answering model with `fusionedge qa export --bundle {bundle.path} --checkpoint "
        f"QA_RUN/best.pt`")


def _qa_io(bundle: Bundle, spec: QaSpec) -> ModelIO:
    """The interface of ``qa.onnx``: the main model's inputs, the question inputs, ``answer_logits``."""
    main = ModelIO.from_manifest(bundle.manifest)
    inputs = main.inputs + (TensorSpec("question_ids", ("batch", spec.max_tokens), "int64"),
                            TensorSpec("question_mask", ("batch", spec.max_tokens), "float32"))
    outputs = (TensorSpec(QA_OUTPUT, ("batch", len(spec.answers)), "float32"),)
    return ModelIO(inputs=inputs, outputs=outputs, batch_min=main.batch_min, batch_opt=main.batch_opt,
                   batch_max=main.batch_max)


class QaModel:
    """A bundle's question-answering model and tokenizer, loaded on one backend. Create with :meth:`load`."""

    def __init__(self, bundle: Bundle, spec: QaSpec, tokenizer: QuestionTokenizer, backend: Backend, *,
                 fallbacks: Sequence[Fallback] = ()) -> None:
        """Bind a loaded backend and tokenizer to a bundle's ``qa`` block (use :meth:`load`)."""
        self.bundle = bundle
        self.spec = spec
        self.tokenizer = tokenizer
        self.backend = backend
        #: the backends asked for that could not run the question model, and why
        self.fallbacks: tuple[Fallback, ...] = tuple(fallbacks)

    @classmethod
    def load(cls, bundle: Bundle, backends: Sequence[str] = ("onnxruntime",), *,
             backend_options: Mapping[str, Mapping[str, Any]] | None = None, self_test: bool = True) -> QaModel:
        """Load a bundle's question-answering model on the first backend in ``backends`` that loads it.

        A backend that runs device-built engines (TensorRT) is passed over: its plans are built and
        found for ``model.onnx``. ONNX Runtime is tried last when no backend listed can load it; every
        backend passed over is logged and kept in :attr:`fallbacks`.

        Args:
            bundle: a loaded (verified) fused bundle.
            backends: backend names in order of preference; one that fails is logged and the next tried.
            backend_options: per-backend constructor options, as for :meth:`Perception.load
                <fusionedge.sdk.Perception.load>`.
            self_test: run the golden inputs and hold ``answer_logits`` to the block's tolerance first.

        Raises:
            BundleError: the bundle has no ``qa`` block (the message says how to add one), a malformed
                tokenizer, or a model that disagrees with its golden outputs.
            BackendError: no backend could load ``qa.onnx`` (each one's reason is given), or the
                ``tokenizers`` package is missing.
        """
        spec = QaSpec.from_manifest(bundle.manifest)
        if spec is None:
            raise no_qa_error(bundle)
        for rel in (spec.model, spec.tokenizer, spec.golden):  # a bundle loaded without verify=True
            if not (bundle.path / rel).is_file():
                raise BundleError(f"{rel}: missing from the bundle (listed in its qa block); re-export it with "
                                  f"`fusionedge qa export`")
        tokenizer = QuestionTokenizer.from_file(bundle.path / spec.tokenizer, spec.max_tokens)
        io = _qa_io(bundle, spec)
        from fusionedge.sdk.perception import Fallback  # the one record of a backend passed over

        fallbacks: list[Fallback] = []
        options = dict(backend_options or {})
        for name in dict.fromkeys([*backends, "onnxruntime"]):
            try:
                if backend_class(name).builds_engines:
                    raise BackendError(f"{name} runs device engines built for model.onnx, not for {spec.model}")
                backend = get_backend(name, **dict(options.get(name, {})))
                backend.load(bundle.path / spec.model, io)
            except BackendError as e:
                fallbacks.append(Fallback(name, str(e)))
                log.warning("backend %r cannot run %s, trying the next one: %s", name, spec.model, e)
                continue
            model = cls(bundle, spec, tokenizer, backend, fallbacks=fallbacks)
            if self_test:
                try:
                    model.self_test()
                except BaseException:
                    backend.close()
                    raise
            return model
        reasons = "; ".join(f"{f.backend}: {f.reason}" for f in fallbacks)
        raise BackendError(f"no backend could load {spec.model} of {bundle.model_id} ({reasons})")

    @property
    def answers(self) -> tuple[str, ...]:
        """The answers the model chooses from, in logit order."""
        return self.spec.answers

    def golden(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The golden inputs ``{name: array}`` and ``answer_logits`` of the ``qa`` block.

        Raises:
            BundleError: the file is unreadable or lacks an array.
        """
        rel = self.spec.golden
        try:
            with np.load(self.bundle.path / rel, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError) as e:
            raise BundleError(f"{rel}: cannot be read as .npz ({e}); the bundle is corrupted") from e
        names = self.backend.io.input_names + (QA_OUTPUT,)
        missing = [n for n in names if n not in arrays]
        if missing:
            raise BundleError(f"{rel}: no array(s) {', '.join(map(repr, missing))}; re-export the qa model")
        return {n: arrays[n] for n in self.backend.io.input_names}, arrays[QA_OUTPUT]

    def self_test(self) -> float:
        """Run the golden inputs and compare ``answer_logits`` with the golden ones.

        Returns:
            The largest absolute difference.

        Raises:
            BundleError: a difference beyond ``golden_rtol`` / ``golden_atol``, or a broken golden file.
            NonFiniteOutputError: the model computed NaN or Inf.
        """
        inputs, expected = self.golden()
        got = self.backend.infer(inputs)
        errors = compare_golden(got, {QA_OUTPUT: expected}, rtol=self.spec.golden_rtol, atol=self.spec.golden_atol,
                                where=f"qa self-test on {self.backend.name}", golden_file=self.spec.golden)
        return max(errors.values(), default=0.0)

    def answer(self, questions: Sequence[str], video: np.ndarray, audio: np.ndarray, presence: np.ndarray, *,
               top_k: int = 3, started: float | None = None) -> tuple[Answer, ...]:
        """Answer questions about one preprocessed clip, in one batch.

        Args:
            questions: the questions (each checked by the tokenizer).
            video, audio, presence: one clip as ``model.onnx`` takes it, without the batch axis:
                ``(T, 3, H, W)``, ``(S,)`` and ``(2,)`` float32.
            top_k: how many answers each :class:`Answer` lists, >= 1.
            started: ``time.perf_counter()`` when the caller started (the answers' ``latency_ms``).

        Raises:
            QuestionError: a question that cannot be asked (named by the tokenizer).
            InputError: ``top_k`` < 1, or no questions.
            BackendError: the backend failed to run.
        """
        t0 = time.perf_counter() if started is None else started
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be an integer >= 1, got {top_k!r}")
        check_questions(questions)
        encoded = [self.tokenizer.encode(q) for q in questions]
        n = len(encoded)
        step = self.backend.io.batch_max
        logits = []
        for i in range(0, n, step):
            rows = encoded[i:i + step]
            b = len(rows)
            feeds = {"video": np.broadcast_to(video, (b, *video.shape)),
                     "audio": np.broadcast_to(audio, (b, *audio.shape)),
                     "presence": np.broadcast_to(presence, (b, *presence.shape)),
                     "question_ids": np.stack([e.ids for e in rows]),
                     "question_mask": np.stack([e.mask for e in rows])}
            logits.append(self.backend.infer(feeds)[QA_OUTPUT])
        scores = answer_scores(np.concatenate(logits), self.spec.temperature)
        k = min(top_k, len(self.spec.answers))
        latency = (time.perf_counter() - t0) * 1e3
        out = []
        for q, enc, row in zip(questions, encoded, scores):
            order = np.argsort(-row, kind="stable")[:k]
            best = int(order[0])
            out.append(Answer(question=q, answer=self.spec.answers[best], score=float(row[best]),
                              top_k=tuple((self.spec.answers[int(j)], float(row[int(j)])) for j in order),
                              confident=bool(row[best] >= self.spec.min_confidence),
                              unknown_words=enc.unknown_words, truncated=enc.truncated, latency_ms=latency))
        return tuple(out)

    def close(self) -> None:
        """Release the backend. Safe to call more than once."""
        self.backend.close()

    def __repr__(self) -> str:
        return f"<QaModel {self.bundle.model_id}:{self.spec.model} on {self.backend.name}>"
