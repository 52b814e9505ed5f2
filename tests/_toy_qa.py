"""Question-answering fixtures: a tiny trained question tokenizer, a toy QA checkpoint, a toy ``qa`` bundle."""

from __future__ import annotations

from pathlib import Path

#: A small question corpus over the toy scene: enough words for a WordPiece vocabulary of ~100 pieces.
TOY_QUESTIONS = (
    "is a siren heard?", "can you hear a horn?", "is there an emergency vehicle?",
    "how many cars are ahead?", "how many pedestrians are on the road?", "what colour is the light?",
    "is the traffic light red?", "is the traffic light green?", "is the light bar flashing?",
    "is an ambulance coming from behind?", "which side is the vehicle on?", "is the car moving?",
    "is anything moving on the left?", "is anything moving on the right?", "do you hear anything?",
    "is it quiet?", "is the siren getting louder?", "how many lights are on?", "is a truck visible?",
    "is there a cyclist?", "what is heard?", "what is seen?", "is the road empty?",
    "are there two cars?", "is there one car?", "is the vehicle approaching?", "is the horn loud?",
    "is there a police car?", "what colour is the car?", "is the scene dark?",
)
SPECIALS = ("[PAD]", "[UNK]", "[CLS]")


def train_toy_tokenizer(vocab_size: int = 200) -> str:
    """Train a WordPiece ``tokenizer.json`` on :data:`TOY_QUESTIONS` with ``tokenizers``; returns its text."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), min_frequency=1,
                                        show_progress=False)
    tok.train_from_iterator(TOY_QUESTIONS, trainer)
    return tok.to_str()


def write_toy_tokenizer(path: Path, vocab_size: int = 200) -> Path:
    """Write :func:`train_toy_tokenizer`'s file to ``path``."""
    path.write_text(train_toy_tokenizer(vocab_size), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------- the toy qa bundle

#: The answers of the toy ``qa`` block (answer index = logit index).
TOY_ANSWERS = ("no", "yes", "0", "1", "2", "red", "green", "left", "right")
TOY_MAX_TOKENS = 12
TOY_TYPES = ("exist", "count", "hear", "colour", "side")


def toy_qa_checkpoint(path: Path, *, seed: int = 0, max_tokens: int = TOY_MAX_TOKENS) -> Path:
    """A QA checkpoint as ``fusionedge qa train`` writes it: a tiny untrained student of the toy geometry
    and question reader, with :func:`train_toy_tokenizer`'s vocabulary and :data:`TOY_ANSWERS`."""
    import torch
    from _toy_model import TOY_GEOMETRY
    from fusionedge.sdk.qa_tokenizer import QuestionTokenizer
    from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS
    from fusionedge.training.models.multimodal import ModelConfig, MultimodalModel
    from fusionedge.training.qa.checkpoint import save_qa_checkpoint
    from fusionedge.training.qa.model import QAModel, QuestionReader, reader_config_for

    g = TOY_GEOMETRY
    torch.manual_seed(seed)
    cfg = ModelConfig(clip_frames=g.clip_frames, height=g.height, width=g.width, audio_samples=g.audio_samples,
                      sample_rate=g.sample_rate, n_fft=200, hop_length=80, n_mels=16, f_max=4000.0,
                      video_channels=(4, 8, 8, 16), video_depth=0, audio_channels=(4, 8, 16), audio_depth=0,
                      audio_dim=16, fusion="aligned_attention", fusion_dim=16, fusion_heads=2, head_hidden=16,
                      det_channels=8)
    student = MultimodalModel(cfg).eval()
    text = train_toy_tokenizer()
    tok = QuestionTokenizer.from_str(text, max_tokens)
    rc = reader_config_for(student, vocab_size=tok.vocab_size, max_tokens=max_tokens, num_answers=len(TOY_ANSWERS),
                           dim=16, heads=2, layers=1)
    model = QAModel(student, QuestionReader(rc)).eval()
    info = {"model_name": "fusion_student", "model_config": cfg.to_dict(), "geometry": g.to_dict(),
            "labels": {"events": list(EVENTS), "audio_tags": list(AUDIO_TAGS), "objects": list(OBJECTS)}}
    return save_qa_checkpoint(path, model, student_info=info, tokenizer_json=text, max_tokens=max_tokens,
                              answers=TOY_ANSWERS, question_types=TOY_TYPES, metrics={}, epoch=1)


_SHARED: dict[str, Path] = {}


def shared_qa_bundle(tmp_path_factory) -> Path:
    """The shared toy bundle with a ``qa`` block written by the exporter (``fusionedge qa export``'s
    :func:`~fusionedge.export.qa_export.export_qa`) from :func:`toy_qa_checkpoint`; built once per test
    session (treat as read-only)."""
    if "qa" not in _SHARED:
        from _toy_model import copy_bundle, shared_toy_bundle
        from fusionedge.export.qa_export import export_qa

        root = tmp_path_factory.mktemp("toy-qa")
        bundle = copy_bundle(shared_toy_bundle(tmp_path_factory), root / "bundle")
        export_qa(bundle, toy_qa_checkpoint(root / "qa.pt"))
        _SHARED["qa"] = bundle
    return _SHARED["qa"]


def write_toy_clip(folder: Path, name: str, level: int, tone_hz: float, geometry) -> tuple[Path, Path]:
    """Write a small mp4 (4 frames at 8 FPS) and a 0.5 s WAV tone; returns their paths."""
    import wave

    import cv2
    import numpy as np

    g = geometry
    folder.mkdir(parents=True, exist_ok=True)
    video, audio = folder / f"{name}.mp4", folder / f"{name}.wav"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (g.width, g.height))
    for i in range(4):
        frame = np.full((g.height, g.width, 3), (level + 20 * i) % 256, np.uint8)
        frame[:, : g.width // 2, 1] = 255 - level
        writer.write(frame)
    writer.release()
    t = np.arange(int(g.sample_rate * 0.5)) / g.sample_rate
    samples = (0.5 * np.sin(2 * np.pi * tone_hz * t) * 32767).astype(np.int16)
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(g.sample_rate)
        w.writeframes(samples.tobytes())
    return video, audio
