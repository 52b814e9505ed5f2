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
