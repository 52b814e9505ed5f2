"""``fusionedge ask``, ``run --ask`` and question accuracy in ``eval``, through main() on a toy qa bundle."""

from __future__ import annotations

import json

import pytest
from _toy_model import TOY_GEOMETRY, shared_toy_bundle
from _toy_qa import TOY_ANSWERS, shared_qa_bundle, write_toy_clip
from fusionedge.cli.main import main
from fusionedge.sdk import Perception
from fusionedge.sdk.spec import EVENTS


@pytest.fixture(scope="module")
def qa_bundle(tmp_path_factory):
    return shared_qa_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_toy_clip(tmp_path_factory.mktemp("ask-clip"), "c0", 90, 700.0, TOY_GEOMETRY)


def test_ask_json_is_what_perception_answers(qa_bundle, clip, capsys):
    video, audio = clip
    q = "is a siren heard?"
    assert main(["ask", "--bundle", str(qa_bundle), "--video", str(video), "--audio", str(audio), "--top-k", "2",
                 "--json", q]) == 0
    out = json.loads(capsys.readouterr().out)
    with Perception.load(qa_bundle) as p:
        expected = p.ask(q, video_path=video, audio_path=audio, top_k=2).to_dict()
    assert out["backend"] == "onnxruntime" and out["question"] == q
    assert out["answer"] == expected["answer"] and out["answer"] in TOY_ANSWERS
    assert out["score"] == pytest.approx(expected["score"], abs=1e-6)
    assert [t["answer"] for t in out["top_k"]] == [t["answer"] for t in expected["top_k"]]
    assert out["confident"] is expected["confident"]

    assert main(["ask", "--bundle", str(qa_bundle), "--video", str(video), "--audio", str(audio), q]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"answer: {expected['answer']} ({expected['score']:.2f})")
    assert ("not sure: below the bundle's confidence floor" in text) is (not expected["confident"])
    assert "unknown words" not in text
    assert main(["ask", "--bundle", str(qa_bundle), "--video", str(video), "is a zebra heard?"]) == 0
    assert "unknown words (not in the model's vocabulary): zebra" in capsys.readouterr().out


