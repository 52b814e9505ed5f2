"""The question-answering model (training/qa/model.py): shapes, the presence mask and the padding mask."""

from __future__ import annotations

import pytest
import torch
from fusionedge.training.models.multimodal import ModelConfig, MultimodalModel
from fusionedge.training.qa.model import QAModel, QuestionReader, reader_config_for


def tiny_student() -> MultimodalModel:
    torch.manual_seed(0)
    cfg = ModelConfig(clip_frames=2, height=32, width=48, audio_samples=2000, sample_rate=8000, n_fft=200,
                      hop_length=80, n_mels=16, f_max=4000.0, video_channels=(4, 8, 8, 16), video_depth=0,
                      audio_channels=(4, 8, 16), audio_depth=0, audio_dim=16, fusion="aligned_attention",
                      fusion_dim=16, fusion_heads=2, head_hidden=16, det_channels=8)
    return MultimodalModel(cfg).eval()


@pytest.fixture(scope="module")
def model() -> QAModel:
    student = tiny_student()
    rc = reader_config_for(student, vocab_size=30, max_tokens=6, num_answers=5, dim=16, heads=2, layers=1)
    return QAModel(student, QuestionReader(rc)).eval()


def inputs(b: int = 3):
    g = torch.Generator().manual_seed(1)
    video = torch.randn(b, 2, 3, 32, 48, generator=g)
    audio = torch.rand(b, 2000, generator=g) - 0.5
    ids = torch.randint(3, 30, (b, 6), generator=g)
    mask = torch.ones(b, 6)
    ids[:, 0] = 2
    ids[:, 4:] = 0
    mask[:, 4:] = 0
    return video, audio, torch.ones(b, 2), ids, mask


def test_shapes_and_context(model):
    video, audio, presence, ids, mask = inputs()
    out = model(video, audio, presence, ids, mask)
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    ctx = model.context(video, audio)
    c = model.reader.config
    assert ctx["cells"].shape == (3, c.cell_tokens, c.cell_dim) and c.cell_tokens == (32 // 16) * (48 // 16)
    assert ctx["frames"].shape == (3, 2, c.frame_dim) and ctx["tags"].shape == (3, 4)


@torch.no_grad()
def test_an_absent_modality_changes_nothing_and_a_present_one_does(model):
    video, audio, presence, ids, mask = inputs()
    other_video, other_audio = torch.randn_like(video), torch.rand_like(audio) - 0.5
    for absent, swap in ((0, lambda: (other_video, audio)), (1, lambda: (video, other_audio))):
        pres = presence.clone()
        pres[:, absent] = 0
        base = model(video, audio, pres, ids, mask)
        assert torch.equal(base, model(*swap(), pres, ids, mask))  # masked out of attention: exactly nothing
        assert not torch.allclose(model(video, audio, presence, ids, mask),
                                  model(*swap(), presence, ids, mask), atol=1e-6)


@torch.no_grad()
def test_padding_tokens_are_ignored_and_question_words_are_not(model):
    video, audio, presence, ids, mask = inputs()
    changed_pad = ids.clone()
    changed_pad[:, 4:] = 7
    assert torch.equal(model(video, audio, presence, ids, mask), model(video, audio, presence, changed_pad, mask))
    changed_word = ids.clone()
    changed_word[:, 1] = (ids[:, 1] + 1) % 30
    assert not torch.allclose(model(video, audio, presence, ids, mask),
                              model(video, audio, presence, changed_word, mask), atol=1e-6)


def test_the_student_is_frozen_and_stays_in_eval_mode(model):
    model.train()
    assert not model.student.training and model.reader.training
    assert all(not p.requires_grad for p in model.student.parameters())
    assert all(p.requires_grad for p in model.reader.parameters())
    model.eval()


def test_kept_contexts_take_the_ids_of_this_runs_tokenizer():
    """Each run learns its own vocabulary, so questions from a kept context file are encoded again."""
    from fusionedge.training.qa.data import QAExamples, encode_questions
    from fusionedge.training.qa.vocab import train_tokenizer

    questions = ("is there a car?", "how many pedestrians are there?", "can you hear a siren?")
    _, first = train_tokenizer(questions, max_tokens=8)
    _, other = train_tokenizer(("zebra crossing ahead?", "what colour is the light?", *questions), max_tokens=8)
    ids, mask = first.encode_batch(list(questions))
    ex = QAExamples(context={}, presence=torch.ones(1, 2), clip=torch.zeros(3, dtype=torch.int64),
                    ids=torch.from_numpy(ids), mask=torch.from_numpy(mask), answer=torch.zeros(3, dtype=torch.int64),
                    types=("exist", "count", "hear"), questions=questions, answers=("yes", "2", "maybe"),
                    clip_ids=("a",))
    again = encode_questions(ex, other, ("no", "yes", "2"))
    want_ids, want_mask = other.encode_batch(list(questions))
    assert torch.equal(again.ids, torch.from_numpy(want_ids)) and torch.equal(again.mask, torch.from_numpy(want_mask))
    assert not torch.equal(again.ids, ex.ids)  # the two vocabularies number the pieces differently
    assert again.answer.tolist() == [1, 2, -1]  # an answer outside the vocabulary is marked, not guessed
