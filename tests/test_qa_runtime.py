"""Perception.ask on a bundle with a ``qa`` block: answers, scores, errors, lazy loading, integrity."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from _tamper import edit_manifest, rehash
from _toy_model import copy_bundle, shared_toy_bundle
from _toy_qa import TOY_ANSWERS, TOY_MAX_TOKENS, shared_qa_bundle, write_toy_clip
from fusionedge.sdk import Perception
from fusionedge.sdk.bundle import load_bundle
from fusionedge.sdk.datamanifest import Sample
from fusionedge.sdk.errors import BundleError, InputError
from fusionedge.sdk.evaluate import load_sample_inputs
from fusionedge.sdk.postprocess import softmax
from fusionedge.sdk.qa_tokenizer import QuestionError, QuestionTokenizer


@pytest.fixture(scope="module")
def qa_bundle(tmp_path_factory):
    return shared_qa_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, qa_bundle):
    folder = tmp_path_factory.mktemp("qa-clip")
    return write_toy_clip(folder, "c0", 90, 700.0, load_bundle(qa_bundle).geometry)


def _reference_logits(bundle, video, audio, question):
    """qa.onnx run directly in ONNX Runtime on the clip as evaluation decodes it: what ask must score."""
    b = load_bundle(bundle)
    v, a, p, _ = load_sample_inputs(Sample("c0", video, audio, None, (), (), None, None, {}), b.geometry)
    tok = QuestionTokenizer.from_file(bundle / "qa_tokenizer.json", TOY_MAX_TOKENS)
    enc = tok.encode(question)
    session = ort.InferenceSession(str(bundle / "qa.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"video": v[None], "audio": a[None], "presence": p[None],
                              "question_ids": enc.ids[None], "question_mask": enc.mask[None]})[0][0].astype(np.float64)


def _reference_scores(bundle, video, audio, question, temperature):
    return softmax(_reference_logits(bundle, video, audio, question) / temperature)


def test_ask_on_a_clip_file_gives_the_qa_model_tempered_scores(qa_bundle, clip):
    video, audio = clip
    with Perception.load(qa_bundle) as p:
        assert p._qa is None  # nothing is loaded for questions until one is asked
        p.infer(video_path=video, audio_path=audio)
        assert p._qa is None
        answer = p.ask("Is a siren heard?", video_path=video, audio_path=audio, top_k=4)
    expected = _reference_scores(qa_bundle, video, audio, "Is a siren heard?",
                                 load_bundle(qa_bundle).manifest["qa"]["temperature"])
    best = int(np.argmax(expected))
    assert answer.answer == TOY_ANSWERS[best]
    assert answer.score == pytest.approx(expected[best], abs=1e-5)
    assert [a for a, _ in answer.top_k] == [TOY_ANSWERS[i] for i in np.argsort(-expected)[:4]]
    assert [s for _, s in answer.top_k] == pytest.approx(sorted(expected, reverse=True)[:4], abs=1e-5)
    assert answer.confident == (answer.score >= 0.5)
    assert answer.unknown_words == () and answer.truncated is False
    assert answer.latency_ms > 0
    d = answer.to_dict()
    assert d["answer"] == answer.answer and d["top_k"][0] == {"answer": answer.answer, "score": answer.score}


def test_batch_equals_single_questions(qa_bundle, clip):
    video, audio = clip
    questions = ["is a siren heard?", "how many cars are ahead?", "what colour is the light?"]
    with Perception.load(qa_bundle) as p:
        batch = p.ask_batch(questions, video_path=video, audio_path=audio, top_k=2)
        single = [p.ask(q, video_path=video, audio_path=audio, top_k=2) for q in questions]
    assert [a.question for a in batch] == questions
    for b, s in zip(batch, single):
        assert b.answer == s.answer
        assert b.score == pytest.approx(s.score, abs=1e-5)
        assert len(b.top_k) == 2
    assert len({round(a.score, 6) for a in batch}) > 1  # the question changes the answer's scores


def test_unknown_words_and_overlong_questions(qa_bundle):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, 40, 60, 3), dtype=np.uint8)
    with Perception.load(qa_bundle) as p:
        a = p.ask("is a zebra near the qq?", video=frames)
        assert a.unknown_words == ("zebra", "qq") and a.answer in TOY_ANSWERS
        long = p.ask("is the traffic light red and " * 6 + "is a siren heard?", video=frames)
        assert long.truncated is True
        with pytest.raises(QuestionError, match="10000 characters long; the limit is 1000"):
            p.ask("x" * 10_000, video=frames)
        with pytest.raises(QuestionError, match="empty"):
            p.ask("", video=frames)
        with pytest.raises(QuestionError, match="must be a string"):
            p.ask_batch(["is it quiet?", None], video=frames)  # type: ignore[list-item]


def test_a_bad_question_is_refused_before_the_clip_is_decoded(qa_bundle, tmp_path):
    missing = tmp_path / "no-such-clip.mp4"
    with Perception.load(qa_bundle) as p:
        with pytest.raises(QuestionError, match="10000 characters"):
            p.ask("x" * 10_000, video_path=missing)
        with pytest.raises(QuestionError, match="only whitespace"):
            p.ask_batch(["is it quiet?", " "], video_path=missing)
        with pytest.raises(InputError, match="non-empty list of questions"):
            p.ask_batch([], video_path=missing)


def test_a_bundle_without_qa_says_how_to_add_one(tmp_path_factory):
    with Perception.load(shared_toy_bundle(tmp_path_factory)) as p, \
            pytest.raises(BundleError, match=r"no 'qa' block.*fusionedge qa export --bundle"):
        p.ask("is a siren heard?", video=np.zeros((2, 32, 48, 3), np.uint8))


@pytest.mark.parametrize("rel", ["qa.onnx", "qa_tokenizer.json", "qa_golden.npz"])
def test_a_tampered_qa_file_is_refused_by_the_hash_check(qa_bundle, tmp_path, rel):
    bad = copy_bundle(qa_bundle, tmp_path / "b")
    data = bytearray((bad / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / rel).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rel.replace(".", r"\.")):
        Perception.load(bad)


def test_a_qa_model_that_disagrees_with_its_golden_outputs_is_refused_on_the_first_question(qa_bundle, tmp_path):
    bad = copy_bundle(qa_bundle, tmp_path / "b")
    with np.load(bad / "qa_golden.npz") as g:
        arrays = {k: g[k] for k in g.files}
    arrays["answer_logits"] = arrays["answer_logits"] + 0.5
    np.savez(bad / "qa_golden.npz", **arrays)
    rehash(bad, "qa_golden.npz")  # hashes valid: only the self-test can see it
    with Perception.load(bad) as p, \
            pytest.raises(BundleError, match="qa self-test on onnxruntime: output 'answer_logits' differs"):
        p.ask("is a siren heard?", video=np.zeros((2, 32, 48, 3), np.uint8))


def test_a_missing_qa_file_of_an_unverified_bundle_is_a_bundle_error(qa_bundle, tmp_path):
    bad = copy_bundle(qa_bundle, tmp_path / "b")
    (bad / "qa.onnx").unlink()
    with Perception.load(bad, verify=False) as p, pytest.raises(BundleError, match="qa.onnx: missing from the bundle"):
        p.ask("is it quiet?", video=np.zeros((2, 32, 48, 3), np.uint8))


def _with_block(src, dest, **block):
    out = copy_bundle(src, dest)
    edit_manifest(out, lambda m: m["qa"].update(block))
    return out


def test_low_confidence_is_reported_not_hidden(qa_bundle, tmp_path, clip):
    video, audio = clip
    q = "is a siren heard?"
    logits = np.sort(_reference_logits(qa_bundle, video, audio, q))
    hot, cold = 1e3 * np.abs(logits).max(), (logits[-1] - logits[-2]) / 10  # near-uniform; a clear winner
    flat = _with_block(qa_bundle, tmp_path / "flat", temperature=float(hot))
    sharp = _with_block(qa_bundle, tmp_path / "sharp", temperature=float(cold))
    with Perception.load(flat) as p:
        unsure = p.ask(q, video_path=video, audio_path=audio)
    with Perception.load(sharp) as p:
        sure = p.ask(q, video_path=video, audio_path=audio)
    assert unsure.answer == sure.answer == unsure.top_k[0][0]  # the same top answer, honestly scored
    assert unsure.score == pytest.approx(_reference_scores(qa_bundle, video, audio, q, hot).max(), abs=1e-6)
    assert unsure.score < 0.2 and unsure.confident is False and unsure.to_dict()["confident"] is False
    assert sure.score > 0.5 and sure.confident is True
    picky = _with_block(qa_bundle, tmp_path / "picky", temperature=float(cold), min_confidence=1.0)
    with Perception.load(picky) as p:
        assert p.ask(q, video_path=video, audio_path=audio).confident is (sure.score >= 1.0)


@pytest.mark.parametrize("block, words", [
    ({"answers": ["yes", "yes"]}, "qa.answers': expected unique answers"),
    ({"answers": []}, "qa.answers': expected a non-empty list"),
    ({"max_tokens": 1}, r"qa.max_tokens': expected an integer in 2..512"),
    ({"model": "other.onnx"}, "qa.model': 'other.onnx' is not listed in 'files'"),
    ({"tokenizer": "../t.json"}, "qa.tokenizer': expected a relative path"),
    ({"temperature": 0}, "qa.temperature': expected a value > 0"),
    ({"min_confidence": 1.5}, r"qa.min_confidence': expected a score in \[0, 1\]"),
])
def test_a_malformed_qa_block_is_refused_at_load(qa_bundle, tmp_path, block, words):
    bad = _with_block(qa_bundle, tmp_path / "b", **block)
    with pytest.raises(BundleError, match=words):
        Perception.load(bad)


def test_close_releases_the_qa_model(qa_bundle):
    p = Perception.load(qa_bundle)
    p.ask("is it quiet?", audio=np.zeros(4000, np.float32), sample_rate=8000)
    qa = p.qa
    p.close()
    assert qa.backend.closed and p.backend.closed


def test_an_engine_building_backend_is_not_used_for_qa_onnx(qa_bundle):
    """A backend that runs device-built plans finds them by the main model's fingerprint: qa.onnx is not
    that model, so question answering goes on to the next backend, and says so."""
    from fusionedge.sdk.backends import register_backend
    from fusionedge.sdk.backends.onnxruntime import OnnxRuntimeBackend

    class PlanBackend(OnnxRuntimeBackend):
        name = "plan-test"
        builds_engines = True

    register_backend("plan-test", PlanBackend)
    with Perception.load(qa_bundle, backends=["plan-test", "onnxruntime"]) as p:
        assert p.backend_name == "plan-test"  # the main model may run on it
        p.ask("is it quiet?", video=np.zeros((2, 32, 48, 3), np.uint8))
        assert p.qa.backend.name == "onnxruntime"
        assert [f.backend for f in p.qa.fallbacks] == ["plan-test"]
        assert "model.onnx" in p.qa.fallbacks[0].reason


def test_qa_falls_back_to_onnxruntime_when_no_listed_backend_loads_it(qa_bundle):
    with Perception.load(qa_bundle, backends=["onnxruntime"]) as p:
        p._qa_backends = (("no-such-backend",), {})
        answer = p.ask("is it quiet?", video=np.zeros((2, 32, 48, 3), np.uint8))
        assert answer.answer in TOY_ANSWERS and p.qa.backend.name == "onnxruntime"
        assert p.qa.fallbacks[0].backend == "no-such-backend"


_NO_TORCH = """
import json, sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np
from fusionedge.sdk import Perception
p = Perception.load(sys.argv[1])
loaded_before = "tokenizers" in sys.modules
a = p.ask("is a siren heard?", video=np.zeros((2, 32, 48, 3), np.uint8))
p.close()
print(json.dumps({"answer": a.to_dict(), "tokenizers_before_ask": loaded_before,
                  "training": sorted(m for m in sys.modules if m.startswith(("fusionedge.training", "fusionedge.export")))}))