def test_ask_errors_are_one_line_and_status_2(qa_bundle, clip, tmp_path_factory, capsys):
    video, _ = clip
    assert main(["ask", "--bundle", str(qa_bundle), "--video", str(video), "x" * 10_000]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "10000 characters long; the limit is 1000" in err
    plain = shared_toy_bundle(tmp_path_factory)
    assert main(["ask", "--bundle", str(plain), "--video", str(video), "is it quiet?"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fusionedge qa export --bundle" in err


def test_run_ask_writes_answer_records(qa_bundle, clip, tmp_path, tmp_path_factory, capsys):
    video, audio = clip
    events = tmp_path / "events.jsonl"
    assert main(["run", "--bundle", str(qa_bundle), "--video", str(video), "--audio", str(audio), "--fast",
                 "--no-progress", "--json", "--events", str(events), "--ask", "is a siren heard?",
                 "--ask-every", "2"]) == 0
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    results = {x["index"]: x for x in lines if x["type"] == "result"}
    answers = [x for x in lines if x["type"] == "answer"]
    assert results and [a["index"] for a in answers] == [i for i in results if i % 2 == 0]
    for a in answers:
        assert a["question"] == "is a siren heard?" and a["answer"] in TOY_ANSWERS
        assert a["top_k"][0]["answer"] == a["answer"] and 0 < a["score"] <= 1
        assert a["missing"] == results[a["index"]]["missing"]  # asked of the step's own inputs
    capsys.readouterr()
    assert main(["run", "--bundle", str(qa_bundle), "--video", str(video), "--fast", "--ask", "is it quiet?"]) == 2
    assert "--ask writes its answers to the event log" in capsys.readouterr().err
    other = tmp_path / "other.jsonl"
    assert main(["run", "--bundle", str(shared_toy_bundle(tmp_path_factory)), "--video", str(video), "--fast",
                 "--events", str(other), "--ask", "is it quiet?"]) == 2
    assert "fusionedge qa export --bundle" in capsys.readouterr().err  # refused before the stream starts
    assert main(["run", "--bundle", str(qa_bundle), "--video", str(video), "--fast", "--events", str(other),
                 "--ask", "is it\x07 quiet?"]) == 2
    assert "control character U+0007" in capsys.readouterr().err


def test_run_ask_with_named_cameras_answers_per_camera(qa_bundle, clip, tmp_path):
    video, audio = clip
    events = tmp_path / "events.jsonl"
    assert main(["run", "--bundle", str(qa_bundle), "--source", f"front={video}", "--source", f"rear={video}",
                 "--mic", f"cab={audio}", "--fast", "--no-progress", "--json", "--events", str(events),
                 "--ask", "how many cars are ahead?", "--ask-every", "1"]) == 0
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    answers = [x for x in lines if x["type"] == "answer"]
    results = [x for x in lines if x["type"] == "result"]
    assert {a["camera"] for a in answers} == {"front", "rear"}
    assert len(answers) == len(results)


def _write_qa_set(root, clips, questions):
    """A manifest of toy clips, each with its questions."""
    root.mkdir(parents=True)
    rows = []
    for i, (video, audio) in enumerate(clips):
        rows.append({"id": f"c{i}", "video": str(video), "audio": str(audio), "event": EVENTS[i % 4],
                     "audio_tags": [], "boxes": [],
                     "questions": [{"question": q, "answer": a, "type": t} for q, a, t in questions[i]]})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


_ASKED = [("is a siren heard?", "hear"), ("how many cars are ahead?", "count"), ("is there a car?", "exist")]


def _graded_set(qa_bundle, root):
    """Two toy clips whose truths make the bundle right on both 'hear' questions, on the first 'count'
    question only and on no 'exist' question; returns the data folder and the truths per clip."""
    clips = [write_toy_clip(root / "media", f"c{i}", 40 + 60 * i, 300.0 + 500 * i, TOY_GEOMETRY)
             for i in range(2)]
    with Perception.load(qa_bundle) as p:
        given = [[a.answer for a in p.ask_batch([q for q, _ in _ASKED], video_path=v, audio_path=a)]
                 for v, a in clips]
    wrong = {a: next(x for x in TOY_ANSWERS if x != a) for row in given for a in row}
    truth = [[given[c][0], given[c][1] if c == 0 else wrong[given[c][1]], wrong[given[c][2]]] for c in range(2)]
    data = _write_qa_set(root / "data", clips,
                         [[(q, truth[c][k], t) for k, (q, t) in enumerate(_ASKED)] for c in range(2)])
    return data, truth


def test_eval_reports_question_accuracy_per_type(qa_bundle, tmp_path, capsys):
    data, _ = _graded_set(qa_bundle, tmp_path)
    assert main(["eval", "--bundle", str(qa_bundle), "--data", str(data), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["questions"] == 6 and m["questions_per_type"] == {"count": 2, "exist": 2, "hear": 2}
    assert m["question_accuracy_per_type"] == {"count": 0.5, "exist": 0.0, "hear": 1.0}
    assert m["question_accuracy"] == pytest.approx(0.5)
    assert m["questions_unanswerable"] == 0 and 0.0 <= m["question_confident_rate"] <= 1.0
    assert main(["eval", "--bundle", str(qa_bundle), "--data", str(data)]) == 0
    text = capsys.readouterr().out
    assert "question answering: 0.5000 of 6 questions" in text
    assert "  count                0.5000   (2 questions)" in text


def test_eval_without_questions_or_without_qa_reports_none(qa_bundle, tmp_path_factory, tmp_path, capsys):
    clips = [write_toy_clip(tmp_path / "media", "c0", 40, 300.0, TOY_GEOMETRY)]
    data = _write_qa_set(tmp_path / "data", clips, [[("is a siren heard?", "yes", "hear")]])
    assert main(["eval", "--bundle", str(shared_toy_bundle(tmp_path_factory)), "--data", str(data), "--json"]) == 0
    assert "question_accuracy" not in json.loads(capsys.readouterr().out)
    bare = _write_qa_set(tmp_path / "bare", clips, [[]])
    assert main(["eval", "--bundle", str(qa_bundle), "--data", str(bare), "--json"]) == 0
    assert "question_accuracy" not in json.loads(capsys.readouterr().out)


def test_qa_report_scores_types_baseline_and_times_ask_against_infer(qa_bundle, tmp_path, capsys):
    data, truth = _graded_set(qa_bundle, tmp_path)
    out = tmp_path / "qa.md"
    assert main(["qa", "report", "--bundle", str(qa_bundle), "--data", str(data), "--train-data", str(data),
                 "--latency-runs", "3", "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    everything = r["ablations"]["all"]
    per_type = {k: v["accuracy"] for k, v in everything["per_type"].items()}
    assert per_type == {"count": 0.5, "exist": 0.0, "hear": 1.0}
    assert everything["overall"] == pytest.approx(0.5) and r["questions"] == 6 and r["clips"] == 2
    # question-only baseline: each question's most frequent training answer (a tie: the first clip's)
    expected = {t: (1 + (truth[1][k] == truth[0][k])) / 2 for k, (_, t) in enumerate(_ASKED)}
    assert {k: v["accuracy"] for k, v in r["baseline"]["per_type"].items()} == expected
    lat = r["latency"]
    assert lat["runs"] == 3 and set(lat["median_ms"]) == {"infer", "ask", "model_onnx", "qa_onnx"}
    assert all(v > 0 for v in lat["median_ms"].values())
    assert lat["ask_over_infer"] == pytest.approx(lat["median_ms"]["ask"] / lat["median_ms"]["infer"])
    text = out.read_text()
    assert "| count | 2 | 50.0% |" in text and f"`ask` / `infer` = **{lat['ask_over_infer']:.2f}x**" in text
