"""A standing question in the stream: the same question asked of every N-th step, answers in the event log.

``fusionedge run --ask "is a siren heard?" --ask-every 10`` keeps asking the bundle's
question-answering model (:mod:`fusionedge.sdk.qa`) about what the camera and microphone take in, so a
planner or a person reading the log sees the answer change as the scene does. A :class:`QuestionSink`
is a sink like the others: the pipeline hands it every result with the step's model inputs (it sets
``needs_inputs``), and every ``every``-th result it answers the question on that very clip and writes
an ``{"type": "answer", ...}`` line to a :class:`~fusionedge.sdk.streaming.sinks.JsonlEventSink`. The
question model and the question are loaded and checked when the sink is made, so a bundle without a
``qa`` block or a question that cannot be asked fails before the stream starts. One sink per camera:
each line names its camera.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fusionedge.sdk.errors import InputError
from fusionedge.sdk.streaming.pipeline import StreamResult
from fusionedge.sdk.streaming.sinks import JsonlEventSink, Sink

if TYPE_CHECKING:
    from fusionedge.sdk.perception import Perception

__all__ = ["QuestionSink"]


class QuestionSink(Sink):
    """Ask one question of every ``every``-th result's clip and log the answers.

    Args:
        events: the event log the answer lines go to (shared with the results is fine).
        perception: the loaded bundle; its question-answering model is loaded here.
        question: the standing question.
        every: ask at every n-th step (``index % every == 0``), >= 1.
        top_k: answers listed in each line, >= 1.
        camera: the camera's name written in each line (None: the results' own ``camera``).

    Raises:
        InputError: ``every`` or ``top_k`` < 1.
        QuestionError: a question that cannot be asked.
        BundleError: the bundle answers no questions (the message says how to add a model).
        BackendError: no backend can load the question-answering model.
    """

    #: the pipeline attaches each step's model inputs to the results this sink receives
    needs_inputs = True

    def __init__(self, events: JsonlEventSink, perception: Perception, question: str, *, every: int = 1,
                 top_k: int = 3, camera: str | None = None) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InputError(f"every must be an integer >= 1, got {every!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be an integer >= 1, got {top_k!r}")
        self.qa = perception.qa  # loaded (and golden-checked) now, not on the first answer
        self.qa.tokenizer.encode(question)  # a question that cannot be asked fails before the stream
        self.events = events
        self.question = question
        self.every = every
        self.top_k = top_k
        self.camera = camera
        self.lines = 0
        self.last: dict[str, Any] | None = None  # the latest answer line

    def write(self, result: StreamResult) -> None:
        if result.index % self.every or result.inputs is None:
            return
        video, audio, presence = result.inputs
        answer = self.qa.answer([self.question], video, audio, presence, top_k=self.top_k)[0]
        camera = self.camera if self.camera is not None else result.camera
        head: dict[str, Any] = {"type": "answer"} if camera is None else {"type": "answer", "camera": camera}
        line = {**head, "index": result.index, "t": round(result.t, 6), "missing": list(result.result.missing),
                **answer.to_dict()}
        self.events.write_event(line)
        self.last = line
        self.lines += 1
