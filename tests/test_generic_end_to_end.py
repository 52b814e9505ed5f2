"""Models no one here wrote, all the way: import, predict, bench, compare, INT8 with its gate, the fleet.

Three ONNX models are built here in the shapes their frameworks export: a torchvision-style classifier
(``(B, classes)`` logits, ImageNet normalisation, dynamic batch), an Ultralytics YOLOv8-style detector
(one ``(1, 4 + classes, anchors)`` output of decoded centre/size boxes and sigmoid class scores, fixed
batch 1 as Ultralytics exports by default) and an audio tagger (``(B, tags)`` logits over a raw
waveform). Each is imported, and every tool then serves the bundle unchanged through its declared task
and decoder; the raw outputs are compared with ONNX Runtime on the raw model, on inputs prepared here
independently of the runtime.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
import wave

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mlperf_loadgen")

from _fleet import FAST, FleetEnv
from fusionedge.benchmarks.harness import BenchConfig, run_benchmark
from fusionedge.benchmarks.stages import E2EPipeline, EnginePipeline, TensorCache, load_clips
from fusionedge.export.compare import compare
from fusionedge.export.import_onnx import import_onnx
from fusionedge.export.import_spec import parse_input_spec
from fusionedge.export.precision_gate import Budget, gate_bundle, gated_metrics
from fusionedge.export.quantize import load_calibration_feeds
from fusionedge.sdk import Perception
from fusionedge.sdk.bundle import load_bundle
from fusionedge.sdk.evaluate import evaluate
from fusionedge.sdk.generic import GenericModel
from fusionedge.sdk.postprocess import decode_yolo, softmax

CLASSES = ["cat", "dog", "bird", "fish", "frog"]
OBJECTS = ["car", "person", "bike"]
TAGS = ["speech", "music", "siren"]
RATE, AUDIO_SAMPLES = 16000, 8000  # the tagger takes 0.5 s at 16 kHz


def _export(model, example, path, in_name, out_name, dynamic):
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=[in_name],
            output_names=[out_name],
            dynamic_axes={in_name: {0: "batch"}, out_name: {0: "batch"}} if dynamic else None,
        )
    return path


class _TinyResNet(torch.nn.Module):
    """torchvision's classifier shape: stem, one residual block, global pool, a linear layer of logits."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1)
        )
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = self.stem(x)
        x = (x + self.block(x)).relu()
        return self.fc(x.mean(dim=(2, 3)))


