"""The question tokenizer: words in, fixed-length token ids out, the same on the device as in training.

A bundle that answers questions ships a Hugging Face ``tokenizers`` ``tokenizer.json`` (a WordPiece
model with BERT normalisation and pre-tokenisation). :class:`QuestionTokenizer` wraps it with the one
encoding both training and the device use: ``[CLS]`` followed by the question's word pieces, cut to
``max_tokens - 1`` pieces and padded with ``[PAD]``, plus a float mask. A question is checked before it
is encoded (a string, not blank, at most :data:`MAX_QUESTION_CHARS` characters, no control characters)
and a bad one raises :class:`QuestionError`; words the vocabulary cannot spell are reported, not
silently dropped, and so is a cut. The ``tokenizers`` package (the ``qa`` extra) is imported only when
a tokenizer is loaded.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.sdk.errors import BackendError, BundleError, InputError
from fusionedge.sdk.fileio import loads_json

__all__ = [
    "MAX_MAX_TOKENS",
    "MAX_QUESTION_CHARS",
    "MIN_MAX_TOKENS",
    "SPECIAL_TOKENS",
    "EncodedQuestion",
    "QuestionError",
    "QuestionTokenizer",
    "check_question",
]

#: Longest question accepted, in characters (a spoken or typed question is a sentence or two).
MAX_QUESTION_CHARS = 1000
#: Smallest and largest ``max_tokens`` (``[CLS]`` included) a tokenizer can be used with.
MIN_MAX_TOKENS = 2
MAX_MAX_TOKENS = 512
#: The tokens the encoding needs in the vocabulary.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]")
#: Largest tokenizer file read (a WordPiece vocabulary of a few thousand entries is tens of kilobytes).
_MAX_TOKENIZER_BYTES = 8 * 1024 * 1024
_WHITESPACE = frozenset(" \t\n\r\x0b\x0c")


class QuestionError(InputError):
    """A question cannot be asked as given (not a string, blank, too long, control characters)."""


@dataclass(frozen=True)
class EncodedQuestion:
    """One question as the model takes it.

    ``ids`` (int64, ``(max_tokens,)``) are ``[CLS]``, the word pieces, then ``[PAD]``; ``mask``
    (float32, same shape) is 1.0 over ``[CLS]`` and the pieces and 0.0 over the padding. ``tokens`` are
    the strings of the unpadded ids. ``unknown_words`` are the question's words the vocabulary could not
    spell (each became ``[UNK]``), in order; ``truncated`` says pieces were cut to fit ``max_tokens``.
    """

    ids: np.ndarray
    mask: np.ndarray
    tokens: tuple[str, ...]
    unknown_words: tuple[str, ...]
    truncated: bool


def check_question(question: Any) -> str:
    """Return ``question`` if it can be asked, else raise :class:`QuestionError` saying why."""
    if not isinstance(question, str):
        raise QuestionError(f"a question must be a string, got {type(question).__name__}")
    if len(question) > MAX_QUESTION_CHARS:
        raise QuestionError(f"the question is {len(question)} characters long; "
                            f"the limit is {MAX_QUESTION_CHARS}")
    if not question.strip():
        raise QuestionError("the question is empty" if not question else "the question is only whitespace")
    for i, ch in enumerate(question):
        cat = unicodedata.category(ch)
        if (cat == "Cc" and ch not in _WHITESPACE) or cat == "Cs":
            raise QuestionError(f"the question holds a control character U+{ord(ch):04X} at position {i}")
    return question


def _import_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as e:
        raise BackendError("question answering needs the 'tokenizers' package: "
                           "pip install 'fusionedge[qa]'") from e
    return tokenizers


class QuestionTokenizer:
    """A WordPiece question tokenizer with a fixed output length (see the module docstring)."""

    def __init__(self, tokenizer: Any, max_tokens: int, *, source: str = "tokenizer") -> None:
        """Wrap a loaded ``tokenizers.Tokenizer``; prefer :meth:`from_file` / :meth:`from_str`."""
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) \
                or not MIN_MAX_TOKENS <= max_tokens <= MAX_MAX_TOKENS:
            raise BundleError(f"{source}: max_tokens must be an integer in "
                              f"{MIN_MAX_TOKENS}..{MAX_MAX_TOKENS}, got {max_tokens!r}")
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise BundleError(f"{source}: the vocabulary lacks the special token(s) {', '.join(missing)}")
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tok = tokenizer
        self._source = source
        self.max_tokens = max_tokens
        self.pad_id = int(vocab["[PAD]"])
        self.unk_id = int(vocab["[UNK]"])
        self.cls_id = int(vocab["[CLS]"])
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))

    @classmethod
    def from_str(cls, text: str, max_tokens: int, *, source: str = "tokenizer") -> QuestionTokenizer:
        """Load a ``tokenizer.json`` given as text; a malformed one raises :class:`BundleError`."""
        spec = loads_json(text, what=source, max_bytes=_MAX_TOKENIZER_BYTES, error=BundleError)
        model = spec.get("model") if isinstance(spec, dict) else None
        if not isinstance(model, dict) or model.get("type") != "WordPiece":
            kind = model.get("type") if isinstance(model, dict) else None
            raise BundleError(f"{source}: a question tokenizer must be a WordPiece tokenizer.json "
                              f"(model.type {kind!r})")
        tokenizers = _import_tokenizers()
        try:
            tok = tokenizers.Tokenizer.from_str(text)
        except Exception as e:  # the Rust parser raises a bare Exception for any malformed file
            raise BundleError(f"{source}: not a valid tokenizer.json: {e}") from e
        return cls(tok, max_tokens, source=source)

    @classmethod
    def from_file(cls, path: str | os.PathLike, max_tokens: int) -> QuestionTokenizer:
        """Load a ``tokenizer.json`` file; unreadable or malformed raises :class:`BundleError`."""
        p = Path(path)
        try:
            size = p.stat().st_size
            if size > _MAX_TOKENIZER_BYTES:
                raise BundleError(f"{p}: {size} bytes, more than a question tokenizer can be "
                                  f"({_MAX_TOKENIZER_BYTES})")
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BundleError(f"{p}: cannot read the question tokenizer: {e}") from e
        return cls.from_str(text, max_tokens, source=str(p))

    def encode(self, question: str) -> EncodedQuestion:
        """Encode one question; a question that cannot be asked raises :class:`QuestionError`."""
        check_question(question)
        enc = self._tok.encode(question, add_special_tokens=False)
        ids = list(enc.ids)
        pieces = list(enc.tokens)
        unknown: list[str] = []
        seen_words: set[int] = set()
        for i, tid in enumerate(ids):
            if tid != self.unk_id:
                continue
            word = enc.word_ids[i]
            if word is not None and word in seen_words:
                continue
            if word is not None:
                seen_words.add(word)
            start, end = enc.offsets[i]
            unknown.append(question[start:end] or pieces[i])
        keep = self.max_tokens - 1
        truncated = len(ids) > keep
        ids, pieces = ids[:keep], pieces[:keep]
        out_ids = np.full(self.max_tokens, self.pad_id, dtype=np.int64)
        out_ids[0] = self.cls_id
        out_ids[1:1 + len(ids)] = ids
        mask = np.zeros(self.max_tokens, dtype=np.float32)
        mask[:1 + len(ids)] = 1.0
        return EncodedQuestion(ids=out_ids, mask=mask, tokens=("[CLS]", *pieces),
                               unknown_words=tuple(unknown), truncated=truncated)

    def encode_batch(self, questions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode several questions: ``ids`` int64 ``(B, max_tokens)`` and ``mask`` float32 ``(B, max_tokens)``."""
        if isinstance(questions, str) or not isinstance(questions, Sequence):
            raise QuestionError("encode_batch takes a sequence of questions")
        if not questions:
            raise QuestionError("encode_batch needs at least one question")
        encoded = [self.encode(q) for q in questions]
        return (np.stack([e.ids for e in encoded]), np.stack([e.mask for e in encoded]))

    def __repr__(self) -> str:
        return f"QuestionTokenizer({self._source!r}, vocab={self.vocab_size}, max_tokens={self.max_tokens})"
