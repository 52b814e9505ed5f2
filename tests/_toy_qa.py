"""Question-answering fixtures: a tiny trained question tokenizer (and, below, a toy ``qa`` bundle)."""

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


def toy_qa_net(vocab_size: int, n_answers: int = len(TOY_ANSWERS), *, dim: int = 16, seed: int = 0):
    """A tiny question-answering module with the exact ``qa.onnx`` interface, seeded, in eval mode.

    The question's tokens (masked mean) attend to one token per frame and one for the waveform.
    """
    import torch
    from torch import nn

    class ToyQaNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.frame = nn.Conv2d(3, dim, 3, stride=4, padding=1)
            self.wave = nn.Conv1d(1, dim, 64, stride=32)
            self.embed = nn.Embedding(vocab_size, dim)
            self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
            self.head = nn.Linear(dim, n_answers)

        def forward(self, video, audio, presence, question_ids, question_mask):
            b, t, c, h, w = video.shape
            maps = self.frame(video.reshape(b * t, c, h, w)).relu()
            v_tok = maps.mean(dim=(2, 3)).reshape(b, t, -1) * presence[:, None, :1]
            a_tok = self.wave(audio[:, None]).relu().mean(-1)[:, None] * presence[:, None, 1:]
            words = self.embed(question_ids) * question_mask[..., None]
            q = words.sum(1) / question_mask.sum(1, keepdim=True).clamp(min=1.0)
            clip = torch.cat([v_tok, a_tok], 1)
            seen = self.attn(q[:, None], clip, clip, need_weights=False)[0][:, 0]
            return self.head(seen + q) * 4.0

    torch.manual_seed(seed)
    return ToyQaNet().eval()


def _export_qa_onnx(net, path: Path, geometry, max_tokens: int) -> None:
    import warnings

    import torch

    g = geometry
    args = (torch.zeros(2, g.clip_frames, 3, g.height, g.width), torch.zeros(2, g.audio_samples),
            torch.ones(2, 2), torch.zeros(2, max_tokens, dtype=torch.int64), torch.ones(2, max_tokens))
    names = ("video", "audio", "presence", "question_ids", "question_mask")
    batch = torch.export.Dim("batch", min=1, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, str(path), dynamo=True, opset_version=18, external_data=False,
                          input_names=list(names), output_names=["answer_logits"],
                          dynamic_shapes=tuple({0: batch} for _ in names), verbose=False)


def add_toy_qa(bundle: Path, *, temperature: float = 1.0, min_confidence: float = 0.5, seed: int = 0,
               max_tokens: int = TOY_MAX_TOKENS) -> Path:
    """Give a copy of the toy bundle a ``qa`` block: a toy ``qa.onnx``, a trained tokenizer and goldens.

    The files are hashed into ``files`` and the manifest rewritten the way the exporter does it.
    """
    import numpy as np
    import onnxruntime as ort
    import torch
    from fusionedge.sdk.bundle import MANIFEST_NAME, sha256_file
    from fusionedge.sdk.fileio import read_json, write_json_atomic
    from fusionedge.sdk.qa_tokenizer import QuestionTokenizer
    from fusionedge.sdk.spec import InputGeometry

    manifest = read_json(bundle / MANIFEST_NAME)
    geometry = InputGeometry.from_dict(manifest["geometry"])
    text = train_toy_tokenizer()
    (bundle / "qa_tokenizer.json").write_text(text, encoding="utf-8")
    tok = QuestionTokenizer.from_str(text, max_tokens)
    net = toy_qa_net(tok.vocab_size, seed=seed)
    _export_qa_onnx(net, bundle / "qa.onnx", geometry, max_tokens)
    rng = np.random.default_rng(seed)
    ids, mask = tok.encode_batch(["is a siren heard?", "how many cars are ahead?"])
    inputs = {"video": rng.normal(size=(2, geometry.clip_frames, 3, geometry.height, geometry.width))
              .astype(np.float32),
              "audio": rng.uniform(-0.5, 0.5, (2, geometry.audio_samples)).astype(np.float32),
              "presence": np.array([[1, 1], [1, 0]], np.float32), "question_ids": ids, "question_mask": mask}
    session = ort.InferenceSession(str(bundle / "qa.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["answer_logits"], inputs)[0]
    with torch.no_grad():
        eager = net(*(torch.from_numpy(inputs[k]) for k in ("video", "audio", "presence", "question_ids",
                                                            "question_mask"))).numpy()
    assert np.allclose(logits, eager, rtol=1e-4, atol=1e-4), "toy qa.onnx disagrees with eager PyTorch"
    np.savez(bundle / "qa_golden.npz", **inputs, answer_logits=logits)
    for rel in ("qa.onnx", "qa_tokenizer.json", "qa_golden.npz"):
        manifest["files"][rel] = {"sha256": sha256_file(bundle / rel), "size": (bundle / rel).stat().st_size}
    manifest["qa"] = {"model": "qa.onnx", "tokenizer": "qa_tokenizer.json", "golden": "qa_golden.npz",
                      "max_tokens": max_tokens, "answers": list(TOY_ANSWERS),
                      "question_types": ["exist", "count", "hear", "colour", "side"],
                      "temperature": temperature, "min_confidence": min_confidence,
                      "golden_rtol": 1e-3, "golden_atol": 1e-4}
    write_json_atomic(bundle / MANIFEST_NAME, manifest)
    return bundle


_SHARED: dict[str, Path] = {}


def shared_qa_bundle(tmp_path_factory) -> Path:
    """The shared toy bundle with a toy ``qa`` block, built once per test session (treat as read-only)."""
    if "qa" not in _SHARED:
        from _toy_model import copy_bundle, shared_toy_bundle

        src = shared_toy_bundle(tmp_path_factory)
        _SHARED["qa"] = add_toy_qa(copy_bundle(src, tmp_path_factory.mktemp("toy-qa") / "bundle"))
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
