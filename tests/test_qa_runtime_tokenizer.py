"""The question tokenizer: the fixed-length encoding, reported unknown words and cuts, typed errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from _toy_qa import TOY_QUESTIONS, train_toy_tokenizer
from fusionedge.sdk.errors import BundleError, InputError
from fusionedge.sdk.qa_tokenizer import MAX_QUESTION_CHARS, QuestionError, QuestionTokenizer


@pytest.fixture(scope="module")
def tokenizer_json() -> str:
    return train_toy_tokenizer()


@pytest.fixture(scope="module")
def tok(tokenizer_json) -> QuestionTokenizer:
    return QuestionTokenizer.from_str(tokenizer_json, 12)


def test_encode_is_cls_pieces_then_padding(tok):
    enc = tok.encode("Is a siren heard?")
    assert enc.ids.dtype == np.int64 and enc.ids.shape == (12,)
    assert enc.mask.dtype == np.float32 and enc.mask.shape == (12,)
    assert enc.tokens == ("[CLS]", "is", "a", "siren", "heard", "?")  # lower-cased by the normaliser
    assert enc.ids[0] == tok.cls_id
    assert (enc.ids[6:] == tok.pad_id).all() and (enc.ids[1:6] != tok.pad_id).all()
    assert enc.mask.tolist() == [1.0] * 6 + [0.0] * 6
    assert enc.unknown_words == () and enc.truncated is False
    # the ids spell the tokens back through the vocabulary
    inverse = {i: t for t, i in json.loads(tok._tok.to_str())["model"]["vocab"].items()}
    assert tuple(inverse[int(i)] for i in enc.ids[:6]) == enc.tokens


def test_every_corpus_question_encodes_without_unknown_words(tok):
    for q in TOY_QUESTIONS:
        enc = tok.encode(q)
        assert enc.unknown_words == (), q
        assert int(enc.mask.sum()) == len(enc.tokens)


def test_truncation_at_max_tokens_is_flagged(tokenizer_json):
    short = QuestionTokenizer.from_str(tokenizer_json, 4)
    enc = short.encode("is the traffic light red?")
    assert enc.truncated is True
    assert enc.tokens == ("[CLS]", "is", "the", "traffic")
    assert enc.mask.tolist() == [1.0, 1.0, 1.0, 1.0]
    exact = short.encode("is it quiet")  # three pieces fill max_tokens - 1 exactly: not a cut
    assert exact.truncated is False and exact.mask.sum() == 4


def test_unknown_words_are_reported_in_order(tok):
    enc = tok.encode("is a zebra heard near the qq?")
    assert enc.unknown_words == ("zebra", "qq")
    assert (enc.ids == tok.unk_id).sum() == 2


def test_batch_equals_single(tok):
    qs = ["is a siren heard?", "how many cars are ahead?", "what colour is the light?"]
    ids, mask = tok.encode_batch(qs)
    assert ids.shape == (3, 12) and ids.dtype == np.int64 and mask.dtype == np.float32
    for row, q in enumerate(qs):
        enc = tok.encode(q)
        assert (ids[row] == enc.ids).all() and (mask[row] == enc.mask).all()


@pytest.mark.parametrize("question, words", [
    ("", "empty"),
    ("   \n\t ", "whitespace"),
    ("x" * 10_000, f"10000 characters long; the limit is {MAX_QUESTION_CHARS}"),
    (42, "must be a string, got int"),
    (None, "must be a string, got NoneType"),
    ("is a siren\x00 heard?", "control character U+0000"),
    ("is a \x1b[31msiren?", "control character U+001B"),
])
def test_questions_that_cannot_be_asked_raise_question_error(tok, question, words):
    with pytest.raises(QuestionError, match=re.escape(words)) as info:
        tok.encode(question)
    assert isinstance(info.value, InputError)


def test_longest_allowed_question_encodes_and_is_cut(tok):
    enc = tok.encode(("is a siren heard " * 100)[:MAX_QUESTION_CHARS])
    assert enc.truncated is True and enc.mask.sum() == 12


def test_batch_names_a_bad_question(tok):
    with pytest.raises(QuestionError, match="empty"):
        tok.encode_batch(["is a siren heard?", ""])
    with pytest.raises(QuestionError):
        tok.encode_batch("is a siren heard?")


def test_from_file(tmp_path, tokenizer_json):
    path = tmp_path / "qa_tokenizer.json"
    path.write_text(tokenizer_json)
    tok = QuestionTokenizer.from_file(path, 8)
    assert tok.encode("is it quiet?").tokens == ("[CLS]", "is", "it", "quiet", "?")
    with pytest.raises(BundleError, match="cannot read"):
        QuestionTokenizer.from_file(tmp_path / "absent.json", 8)


@pytest.mark.parametrize("damage, words", [
    (lambda s: s[: len(s) // 2], "not valid JSON"),
    (lambda s: "[1, 2, 3]", "WordPiece"),
    (lambda s: json.dumps({**json.loads(s), "model": {**json.loads(s)["model"], "type": "BPE"}}), "WordPiece"),
    (lambda s: json.dumps({**json.loads(s), "model": {**json.loads(s)["model"], "vocab": "nope"}}),
     "not a valid tokenizer.json"),
])
def test_malformed_tokenizer_file_is_a_bundle_error(tokenizer_json, damage, words):
    with pytest.raises(BundleError, match=words):
        QuestionTokenizer.from_str(damage(tokenizer_json), 8)


def test_missing_special_token_is_a_bundle_error(tokenizer_json):
    spec = json.loads(tokenizer_json)
    vocab = spec["model"]["vocab"]
    cls_id = vocab.pop("[CLS]")
    vocab["somethingelse"] = cls_id
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "[CLS]"]
    with pytest.raises(BundleError, match=r"lacks the special token\(s\) \[CLS\]"):
        QuestionTokenizer.from_str(json.dumps(spec), 8)


@pytest.mark.parametrize("max_tokens", [1, 513, 2.5, True])
def test_max_tokens_out_of_range_is_a_bundle_error(tokenizer_json, max_tokens):
    with pytest.raises(BundleError, match="max_tokens"):
        QuestionTokenizer.from_str(tokenizer_json, max_tokens)


def test_answer_and_question_error_are_public_names_of_the_runtime():
    import fusionedge.sdk as sdk
    from fusionedge.sdk.qa import Answer
    from fusionedge.sdk.qa_tokenizer import QuestionError as TokenizerQuestionError

    assert sdk.Answer is Answer and sdk.QuestionError is TokenizerQuestionError
    assert {"Answer", "QuestionError"} <= set(sdk.__all__)
    assert issubclass(sdk.QuestionError, sdk.InputError)  # the CLI's one-line, exit-2 errors
