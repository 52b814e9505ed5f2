"""``fusionedge ask``: ask a bundle a question in words about one clip, from what is seen and heard.

The clip is decoded and preprocessed like ``predict`` does (``--audio`` defaults to the video's own
sound), and the bundle's question-answering model (its ``qa`` block) answers with a score and the
best few other answers. An answer below the bundle's confidence floor is printed as "not sure": the
model does not know, and says so. Runtime install only, plus the ``qa`` extra (the tokenizer).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fusionedge.cli.extras import needs
from fusionedge.cli.options import add_backends_option, add_json_option
from fusionedge.cli.output import print_json
from fusionedge.sdk.errors import InputError

__all__ = ["add_ask_parser", "format_answer"]


def format_answer(answer: Any, *, backend: str | None = None) -> str:
    """Human-readable lines for one :class:`fusionedge.sdk.qa.Answer`."""
    head = f"answer: {answer.answer} ({answer.score:.2f})"
    if not answer.confident:
        head += "   not sure: below the bundle's confidence floor"
    lines = [head, "  top: " + ", ".join(f"{a} {s:.2f}" for a, s in answer.top_k)]
    if answer.unknown_words:
        lines.append("  unknown words (not in the model's vocabulary): " + ", ".join(answer.unknown_words))
    if answer.truncated:
        lines.append("  the question was cut to the model's token length; ask a shorter one")
    lines.append(f"  latency: {answer.latency_ms:.1f} ms" + (f"   backend: {backend}" if backend else ""))
    return "\n".join(lines)


def _cmd_ask(args: argparse.Namespace) -> int:
    from fusionedge.sdk import Perception

    if args.video is None and args.audio is None:
        raise InputError("give --video, --audio or both")
    if args.top_k < 1:
        raise InputError(f"--top-k must be >= 1, got {args.top_k}")
    with Perception.load(args.bundle, backends=args.backends) as p:
        from fusionedge.sdk.media import embedded_audio

        audio = args.audio
        if audio is None and args.video is not None:
            audio = embedded_audio(args.video)  # the video's own sound
        answer = p.ask(args.question, video_path=args.video, audio_path=audio, start_seconds=args.start,
                       top_k=args.top_k)
        backend = p.qa.backend.name
    if args.json:
        print_json({**answer.to_dict(), "backend": backend, "model": p.model})
    else:
        print(format_answer(answer, backend=backend))
    return 0


def add_ask_parser(verbs: Any) -> None:
    """Add ``ask`` to the ``fusionedge`` sub-parsers.

    Args:
        verbs: the ``argparse`` sub-parsers object of the ``fusionedge`` parser.
    """
    help = "ask a bundle a question about a clip (what is seen and heard)"
    p = verbs.add_parser("ask", help=help, description=help)
    add_json_option(p)
    p.add_argument("--bundle", required=True, type=Path, help="the bundle folder (with a qa block)")
    add_backends_option(p)
    p.add_argument("--video", type=Path, default=None, help="the video clip (any format OpenCV reads)")
    p.add_argument("--audio", type=Path, default=None,
                   help="audio file: wav, or flac/ogg/mp3 with fusionedge[media] (default: the video's own "
                        "sound where it has one and fusionedge[media] is installed, else vision alone)")
    p.add_argument("--start", type=float, default=0.0, help="clip start in seconds")
    p.add_argument("--top-k", type=int, default=3, help="how many answers to list, best first")
    p.add_argument("question", help="the question in words, e.g. \"is a siren heard?\" (quote it)")
    p.set_defaults(func=needs("qa", _cmd_ask))