"""


def test_ask_runs_without_torch_and_imports_tokenizers_only_when_asked(qa_bundle):
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, str(qa_bundle)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["answer"]["answer"] in TOY_ANSWERS
    assert report["tokenizers_before_ask"] is False and report["training"] == []


def test_the_perception_and_question_sessions_stop_spinning_after_each_run(qa_bundle, clip):
    # two sessions of one process take turns: one's workers must not spin on the cores the other's run needs
    from fusionedge.sdk.backends.onnxruntime import OnnxRuntimeBackend
    from fusionedge.sdk.errors import BackendError

    video, audio = clip
    key = "session.force_spinning_stop"

    def sessions(p):
        p.ask("is a siren heard?", video_path=video, audio_path=audio)  # loads the question model
        return [b._session.get_session_options() for b in (p.backend, p.qa.backend)]

    with Perception.load(qa_bundle) as p:
        assert [so.get_session_config_entry(key) for so in sessions(p)] == ["1", "1"]
    with Perception.load(qa_bundle, backend_options={"onnxruntime": {"stop_spinning": False}}) as p:
        for so in sessions(p):  # ONNX Runtime's default: the entry is not set
            with pytest.raises(RuntimeError, match=key):
                so.get_session_config_entry(key)
    with pytest.raises(BackendError, match="stop_spinning must be True or False"):
        OnnxRuntimeBackend(stop_spinning="yes")
