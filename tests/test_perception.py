"""The runtime API (fusionedge.sdk.Perception): arrays and files in, decoded results out, fallbacks."""

from __future__ import annotations

import json
import logging
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from _toy_model import copy_bundle, shared_toy_bundle
from fusionedge.sdk import Perception, Result
from fusionedge.sdk import backends as backends_module
from fusionedge.sdk.backends.onnxruntime import OnnxRuntimeBackend
from fusionedge.sdk.bundle import sha256_file
from fusionedge.sdk.errors import BackendError, BundleError, InputError
from fusionedge.sdk.media import read_audio, read_video
from fusionedge.sdk.postprocess import softmax
from fusionedge.sdk.preprocess import preprocess_audio, preprocess_video
from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def perception(bundle_dir):
    with Perception.load(bundle_dir, backend_options={"onnxruntime": {"intra_op_threads": 1}},
                         score_threshold=0.0) as p:
        yield p


@pytest.fixture
def frames() -> np.ndarray:
    """10 frames of 640x360 RGB (an odd size: neither the model's nor its aspect ratio)."""
    return np.random.default_rng(0).integers(0, 256, (10, 360, 640, 3), dtype=np.uint8)


@pytest.fixture
def stereo() -> np.ndarray:
    """0.5 s of 44.1 kHz stereo: a 440 Hz tone left, noise right."""
    t = np.arange(22050) / 44100.0
    noise = np.random.default_rng(1).uniform(-0.2, 0.2, t.size)
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), noise], axis=1)


def test_infer_with_arrays_at_odd_sizes(perception, frames, stereo):
    r = perception.infer(video=frames, audio=stereo, sample_rate=44100)
    assert isinstance(r, Result)
    assert r.event in EVENTS and set(r.scores) == set(EVENTS)
    assert sum(r.scores.values()) == pytest.approx(1.0, abs=1e-6)
    assert r.event == max(r.scores, key=r.scores.get)
    assert set(r.audio_tags) == set(AUDIO_TAGS) and all(0 <= v <= 1 for v in r.audio_tags.values())
    assert r.boxes, "score_threshold=0 keeps every peak"
    assert len(r.boxes) <= perception.top_k
    for b in r.boxes:  # original 640x360 pixels, not the model's 48x32
        assert b.label in OBJECTS and 0 <= b.x1 <= b.x2 <= 640 and 0 <= b.y1 <= b.y2 <= 360
    assert max(b.x2 for b in r.boxes) > 48 or max(b.y2 for b in r.boxes) > 32
    assert r.backend == "onnxruntime" and r.model == "toy@0.1.0" and r.missing == ()
    assert set(r.timings) == {"decode", "preprocess", "infer", "postprocess"}
    assert all(v >= 0 for v in r.timings.values())
    d = json.loads(json.dumps(r.to_dict()))
    assert d["event"] == r.event and len(d["boxes"]) == len(r.boxes) and d["missing"] == []


def test_infer_matches_the_preprocess_and_backend_path(perception, frames, stereo):
    """The result is the bundle's model on the shared preprocessing, nothing else."""
    g = perception.geometry
    r = perception.infer(video=frames, audio=stereo, sample_rate=44100, fps=20.0, start_seconds=0.1)
    video = preprocess_video(frames, 20.0, g, start_seconds=0.1)
    audio = preprocess_audio(stereo, 44100, g, start_seconds=0.1)
    out = perception.infer_batch(video[None], audio[None], np.ones((1, 2), np.float32))
    expected = softmax(out["event_logits"][0].astype(np.float64))
    assert [r.scores[e] for e in EVENTS] == pytest.approx(list(expected), abs=1e-9)


def test_missing_modalities_are_reported(perception, frames, stereo):
    r = perception.infer(video=frames)
    assert r.missing == ("audio",) and r.audio_tags == {} and r.boxes
    r = perception.infer(audio=stereo, sample_rate=44100)
    assert r.missing == ("video",) and r.boxes == [] and set(r.audio_tags) == set(AUDIO_TAGS)
    with pytest.raises(InputError, match="no input"):
        perception.infer()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"audio": np.zeros(8000)}, "needs sample_rate"),
        ({"video": np.zeros((2, 36, 64, 3), np.float32)}, "video must be uint8 RGB frames"),
        ({"video": np.zeros((36, 64, 3), np.uint8)}, r"shape \(N, H, W, 3\)"),
        ({"video": np.zeros((2, 36, 64, 3), np.uint8), "fps": -1.0}, "fps must be"),
        ({"video": np.zeros((2, 36, 64, 3), np.uint8), "video_path": "x.mp4"}, "not both"),
        ({"audio": np.zeros(8000), "sample_rate": 8000, "start_seconds": -1.0}, "start_seconds"),
        ({"audio": np.full(8000, np.nan), "sample_rate": 8000}, "NaN"),
    ],
)
def test_bad_arguments_raise_input_error(perception, kwargs, message):
    with pytest.raises(InputError, match=message):
        perception.infer(**kwargs)


def _write_clip(
    tmp_path: Path, frames: np.ndarray, fps: float, stereo: np.ndarray, rate: int
) -> tuple[Path, Path]:
    video = tmp_path / "clip.avi"
    size = (frames.shape[2], frames.shape[1])
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    audio = tmp_path / "clip.wav"
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(stereo.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(stereo, -1, 1) * 32767).astype("<i2").tobytes())
    return video, audio


