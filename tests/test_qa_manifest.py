"""Tests of the manifest's ``questions`` field (sdk/datamanifest.py): round trip and every error case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fusionedge.sdk.datamanifest import Question, Sample, read_manifest, write_manifest
from fusionedge.sdk.errors import DataError


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.mp4").write_bytes(b"x")
    return tmp_path.resolve()


def _write(root: Path, questions) -> Path:
    rec = {"id": "a", "video": "media/a.mp4", "audio": None, "event": "none", "questions": questions}
    path = root / "manifest.jsonl"
    path.write_text("\n" + json.dumps(rec) + "\n")  # the sample sits on line 2
    return path


def test_questions_round_trip(root):
    qs = (Question("is a siren heard?", "yes", "hear"), Question("how many cars are there?", "2", "count"))
    samples = [Sample("a", root / "media/a.mp4", None, "none", questions=qs),
               Sample("b", root / "media/a.mp4", None, "none")]
    write_manifest(root, samples)
    raw = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
    assert raw[0]["questions"] == [{"question": "is a siren heard?", "answer": "yes", "type": "hear"},
                                   {"question": "how many cars are there?", "answer": "2", "type": "count"}]
    assert "questions" not in raw[1]  # nothing written for a sample without questions
    back = read_manifest(root)
    assert back == samples
    assert back[0].questions == qs and back[1].questions == ()
    assert "questions" not in back[0].meta


@pytest.mark.parametrize("questions, field, words", [
    ({"question": "x"}, "questions", "must be a list"),
    (["is it?"], "questions[0]", "must be an object"),
    ([{"question": "is it?", "answer": "yes"}], "questions[0].type", "is required"),
    ([{"question": "is it?", "answer": 1, "type": "exist"}], "questions[0].answer", "must be a string"),
    ([{"question": "  ", "answer": "yes", "type": "exist"}], "questions[0].question", "must not be empty"),
    ([{"question": "a?", "answer": "yes", "type": "Exist"}], "questions[0].type", "identifier"),
    ([{"question": "a?", "answer": "yes", "type": "ex ist"}], "questions[0].type", "identifier"),
    ([{"question": "a?", "answer": "yes", "type": "exist"},
      {"question": "x" * 1001, "answer": "no", "type": "exist"}], "questions[1].question", "1001 characters"),
    ([{"question": "a?", "answer": "yes", "type": "exist", "anwser": "no"}], "questions[0]", "unknown keys"),
])
def test_bad_questions_name_file_line_and_field(root, questions, field, words):
    path = _write(root, questions)
    with pytest.raises(DataError) as e:
        read_manifest(path)
    msg = str(e.value)
    assert f"{path}:2: field {field!r}" in msg and words in msg


def test_question_at_the_limit_is_accepted(root):
    path = _write(root, [{"question": "x" * 1000, "answer": "yes", "type": "exist_2"}])
    (s,) = read_manifest(path)
    assert s.questions == (Question("x" * 1000, "yes", "exist_2"),)
