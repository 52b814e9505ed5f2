"""The question-answering report of a bundle: accuracy per type, sensor ablations, baseline, latency.

Everything is measured through what ships: the bundle's ``qa.onnx`` and tokenizer on ONNX Runtime
(:class:`fusionedge.sdk.qa.QaModel`), the clips decoded with the runtime's preprocessing. Per clip,
its questions go in one batch, four times: with the clip's sensors, with video only, audio only and
none (the missing tensor zeroed and its presence 0, exactly as a missing sensor looks on the
device). The question-only baseline (the most frequent training answer per question text) needs the
training manifest. Latency compares ``Perception.ask`` with ``Perception.infer`` on one clip at
batch 1, interleaved call by call in one process so that both see the same machine load, then the two
ONNX models alone, on the perception's own two sessions; medians are reported.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.sdk.bundle import load_bundle
from fusionedge.sdk.datamanifest import Sample, read_manifest
from fusionedge.sdk.errors import DataError
from fusionedge.sdk.evaluate import load_sample_inputs
from fusionedge.sdk.fileio import write_text_atomic
from fusionedge.sdk.spec import InputGeometry
from tqdm import tqdm

__all__ = ["format_qa_report", "qa_report"]

_ABLATIONS = {"all": (1.0, 1.0), "question_video": (1.0, 0.0), "question_audio": (0.0, 1.0),
              "question_only": (0.0, 0.0)}
_SOUND = ("hear", "source")
#: Questions outside what the model was trained on (other words, other topics, a symbol it cannot spell):
#: asked of every test clip with all its sensors, to see how often they come out confident.
OFF_DOMAIN_QUESTIONS = ("is there a zebra?", "what is the capital of france?", "how old is the driver?",
                        "is the road wet?", "is there a \U0001f6b2?")


def _table(rows: list[tuple[str, bool]]) -> dict[str, Any]:
    per: dict[str, list[bool]] = defaultdict(list)
    for kind, hit in rows:
        per[kind].append(hit)
    hits = [h for _, h in rows]
    sound = [h for k, h in rows if k in _SOUND]
    return {"overall": float(np.mean(hits)) if hits else float("nan"), "count": len(hits),
            "sound": float(np.mean(sound)) if sound else float("nan"),
            "per_type": {k: {"accuracy": float(np.mean(v)), "count": len(v)} for k, v in sorted(per.items())}}


def _baseline(train: Sequence[Sample], test: Sequence[Sample]) -> dict[str, Any]:
    by_text: dict[str, Counter] = defaultdict(Counter)
    by_type: dict[str, Counter] = defaultdict(Counter)
    for s in train:
        for q in s.questions:
            by_text[q.question][q.answer] += 1
            by_type[q.type][q.answer] += 1
    rows = []
    for s in test:
        for q in s.questions:
            votes = by_text.get(q.question) or by_type.get(q.type)
            rows.append((q.type, bool(votes) and votes.most_common(1)[0][0] == q.answer))
    return _table(rows)


def _latency(perception: Any, sample: Sample, geometry: InputGeometry, runs: int) -> dict[str, Any]:
    """Median ms of ask vs infer (whole call, from decoded frames), then of the two ONNX models alone.

    Only the two sessions a user's process holds are timed: the perception's ``model.onnx`` and the
    ``qa.onnx`` that its :meth:`~fusionedge.sdk.Perception.ask` loads. A third session held in the
    process (the report's own question model) competes with the timed calls for the cores and the
    caches and slows ``ask`` more than ``infer``. Each pair is interleaved call by call, so both of a
    pair see the same machine load.
    """
    from fusionedge.sdk.media import read_audio, read_video

    clip = read_video(sample.video, max_seconds=geometry.clip_seconds)
    wave, sr = read_audio(sample.audio) if sample.audio is not None else (None, None)
    question = sample.questions[0].question
    qa_model = perception.qa  # the session ask uses (loaded here, not timed)
    video, audio, presence, _ = load_sample_inputs(sample, geometry)
    feeds = {"video": video[None], "audio": audio[None], "presence": presence[None]}
    encoded = qa_model.tokenizer.encode(question)
    qa_feeds = {**feeds, "question_ids": encoded.ids[None], "question_mask": encoded.mask[None]}
    media = {"video": clip.frames, "fps": clip.fps, "audio": wave, "sample_rate": sr}
    pairs = [{"infer": lambda: perception.infer(**media), "ask": lambda: perception.ask(question, **media)}]
    main = getattr(perception, "backend", None)
    if main is not None:
        pairs.append({"model_onnx": lambda: main.infer(feeds),
                      "qa_onnx": lambda: qa_model.backend.infer(qa_feeds)})
    times: dict[str, list[float]] = defaultdict(list)
    for calls in pairs:
        for fn in calls.values():  # warm-up: first-call allocations
            fn()
            fn()
        for _ in range(runs):
            for name, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"runs": runs, "median_ms": med, "ask_over_infer": med["ask"] / med["infer"]}
    if "model_onnx" in med:
        out["qa_onnx_over_model_onnx"] = med["qa_onnx"] / med["model_onnx"]
    return out


def qa_report(bundle: str | os.PathLike, data: str | os.PathLike, *, train_data: str | os.PathLike | None = None,
              out: str | os.PathLike | None = None, latency_runs: int = 100,
              progress: bool = True) -> dict[str, Any]:
    """Measure a bundle's question answering on a test set (see the module docstring).

    Args:
        bundle: a fused bundle with a ``qa`` block.
        data: the test manifest (or folder) whose samples carry questions.
        train_data: the training manifest, for the question-only baseline (left out without it).
        out: write the Markdown report there.
        latency_runs: interleaved timing rounds (0 skips the latency measurement).
        progress: a progress bar on stderr.

    Returns:
        ``{"bundle", "data", "questions", "clips", "ablations": {name: table}, "confident": {...},
        "baseline", "latency"}``; a table is ``overall``, ``count``, ``sound`` (hear + source questions)
        and ``per_type``.

    Raises:
        BundleError: the bundle has no ``qa`` block or does not verify.
        DataError: no test sample carries questions.
        MediaError: a clip cannot be decoded.
    """
    from fusionedge.sdk.perception import Perception
    from fusionedge.sdk.qa import QaModel

    b = load_bundle(bundle)
    qa = QaModel.load(b)
    geometry = InputGeometry.from_dict(b.manifest["geometry"])
    samples = [s for s in read_manifest(data) if s.questions]
    if not samples:
        raise DataError(f"{data}: no sample carries 'questions'")
    rows: dict[str, list[tuple[str, bool]]] = {k: [] for k in _ABLATIONS}
    confident_rows: list[tuple[bool, bool]] = []
    blind_confident: list[bool] = []
    for s in tqdm(samples, desc="qa report", unit="clip", disable=not progress):
        video, audio, presence, _ = load_sample_inputs(s, geometry)
        questions = [q.question for q in s.questions]
        for name, (pv, pa) in _ABLATIONS.items():
            pres = presence * np.array([pv, pa], np.float32)
            answers = qa.answer(questions, video * pres[0], audio * pres[1], pres)
            for q, a in zip(s.questions, answers):
                rows[name].append((q.type, a.answer == q.answer))
                if name == "all":
                    confident_rows.append((a.confident, a.answer == q.answer))
                if name == "question_only":
                    blind_confident.append(a.confident)
    off: list[tuple[bool, float, bool]] = []  # (confident, score, had an unknown word)
    for s in samples[:50]:
        video, audio, presence, _ = load_sample_inputs(s, geometry)
        for a in qa.answer(list(OFF_DOMAIN_QUESTIONS), video, audio, presence):
            off.append((a.confident, a.score, bool(a.unknown_words)))
    conf = np.array([c for c, _ in confident_rows])
    hit = np.array([h for _, h in confident_rows])
    summary: dict[str, Any] = {
        "bundle": str(bundle), "data": str(data), "clips": len(samples), "questions": len(confident_rows),
        "ablations": {k: _table(v) for k, v in rows.items()},
        "confident": {"min_confidence": qa.spec.min_confidence, "temperature": qa.spec.temperature,
                      "share": float(conf.mean()), "accuracy_when_confident": float(hit[conf].mean()) if conf.any()
                      else float("nan"), "accuracy_when_not": float(hit[~conf].mean()) if (~conf).any()
                      else float("nan"), "sensorless_confident_share": float(np.mean(blind_confident)),
                      "off_domain_confident_share": float(np.mean([c for c, _, _ in off])),
                      "off_domain_median_score": float(np.median([v for _, v, _ in off])),
                      "off_domain_questions": list(OFF_DOMAIN_QUESTIONS),
                      "unknown_word_confident_share": float(np.mean([c for c, _, u in off if u]))
                      if any(u for _, _, u in off) else float("nan")},
        "baseline": _baseline(read_manifest(train_data), samples) if train_data is not None else None,
    }
    ab = summary["ablations"]
    summary["sound_gain_over_video"] = ab["all"]["sound"] - ab["question_video"]["sound"]
    qa.close()  # the latency below holds only the sessions a user's process would
    summary["latency"] = None
    if latency_runs > 0:
        with Perception.load(b.path) as p:
            with_clip = next((s for s in samples if s.video is not None and s.audio is not None), None)
            if with_clip is not None:
                summary["latency"] = _latency(p, with_clip, geometry, latency_runs)
    if out is not None:
        write_text_atomic(Path(out), format_qa_report(summary))
    return summary


def _pct(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.1f}%"


def format_qa_report(summary: dict[str, Any]) -> str:
    """The Markdown form of :func:`qa_report`'s summary."""
    ab = summary["ablations"]
    types = sorted({t for table in ab.values() for t in table["per_type"]})
    names = ["all", "question_video", "question_audio", "question_only"]
    head = "| question type | n | " + " | ".join(names) + (" | question-only baseline |" if summary["baseline"] else " |")
    lines = [
        f"# Scene question answering: {summary['bundle']}",
        "",
        (f"Test data: `{summary['data']}`, {summary['clips']} clips, {summary['questions']} questions. Measured through "
        "the bundle's `qa.onnx` on ONNX Runtime (CPU)."),
        "",
        "## Accuracy per question type and sensor set",
        "",
        "Columns: the sensors the model was given (the others zeroed and marked absent).",
        "",
        head,
        "|" + "---|" * (len(names) + 2 + (1 if summary["baseline"] else 0)),
    ]
    for t in types:
        cells = [_pct(ab[n]["per_type"].get(t, {}).get("accuracy")) for n in names]
        n = ab["all"]["per_type"].get(t, {}).get("count", 0)
        base = [_pct(summary["baseline"]["per_type"].get(t, {}).get("accuracy"))] if summary["baseline"] else []
        lines.append(f"| {t} | {n} | " + " | ".join(cells + base) + " |")
    overall = [_pct(ab[n]["overall"]) for n in names]
    sound = [_pct(ab[n]["sound"]) for n in names]
    lines.append(f"| **overall** | {ab['all']['count']} | " + " | ".join(
        overall + ([_pct(summary["baseline"]["overall"])] if summary["baseline"] else [])) + " |")
    lines.append("| sound questions (hear, source) | | " + " | ".join(
        sound + ([_pct(summary["baseline"]["sound"])] if summary["baseline"] else [])) + " |")
    c = summary["confident"]
    lines += [
        "",
        (f"On questions that need sound, all three beat question + video by "
        f"**{100 * summary['sound_gain_over_video']:.1f} points**."),
        "",
        "## Confidence",
        "",
        (f"Temperature {c['temperature']:.3f}, `min_confidence` {c['min_confidence']:.2f}: "
        f"{_pct(c['share'])} of the answers with all sensors are confident ({_pct(c['accuracy_when_confident'])} "
        f"right; {_pct(c['accuracy_when_not'])} right among the others); asked with no sensor, "
        f"{_pct(c['sensorless_confident_share'])} are confident."),
        "",
        (f"Off-domain questions ({', '.join(repr(q) for q in c['off_domain_questions'])}) asked of the first "
         f"test clips with all sensors: {_pct(c['off_domain_confident_share'])} confident (median score "
         f"{c['off_domain_median_score']:.2f}); the one with a word the tokenizer cannot spell: "
         f"{_pct(c['unknown_word_confident_share'])} confident (its unknown word is reported on the answer)."),
    ]
    lat = summary.get("latency")
    if lat:
        m = lat["median_ms"]
        lines += ["", "## Latency (batch 1, ONNX Runtime CPU, medians of interleaved calls)", "",
                  "| call | ms |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in m.items()]
        lines += ["", f"`ask` / `infer` = **{lat['ask_over_infer']:.2f}x**"
                  + (f"; `qa.onnx` / `model.onnx` = {lat['qa_onnx_over_model_onnx']:.2f}x"
                     if "qa_onnx_over_model_onnx" in lat else "") + f" ({lat['runs']} rounds)."]
    return "\n".join(lines) + "\n"