def test_infer_from_files_equals_infer_from_the_decoded_arrays(perception, frames, stereo, tmp_path):
    video_path, audio_path = _write_clip(tmp_path, frames, 20.0, stereo, 44100)
    r_files = perception.infer(video_path=video_path, audio_path=audio_path, start_seconds=0.1)
    clip = read_video(video_path)
    samples, rate = read_audio(audio_path)
    r_arrays = perception.infer(video=clip.frames, fps=clip.fps, audio=samples, sample_rate=rate,
                                start_seconds=0.1)
    assert r_files.missing == () and r_files.event == r_arrays.event
    expected = [r_arrays.scores[e] for e in EVENTS]
    assert [r_files.scores[e] for e in EVENTS] == pytest.approx(expected, abs=1e-6)
    boxes = [[(b.label, round(b.x1, 3), round(b.y2, 3)) for b in r.boxes] for r in (r_files, r_arrays)]
    assert boxes[0] == boxes[1]


def test_infer_batch_splits_batches_above_the_bundle_maximum(perception):
    inputs, _ = perception.bundle.golden()
    big = {k: np.concatenate([v] * 14)[:40] for k, v in inputs.items()}  # 40 > batch.max 32
    out = perception.infer_batch(big["video"], big["audio"], big["presence"])
    assert out["event_logits"].shape == (40, len(EVENTS)) and out["det_heatmap"].shape[0] == 40
    small = perception.infer_batch(big["video"][32:], big["audio"][32:], big["presence"][32:])
    np.testing.assert_allclose(out["event_logits"][32:], small["event_logits"], atol=1e-6)
    with pytest.raises(InputError, match="different batch sizes"):
        perception.infer_batch(big["video"], big["audio"][:3], big["presence"])


def test_self_test_passes_and_catches_a_wrong_golden(perception, bundle_dir, tmp_path):
    assert 0 <= perception.self_test() <= perception.bundle.manifest["golden"]["atol"]
    copy = copy_bundle(bundle_dir, tmp_path / "b")
    with np.load(copy / "golden.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["output.audio_tag_logits"] = arrays["output.audio_tag_logits"] + 0.01
    np.savez(copy / "golden.npz", **arrays)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["golden.npz"] = {"sha256": sha256_file(copy / "golden.npz"),
                                       "size": (copy / "golden.npz").stat().st_size}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with Perception.load(copy) as p:
        message = r"output 'audio_tag_logits' differs from the golden outputs by up to 0\.01"
        with pytest.raises(BundleError, match=message):
            p.self_test()


class _NeedsMissingLibrary(OnnxRuntimeBackend):
    name = "needs-missing"
    requires = ("fusionedge_no_such_module",)


def test_fallback_is_logged_and_recorded(bundle_dir, frames, monkeypatch, caplog):
    monkeypatch.setitem(backends_module._REGISTRY, "needs-missing", _NeedsMissingLibrary)
    with caplog.at_level(logging.WARNING, logger="fusionedge.sdk.perception"):
        p = Perception.load(bundle_dir, backends=["no-such-backend", "needs-missing", "onnxruntime"])
    with p:
        assert [f.backend for f in p.fallbacks] == ["no-such-backend", "needs-missing"]
        assert "unknown backend 'no-such-backend'" in p.fallbacks[0].reason
        assert "fusionedge_no_such_module" in p.fallbacks[1].reason
        assert p.backend_name == "onnxruntime"
        assert p.infer(video=frames).backend == "onnxruntime"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no-such-backend" in w for w in warnings) and any("needs-missing" in w for w in warnings)
    assert any("fell back from no-such-backend, needs-missing" in w for w in warnings)


def test_no_backend_loads_raises_with_every_reason(bundle_dir, monkeypatch):
    monkeypatch.setitem(backends_module._REGISTRY, "needs-missing", _NeedsMissingLibrary)
    with pytest.raises(BackendError, match=r"no backend could load toy@0\.1\.0 \(no-such: unknown backend.*; "
                                           r"needs-missing: .*fusionedge_no_such_module"):
        Perception.load(bundle_dir, backends=["no-such", "needs-missing"])
    with pytest.raises(BackendError, match="no backend given"):
        Perception.load(bundle_dir, backends=[])


def test_bundle_that_breaks_the_contract_is_refused(bundle_dir, tmp_path):
    copy = copy_bundle(bundle_dir, tmp_path / "b")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["labels"]["events"] = manifest["labels"]["events"][:3]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"field 'outputs\[0\]\.shape': expected \['batch', 3\]"):
        Perception.load(copy)


def test_altered_bundle_is_refused_before_any_backend_loads(bundle_dir, tmp_path):
    copy = copy_bundle(bundle_dir, tmp_path / "b")
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 mismatch"):
        Perception.load(copy)


def test_closed_perception_refuses_to_run(bundle_dir, frames):
    with Perception.load(bundle_dir) as p:
        assert repr(p) == "<Perception toy@0.1.0 on onnxruntime>"
    with pytest.raises(BackendError, match="closed"):
        p.infer(video=frames)
