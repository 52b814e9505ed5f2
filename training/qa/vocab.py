"""The question vocabulary and the answer vocabulary, both made from the training questions.

The tokenizer is a WordPiece ``tokenizer.json`` (the format :mod:`fusionedge.sdk.qa_tokenizer` reads
on the device): BERT normalisation (lower case, accents stripped), BERT pre-tokenisation, and a
vocabulary learnt by ``tokenizers``' ``WordPieceTrainer`` over the training questions, with
``[PAD]``, ``[UNK]`` and ``[CLS]`` first. Training and the device then encode only through
``QuestionTokenizer``, so the two cannot disagree. The answer vocabulary is every answer of the
training questions, in a fixed order (yes/no, counts, then the rest alphabetically), so the answer
index is the logit index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fusionedge.sdk.errors import DataError
from fusionedge.sdk.qa_tokenizer import SPECIAL_TOKENS, QuestionTokenizer

__all__ = ["DEFAULT_MAX_TOKENS", "DEFAULT_VOCAB_SIZE", "answer_index", "answer_vocabulary", "train_tokenizer"]

DEFAULT_VOCAB_SIZE = 600  # the question corpus is templated: a few hundred pieces spell it all
DEFAULT_MAX_TOKENS = 24  # [CLS] + pieces; the longest template needs about 20
_FIRST = ("no", "yes", "0", "1", "2", "3")


def train_tokenizer(questions: Iterable[str], *, vocab_size: int = DEFAULT_VOCAB_SIZE,
                    max_tokens: int = DEFAULT_MAX_TOKENS) -> tuple[str, QuestionTokenizer]:
    """Learn a WordPiece vocabulary over ``questions``.

    Returns:
        ``(tokenizer_json_text, QuestionTokenizer)``: the text to ship in a bundle and the wrapper
        that encodes with it.

    Raises:
        DataError: no questions were given.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    corpus = [q for q in questions if q.strip()]
    if not corpus:
        raise DataError("no questions to learn a vocabulary from (the data carries no 'questions')")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                        show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    text = tok.to_str()
    return text, QuestionTokenizer.from_str(text, max_tokens, source="trained question tokenizer")


def answer_vocabulary(answers: Iterable[str]) -> tuple[str, ...]:
    """Every distinct answer, yes/no and counts first, then alphabetically.

    Raises:
        DataError: no answers were given.
    """
    seen = set(answers)
    if not seen:
        raise DataError("no answers: the training data carries no 'questions'")
    first = [a for a in _FIRST if a in seen]
    return tuple(first + sorted(seen - set(first)))


def answer_index(vocab: Sequence[str]) -> dict[str, int]:
    """answer → logit index."""
    return {a: i for i, a in enumerate(vocab)}