class _YoloV8Head(torch.nn.Module):
    """Ultralytics' exported detect head: ``(B, 4 + C, anchors)``, boxes as centre x/y and size in input
    pixels, class scores already through a sigmoid; anchors on an 8 x 8 grid of stride 8."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        nn = torch.nn
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.SiLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(16, 16, 3, 2, 1), nn.SiLU(),
        )
        self.box = nn.Conv2d(16, 4, 1)
        self.cls = nn.Conv2d(16, classes, 1)
        ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.flatten(), ys.flatten()]) + 0.5)  # (2, 64)

    def forward(self, x):
        f = self.backbone(x)
        b, c = self.box(f).flatten(2), self.cls(f).flatten(2)
        xy = (self.grid + b[:, :2].tanh()) * 8.0
        wh = b[:, 2:].sigmoid() * 24.0 + 4.0
        return torch.cat([xy, wh, c.sigmoid()], 1)


class _WaveTagger(torch.nn.Module):
    """An audio tagger on the raw waveform, as such models export: a log-power filterbank front end (a
    strided convolution, its square, a log), then convolutions, pooling and a linear layer of logits."""

    def __init__(self, tags: int) -> None:
        super().__init__()
        nn = torch.nn
        self.filters = nn.Conv1d(1, 8, 64, 16, bias=False)
        self.net = nn.Sequential(
            nn.Conv1d(8, 8, 8, 4), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, tags),
        )

    def forward(self, x):
        power = self.filters(x.unsqueeze(1)).pow(2)
        return self.net(torch.log(power + 1e-6))


def _write_wav(path, samples):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def _ort(path, name, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]


def _manifest(folder, records):
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The three raw models, their bundles, and a labelled data set for each (labels from the fp32
    model, a known number of them wrong, so every metric is defined and not trivially 0 or 1)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("e2e")
    raw = {
        "cls": _export(_TinyResNet(len(CLASSES)), torch.zeros(1, 3, 32, 32), root / "cls.onnx", "input", "output",
                       True),
        "det": _export(_YoloV8Head(len(OBJECTS)), torch.zeros(1, 3, 64, 64), root / "det.onnx", "images",
                       "output0", False),
        "tag": _export(_WaveTagger(len(TAGS)), torch.zeros(1, AUDIO_SAMPLES), root / "tag.onnx", "waveform",
                       "logits", True),
    }
    bundles = {
        "cls": import_onnx(raw["cls"], root / "cls-b", task="classify", labels=CLASSES, preset="imagenet"),
        "det": import_onnx(raw["det"], root / "det-b", task="detect", labels=OBJECTS, preset="yolov8"),
        "tag": import_onnx(raw["tag"], root / "tag-b", task="audio-classify", labels=TAGS, decode="sigmoid",
                           input_decl=parse_input_spec(f"modality=audio,sample_rate={RATE}")),
    }
    rng = np.random.default_rng(0)
    data = {k: root / f"data-{k}" for k in bundles}
    for folder in data.values():
        folder.mkdir()
    records: dict[str, list] = {k: [] for k in bundles}
    with Perception.load(bundles["cls"]) as pc, Perception.load(bundles["det"]) as pd, \
            Perception.load(bundles["tag"]) as pt:
        for i in range(8):
            image = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
            image[8:40, 10 + 4 * i : 50 + 4 * i] //= 3  # a darker block that moves: varied features
            for k in bundles:
                cv2.imwrite(str(data[k] / f"{i}.png"), image[:, :, ::-1])
            event = pc.infer(image=image).event
            wrong = next(c for c in CLASSES if c != event)
            records["cls"].append({"id": str(i), "video": f"{i}.png", "event": wrong if i < 2 else event})
            boxes = pd.infer(video_path=data["det"] / f"{i}.png").boxes[:2]
            records["det"].append({"id": str(i), "video": f"{i}.png", "event": None, "boxes": [
                {"label": b.label, "box": [b.x1, b.y1, b.x2, b.y2]} for b in boxes]})
            _write_wav(data["tag"] / f"{i}.wav", rng.uniform(-0.6, 0.6, AUDIO_SAMPLES) * (i + 1) / 8)
            tags = pt.infer(audio_path=data["tag"] / f"{i}.wav").audio_tags
            on = sorted(tags, key=tags.get)[-1:] if i % 3 else sorted(tags, key=tags.get)[:1]
            records["tag"].append({"id": str(i), "video": f"{i}.png", "audio": f"{i}.wav", "event": None,
                                   "audio_tags": on})
    for k in bundles:
        _manifest(data[k], records[k])
    return {"root": root, "raw": raw, "bundles": bundles, "data": data}


def _imagenet(image, size=32):
    x = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(2, 0, 1)[None]


def _letterbox(image, size=64):
    h, w = image.shape[:2]
    r = min(size / w, size / h)
    nw, nh = round(w * r), round(h * r)
    canvas = np.full((size, size, 3), 114, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top : top + nh, left : left + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    # the image is resized to nw x nh: a box maps back by that size's own scale on each axis
    return (canvas.astype(np.float32) / 255).transpose(2, 0, 1)[None], (nw / w, nh / h), left, top


def test_predict_equals_onnx_runtime_on_the_raw_models(world):
    raw, bundles = world["raw"], world["bundles"]
    image = cv2.imread(str(world["data"]["cls"] / "3.png"))[:, :, ::-1].copy()
    expected = softmax(_ort(raw["cls"], "input", _imagenet(image))[0].astype(np.float64))
    with Perception.load(bundles["cls"]) as p:
        r = p.infer(image=image)
    assert [r.scores[c] for c in CLASSES] == pytest.approx(expected.tolist(), abs=1e-5)

    x, (sx, sy), left, top = _letterbox(image)
    rows = _ort(raw["det"], "images", x)[0]
    xyxy, s, c = decode_yolo(rows, num_classes=3, score_threshold=0.3, iou_threshold=0.45, top_k=50)
    with Perception.load(bundles["det"]) as p:
        got = p.infer(image=image).boxes
    assert len(got) == len(s) > 0
    for b, box, score, cls in zip(got, xyxy, s, c):
        mapped = [(box[0] - left) / sx, (box[1] - top) / sy, (box[2] - left) / sx, (box[3] - top) / sy]
        assert b.label == OBJECTS[int(cls)] and b.score == pytest.approx(float(score), abs=1e-5)
        assert [b.x1, b.y1, b.x2, b.y2] == pytest.approx(np.clip(mapped, 0, [80, 48, 80, 48]).tolist(), abs=1e-3)

    with wave.open(str(world["data"]["tag"] / "5.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    logits = _ort(raw["tag"], "waveform", pcm[None, :AUDIO_SAMPLES])[0].astype(np.float64)
    with Perception.load(bundles["tag"]) as p:
        r = p.infer(audio_path=world["data"]["tag"] / "5.wav")
    assert [r.audio_tags[t] for t in TAGS] == pytest.approx((1 / (1 + np.exp(-logits))).tolist(), abs=1e-5)
    assert r.scores == {} and r.boxes == []


@pytest.mark.parametrize("key", ["cls", "det", "tag"])
def test_bench_pipelines_feed_the_declared_input_and_decode_the_declared_heads(world, key):
    """The engine path feeds exactly what ONNX Runtime on the raw model gets; the e2e path answers as
    Perception does on the same file."""
    bundle = load_bundle(world["bundles"][key])
    model = GenericModel.from_bundle(bundle)
    samples = load_clips(world["data"][key], bundle.labels, model=model)[:2]
    with Perception.load(bundle.path) as p:
        cache = TensorCache(samples, bundle.geometry, model)
        engine_out = EnginePipeline(p.backend, cache)([1])
        e2e = E2EPipeline(p.backend, samples, bundle.geometry, bundle.labels, model=model,
                          score_threshold=p.score_threshold, top_k=p.top_k)([1])[0]
        ref = p.infer(audio_path=samples[1].audio) if key == "tag" else p.infer(video_path=samples[1].video)
    image = cv2.imread(str(samples[1].video))[:, :, ::-1].copy()
    if key == "cls":
        expected = _ort(world["raw"]["cls"], "input", _imagenet(image))
        assert e2e.event_scores.tolist() == pytest.approx([ref.scores[c] for c in CLASSES], abs=1e-6)
    elif key == "det":
        expected = _ort(world["raw"]["det"], "images", _letterbox(image)[0])
        assert e2e.boxes == ref.boxes and e2e.frame_wh == (80, 48)
    else:
        with wave.open(str(samples[1].audio)) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
        expected = _ort(world["raw"]["tag"], "waveform", pcm[None, :AUDIO_SAMPLES])
        assert e2e.tag_scores.tolist() == pytest.approx([ref.audio_tags[t] for t in TAGS], abs=1e-6)
        assert e2e.event_scores.size == 0 and e2e.boxes == []
    (out,) = engine_out.values()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("key", ["det", "tag"])
def test_bench_runs_engine_and_e2e_and_scores_the_task_metric(world, key, tmp_path, capsys):
    bundle = world["bundles"][key]
    if key == "det":  # through the command line, whose text labels the AP's definition
        from fusionedge.cli.main import main

        code = main(["bench", "--bundle", str(bundle), "--out", str(tmp_path / "bench"), "--data",
                     str(world["data"][key]), "--accuracy", "--backends", "onnxruntime", "--scenarios",
                     "SingleStream,Offline", "--modes", "engine,e2e", "--duration", "0.05", "--min-queries", "8",
                     "--warmup", "2", "--offline-batch", "1", "--threads", "1", "--no-plots"])
        assert code == 0
        text = capsys.readouterr().out
        assert "detection_map50" in text and "(VOC all-point AP@0.5)" in text
        doc = json.loads((tmp_path / "bench" / "results.json").read_text())
    else:
        cfg = BenchConfig(
            bundle=bundle, out=tmp_path / "bench", data=world["data"][key], accuracy=True,
            backends=("onnxruntime",), scenarios=("SingleStream", "Offline"), modes=("engine", "e2e"),
            duration_s=0.05, min_queries=8, warmup_queries=2, offline_batch=1, threads=1, plots=False,
            progress=False,
        )
        doc = run_benchmark(cfg).results
    assert doc["bundle"]["task"] == load_bundle(bundle).task
    assert sorted(r["id"] for r in doc["records"]) == sorted(
        f"onnxruntime/fp32/{s}/{m}" for s in ("SingleStream", "Offline") for m in ("engine", "e2e"))
    assert all(r["samples"] > 0 and r["metric"]["value"] > 0 for r in doc["records"])
    e2e = next(r for r in doc["records"] if r["id"] == "onnxruntime/fp32/SingleStream/e2e")
    assert set(e2e["stages_ms"]) == {"decode", "preprocess", "batch", "infer", "postprocess"}
    assert doc["baselines"]["eager"]["status"] == "skipped"
    assert "imported" in doc["baselines"]["eager"]["reason"]
    (acc,) = doc["accuracy"]
    with Perception.load(bundle) as p:
        ref = evaluate(p, world["data"][key], progress=False)
    wanted = ["detection_map50"] if key == "det" else ["audio_tag_map"]
    for metric in wanted:
        assert acc["metrics"][metric] == pytest.approx(ref[metric], abs=1e-6)
    assert "event_accuracy" not in acc["metrics"] and acc["samples"] == ref["samples"] == 8


def test_gate_quantizes_each_task_on_its_own_metric_and_compare_holds_it_to_fp32(world, tmp_path):
    expected_metric = {"cls": "event_accuracy", "det": "detection_map50", "tag": "audio_tag_map"}
    for key, metric in expected_metric.items():
        bundle, data = world["bundles"][key], world["data"][key]
        assert gated_metrics(load_bundle(bundle)) == (metric,)
        feeds = load_calibration_feeds(load_bundle(bundle), data, limit=8)
        (name,) = feeds[0]
        assert name == {"cls": "input", "det": "images", "tag": "waveform"}[key]
        assert max(f[name].shape[0] for f in feeds) == (1 if key == "det" else 8)  # the model's batch limit
        # detection mAP must survive INT8: the head's decoded boxes and scores share one output, which a
        # single INT8 scale would grind the [0, 1] scores to a few levels of (the box range, 0-64 px)
        out, report = gate_bundle(bundle, tmp_path / f"{key}-int8", data, data, budget=Budget(1.0, 0.05, 1.0),
                                  calibration_limit=8, progress=False)
        int8 = load_bundle(out)
        assert int8.precision == "int8" and int8.task == load_bundle(bundle).task
        with Perception.load(bundle) as p:
            fp32_metric = evaluate(p, data, progress=False)[metric]
        with Perception.load(out) as p:
            assert p.self_test() <= 0.05
            int8_metric = evaluate(p, data, progress=False)[metric]
        gate = int8.manifest["variant"]["gate"]
        assert list(gate["baseline"]) == [metric] and gate["baseline"][metric] == pytest.approx(fp32_metric)
        assert gate["metrics"][metric] == pytest.approx(int8_metric)
        assert gate["drop"][metric] == pytest.approx(fp32_metric - int8_metric, abs=1e-6)
        assert report.chosen is not None and report.chosen.drop[metric] <= (0.05 if key == "det" else 1.0)
        quantization = int8.manifest["variant"]["quantization"]
        assert quantization["config"]["exclude_output_tail"] is True
        if key == "tag":  # the log-power front end stays in float, as the fused model's does
            ops = {n.name: n.op_type for n in onnx.load(str(world["raw"]["tag"])).graph.node}
            assert {"Conv", "Pow", "Log"} <= {ops[n] for n in quantization["excluded"] if n in ops}

        cmp = compare(bundle, ["onnxruntime"], variants=[out], data=data, data_limit=4)
        fp32, q = cmp.results
        assert fp32.status == "ok" and all(o.max_abs <= 1e-4 for o in fp32.outputs)
        assert q.precision == "int8" and q.outputs[0].cosine > 0.9 and q.outputs[0].max_abs > 0


def test_gate_refuses_a_validation_set_without_the_task_labels(world, tmp_path):
    from fusionedge.export.onnx_export import ExportError

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.zeros((48, 80, 3), np.uint8))
    _manifest(folder, [{"id": "a", "video": "a.png", "event": None}])
    with pytest.raises(ExportError, match="detection_map50 of the fp32 model is undefined"):
        gate_bundle(world["bundles"]["det"], tmp_path / "q", folder, folder, calibration_limit=1, progress=False)
    assert not (tmp_path / "q").exists()


def test_fleet_publishes_installs_and_health_checks_an_imported_bundle(world, tmp_path):
    bundle = world["bundles"]["det"]
    env = FleetEnv(tmp_path)
    try:
        env.publish(bundle, "1.0.0")
        env.rollout("1.0.0")
        agent = env.agent("cam-1", backend_options=FAST)
        outcome = agent.check_once()
        assert outcome.action == "updated" and outcome.ok, outcome
        assert outcome.health["self_test_max_abs_err"] <= 1e-4 and outcome.health["backend"] == "onnxruntime"
        installed = agent.current_path
        image = cv2.imread(str(world["data"]["det"] / "4.png"))[:, :, ::-1].copy()
        with Perception.load(installed) as served, Perception.load(bundle) as source:
            assert served.bundle.task == "detect" and served.bundle.digest == source.bundle.digest
            assert served.infer(image=image).boxes == source.infer(image=image).boxes
    finally:
        env.close()


def test_engine_build_of_an_imported_bundle(world, tmp_path):
    """The TensorRT build takes an imported bundle's declared input; without TensorRT it says so in one line."""
    from fusionedge.sdk.engine_fingerprint import shape_profile

    manifest = load_bundle(world["bundles"]["cls"]).manifest
    assert shape_profile(manifest) == {"input": [[1, 3, 32, 32], [1, 3, 32, 32], [32, 3, 32, 32]]}
    proc = subprocess.run(
        [sys.executable, "-m", "fusionedge", "engine", "build", "--bundle", str(world["bundles"]["cls"])],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if importlib.util.find_spec("tensorrt") is None:
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "TensorRT is not installed here" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().endswith(".plan")


def test_an_audio_models_length_is_read_from_its_input_when_not_declared(world, tmp_path):
    """``--input sample_rate=16000`` alone on a 0.5 s model: the length comes from the input's 8000 samples."""
    out = import_onnx(world["raw"]["tag"], tmp_path / "t", task="audio-classify", labels=TAGS,
                      input_decl=parse_input_spec(f"modality=audio,sample_rate={RATE}"))
    pre = load_bundle(out).manifest["inputs"][0]["preprocessing"]
    assert pre["clip_seconds"] == 0.5 and pre["sample_rate"] == RATE


def test_the_decode_tail_of_a_yolo_export_stays_in_float(world):
    from fusionedge.export.quantize import output_tail_nodes

    det = onnx.load(str(world["raw"]["det"]))
    tail = output_tail_nodes(det)
    ops = {n.name: n.op_type for n in det.graph.node}
    assert ops[tail[-1]] == "Concat" and "Sigmoid" in {ops[n] for n in tail}
    assert not any(ops[n] == "Conv" for n in tail)
    assert output_tail_nodes(onnx.load(str(world["raw"]["cls"]))) == []  # logits straight from Gemm


def test_a_batch_one_export_is_told_how_to_bench_it(world, tmp_path):
    """Ultralytics exports a fixed batch of 1: the default MultiStream and Offline batches cannot run."""
    from fusionedge.benchmarks.errors import BenchConfigError
    from fusionedge.benchmarks.harness import plan_benchmark

    with pytest.raises(BenchConfigError, match=r"batches of 1 to 1; change --samples-per-query or leave "
                                               r"MultiStream out of --scenarios"):
        plan_benchmark(BenchConfig(bundle=world["bundles"]["det"], out=tmp_path))
    plan = plan_benchmark(BenchConfig(bundle=world["bundles"]["det"], out=tmp_path, offline_batch=1,
                                      scenarios=("SingleStream", "Offline")))
    assert plan.model is not None and plan.model.task == "detect"


def test_bench_clips_check_labels_only_for_accuracy(world, tmp_path):
    """A performance run takes any labelled data; an accuracy run the samples labelled in the task's labels."""
    from fusionedge.sdk.errors import DataError

    det = load_bundle(world["bundles"]["det"])
    model = GenericModel.from_bundle(det)
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((48, 80, 3), np.uint8))
    _manifest(tmp_path, [{"id": "a", "video": "a.png", "event": "rain",
                          "boxes": [{"label": "truck", "box": [1, 1, 20, 20]}]}])
    assert [s.id for s in load_clips(tmp_path, det.labels, model=model)] == ["a"]
    with pytest.raises(DataError, match="truck"):
        load_clips(tmp_path, det.labels, model=model, require_labels=True)
    cls = load_bundle(world["bundles"]["cls"])
    with pytest.raises(DataError, match="no samples with the media and labels a classify model runs on"):
        load_clips(world["data"]["det"], cls.labels, model=GenericModel.from_bundle(cls), require_labels=True)
