"""Compression: channel pruning of registry models, 2:4 sparsity and its checker, the compress pipeline."""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("torch_pruning")

#: A registry model at the toy geometry (2 frames of 32x48, 0.25 s of 8 kHz audio): exports in seconds.
TINY = {"clip_frames": 2, "height": 32, "width": 48, "audio_samples": 2000, "sample_rate": 8000, "f_max": 4000.0}


def _info(model):
    from _toy_model import TOY_GEOMETRY
    from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS

    return {"model_name": "fusion_student", "model_config": model.config.to_dict(),
            "geometry": TOY_GEOMETRY.to_dict(),
            "labels": {"events": list(EVENTS), "audio_tags": list(AUDIO_TAGS), "objects": list(OBJECTS)},
            "metrics": {}, "epoch": 1}


def test_bad_settings_name_the_value():
    from fusionedge.export.compress import CompressConfig, with_budget_points
    from fusionedge.training.prune import PruneConfig, PruneError
    from fusionedge.training.sparsity import SparsityError

    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(PruneError, match=str(bad)):
            PruneConfig(flops_ratio=bad)
    with pytest.raises(PruneError, match="'l1'"):
        PruneConfig(criterion="l1")
    with pytest.raises(SparsityError, match="'1:4'"):
        CompressConfig(sparsity="1:4")
    with pytest.raises(PruneError, match="1.2"):
        CompressConfig(prune=(0.3, 1.2))
    with pytest.raises(Exception, match="-1"):
        with_budget_points(CompressConfig(int8="ptq"), -1, 1)


def test_pruned_registry_model_has_fewer_flops():
    """(compress's end-to-end test exports a pruned model through the normal exporter, parity included.)"""
    from fusionedge.training.models import create_model
    from fusionedge.training.prune import PruneConfig, prune_model

    torch.manual_seed(0)
    model = create_model("fusion_student", **TINY).eval()
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    report = prune_model(model, PruneConfig(flops_ratio=0.4, criterion="bn_scale"), progress=False)
    assert report["flops_after"] <= 0.6 * report["flops_before"]
    assert report["params_after"] < report["params_before"]
    widths = report["widths"]
    assert any(widths[n] < before[n] for n in before)
    assert widths["det_head.heatmap"] == before["det_head.heatmap"]  # contract outputs keep their channels
    with torch.no_grad():
        shapes = [tuple(o.shape) for o in model(*model.example_inputs(3))]
    assert shapes == [(3, 4), (3, 4), (3, 4, 8, 12), (3, 2, 8, 12), (3, 2, 8, 12)]


def test_dense_detection_prunes_around_the_stride4_detection_path():
    """With ``dense_detection`` the detection head and the stride-4 features it reads keep every channel,
    and the FLOPs still come down (taken from the rest of the encoders)."""
    from fusionedge.training.models import create_model
    from fusionedge.training.prune import PruneConfig, prune_model

    torch.manual_seed(0)
    model = create_model("fusion_student", **TINY).eval()
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    report = prune_model(model, PruneConfig(flops_ratio=0.3, criterion="bn_scale", dense_detection=True),
                         progress=False)
    assert report["config"]["dense_detection"] is True
    assert report["flops_after"] <= 0.7 * report["flops_before"]
    widths = report["widths"]
    dense = [n for n in before if n.startswith("det_head.")] + ["video_encoder.s4.1.0"]
    assert {n: widths[n] for n in dense} == {n: before[n] for n in dense}
    assert model.det_head.lateral[0].in_channels == before["video_encoder.s4.1.0"]
    assert any(widths[n] < before[n] for n in before if n.startswith("video_encoder.s8"))
    with torch.no_grad():
        shapes = [tuple(o.shape) for o in model(*model.example_inputs(2))]
    assert shapes == [(2, 4), (2, 4), (2, 4, 8, 12), (2, 2, 8, 12), (2, 2, 8, 12)]


def test_keep_narrow_and_ratio_scale_shape_where_the_channels_go():
    """``keep_narrow`` leaves convolutions of at most 2 * round_to channels whole (a cut there would halve
    them); ``ratio_scale`` makes the named convolutions lose channels faster than the rest."""
    from fusionedge.training.models import create_model
    from fusionedge.training.prune import PruneConfig, PruneError, prune_model

    torch.manual_seed(0)
    base = create_model("fusion_student", **TINY).eval()
    before = {n: m.out_channels for n, m in base.named_modules() if isinstance(m, torch.nn.Conv2d)}
    plain = copy.deepcopy(base)
    prune_model(plain, PruneConfig(flops_ratio=0.4, criterion="bn_scale", round_to=8), progress=False)
    narrow = [n for n, c in before.items() if c <= 16 and not n.startswith("det_head.")]
    assert narrow and any(plain.get_submodule(n).out_channels < before[n] for n in narrow)  # cut without it

    shaped = copy.deepcopy(base)
    report = prune_model(shaped, PruneConfig(flops_ratio=0.4, criterion="bn_scale", round_to=8, keep_narrow=True,
                                             ratio_scale=(("det_head", 2.0),)), progress=False)
    widths = report["widths"]
    assert report["flops_after"] <= 0.6 * report["flops_before"]
    assert {n: widths[n] for n in narrow} == {n: before[n] for n in narrow}
    lost = {n: 1 - widths[n] / before[n] for n in before}
    assert lost["det_head.shared.0"] > lost["video_encoder.s4.1.0"]
    assert report["config"]["keep_narrow"] and report["config"]["ratio_scale"] == [["det_head", 2.0]]
    with torch.no_grad():
        shapes = [tuple(o.shape) for o in shaped(*shaped.example_inputs(2))]
    assert shapes == [(2, 4), (2, 4), (2, 4, 8, 12), (2, 2, 8, 12), (2, 2, 8, 12)]
    with pytest.raises(PruneError, match="no_such_module"):
        prune_model(copy.deepcopy(base), PruneConfig(ratio_scale=(("no_such_module", 2.0),)), progress=False)
    with pytest.raises(PruneError, match="-1"):
        PruneConfig(ratio_scale=(("det_head", -1),))


def test_one_schedule_serves_training_the_qa_reader_and_the_detection_finetune():
    """``warmup_cosine`` is the schedule of every loop: ``lr_at`` (training, pretraining, the QA
    reader) and the detection fine-tune's cosine without warm-up are it, value for value."""
    from types import SimpleNamespace

    from fusionedge.training.loop import lr_at, warmup_cosine

    run = SimpleNamespace(lr=3e-3, min_lr_ratio=0.02)
    assert [lr_at(s, 200, 20, run) for s in range(220)] == [warmup_cosine(s, 3e-3, 20, 180, 0.02) for s in range(220)]
    assert warmup_cosine(0, 3e-3, 20, 180, 0.02) == pytest.approx(1.5e-4)
    assert warmup_cosine(19, 3e-3, 20, 180, 0.02) == pytest.approx(3e-3)
    assert warmup_cosine(200, 3e-3, 20, 180, 0.02) == warmup_cosine(500, 3e-3, 20, 180, 0.02) == pytest.approx(6e-5)
    for step in (0, 150, 299):  # no warm-up: the peak at step 0, 5% of it at the end, as the detection fine-tune had
        assert warmup_cosine(step, 2e-4, 0, 300, 0.05) == pytest.approx(
            2e-4 * (0.05 + 0.475 * (1.0 + math.cos(math.pi * step / 300))))


def test_finetune_lr_warms_up_then_follows_a_cosine_to_its_floor():
    from fusionedge.sdk.errors import InputError
    from fusionedge.training.finetune import FinetuneConfig, finetune_lr

    cfg = FinetuneConfig(lr=1e-3, warmup=0.1, min_lr_ratio=0.02)
    lrs = [finetune_lr(cfg, s, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # 10 warm-up steps
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))  # then never up again
    assert lrs[-1] == pytest.approx(2e-5)
    assert lrs[55] == pytest.approx(2e-5 + 0.5 * (1e-3 - 2e-5) * (1 + math.cos(math.pi * 45 / 89)))
    assert {finetune_lr(FinetuneConfig(lr=3e-4, schedule="constant"), s, 50) for s in range(50)} == {3e-4}
    with pytest.raises(InputError, match="'step'"):
        FinetuneConfig(schedule="step")


def test_finetune_validates_every_epoch_and_distils_detection_features(tiny_run):
    """A pruned model fine-tuned with the detection-feature term (its adapter bridges the pruned width to
    the teacher's) reports validation numbers per epoch; without cached features it is refused."""
    from fusionedge.training.checkpoint import load_checkpoint
    from fusionedge.training.distill import DistillWeights
    from fusionedge.training.evaluation import evaluate_model
    from fusionedge.training.finetune import (
        FinetuneConfig,
        FinetuneError,
        distill_finetune,
        load_training_clips,
        teacher_targets,
    )
    from fusionedge.training.prune import PruneConfig, prune_model

    ckpt, data = tiny_run
    model, info = load_checkpoint(ckpt)
    clips = load_training_clips(info, data / "train", limit=12, progress=False)
    cache = teacher_targets(copy.deepcopy(model), clips, batch_size=12, det_features=True, progress=False)
    plain = teacher_targets(copy.deepcopy(model), clips, batch_size=12, progress=False)
    prune_model(model, PruneConfig(flops_ratio=0.2, criterion="bn_scale", round_to=2,
                                   ratio_scale=(("det_head", 2.0),)), progress=False)
    assert model.det_head.shared[0].out_channels < cache.det_feature.shape[2]  # the adapter has work to do
    cfg = FinetuneConfig(epochs=2, batch_size=6, lr=1e-3, distill=DistillWeights(event_kl=1, heatmap=1, det_feature=1))
    with pytest.raises(FinetuneError, match="det_features=True"):
        distill_finetune(copy.deepcopy(model), plain, clips, cfg, progress=False)
    seen = []

    def validate(m):
        assert not m.training
        seen.append(1)
        metrics = evaluate_model(m, clips)
        return {"event_accuracy": metrics["event_accuracy"], "detection_map50": metrics["detection_map50"]}

    weight = model.det_head.shared[0].weight.detach().clone()
    history = distill_finetune(model, cache, clips, cfg, validate=validate, progress=False)
    assert [h["epoch"] for h in history] == [1, 2] and len(seen) == 2
    assert all(0 <= h["val_event_accuracy"] <= 1 and 0 <= h["val_detection_map50"] <= 1 for h in history)
    assert all(math.isfinite(h["loss"]) and h["steps"] == 2 for h in history)
    assert history[-1]["lr"] == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    assert not torch.equal(weight, model.det_head.shared[0].weight) and not model.training


def test_2to4_mask_and_the_checker(tmp_path):
    import onnx
    from fusionedge.export.sparsity import SparsityCheckError, check_2to4, find_2to4, sparsity_section
    from fusionedge.training.sparsity import SparsityError, mask_2to4
    from onnx import TensorProto, helper, numpy_helper

    torch.manual_seed(0)
    w = torch.randn(8, 16, 3, 3)
    mask = mask_2to4(w)
    groups = mask.movedim(1, -1).reshape(8, 3, 3, 4, 4).sum(-1)
    assert torch.equal(groups, torch.full_like(groups, 2))
    kept = w.abs().masked_fill(~mask, float("inf")).movedim(1, -1).reshape(8, 3, 3, 4, 4).amin(-1)
    dropped = (w.abs() * ~mask).movedim(1, -1).reshape(8, 3, 3, 4, 4).amax(-1)
    assert bool((kept >= dropped).all())  # the 2 largest of each group stay
    with pytest.raises(SparsityError, match="multiple of 4"):
        mask_2to4(torch.randn(4, 3, 3, 3))

    sparse = (w * mask).numpy()
    dense = torch.randn(8, 8, 3, 3).numpy()
    gemm_nk = (torch.randn(6, 8) * mask_2to4(torch.randn(6, 8))).numpy()  # Gemm transB=1: (N, K), groups along K
    nodes = [helper.make_node("Conv", ["x", "w_sparse"], ["y1"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["y1", "w_dense"], ["y2"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["y2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w_gemm"], ["z"], transB=1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 5, 5])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 6])],
        [numpy_helper.from_array(sparse, "w_sparse"), numpy_helper.from_array(dense, "w_dense"),
         numpy_helper.from_array(gemm_nk, "w_gemm")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    assert find_2to4(model) == ["w_sparse", "w_gemm"]
    check_2to4(model, ["w_sparse", "w_gemm"])
    with pytest.raises(SparsityCheckError, match="'w_dense'.*groups of 4"):
        check_2to4(model, ["w_sparse", "w_dense"])
    with pytest.raises(SparsityCheckError, match="'nope'"):
        check_2to4(model, ["nope"])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert sparsity_section(path) == {"pattern": "2:4", "weights": ["w_sparse", "w_gemm"], "checked": True}
    # one extra non-zero breaks the claim for that weight
    broken = sparse.copy()
    broken[0, 0:4, 0, 0] = 1.0
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(broken, "w_sparse"))
    with pytest.raises(SparsityCheckError, match="'w_sparse'.*1 of"):
        check_2to4(model, ["w_sparse"])


def test_engine_build_reads_the_sparsity_claim():
    from fusionedge.sdk.engine_build import EngineBuildError, sparse_weights

    assert sparse_weights({}) is False
    assert sparse_weights({"sparsity": {"pattern": "2:4", "weights": ["w"], "checked": True}}) is True
    with pytest.raises(EngineBuildError, match="1:4"):
        sparse_weights({"sparsity": {"pattern": "1:4", "weights": ["w"], "checked": True}})
    with pytest.raises(EngineBuildError, match="not a checked"):
        sparse_weights({"sparsity": {"pattern": "2:4", "weights": ["w"], "checked": False}})


def test_budget_choice_names_every_drop():
    from fusionedge.export.compress import CompressBudgetError, choose_within_budget
    from fusionedge.export.precision_gate import Budget

    stages = [{"name": "pruned-30", "val_drop": {"event_accuracy": 0.005, "detection_map50": 0.0}},
              {"name": "pruned-50", "val_drop": {"event_accuracy": 0.02, "detection_map50": 0.004}}]
    assert choose_within_budget(stages, Budget(0.01, 0.01))["name"] == "pruned-30"
    assert choose_within_budget(stages, Budget(0.05, 0.01))["name"] == "pruned-50"
    with pytest.raises(CompressBudgetError, match=r"pruned-30: drop event_accuracy \+0.50 pt.*pruned-50"):
        choose_within_budget(stages, Budget(0.001, 0.01))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny registry checkpoint at the toy geometry and a data folder whose splits share 24 synthetic clips."""
    from _precision_fixtures import SMALL_STUDENT, synth_data
    from fusionedge.sdk.spec import InputGeometry
    from fusionedge.training.checkpoint import save_checkpoint
    from fusionedge.training.models import create_model

    torch.manual_seed(0)
    model = create_model("fusion_student", **SMALL_STUDENT, **TINY)
    info = _info(model)
    root = tmp_path_factory.mktemp("compress")
    ckpt = save_checkpoint(root / "best.pt", model, model_name="fusion_student",
                           model_config=model.config.to_dict(), geometry=InputGeometry.from_dict(info["geometry"]),
                           labels=info["labels"], metrics={}, epoch=1)
    data = root / "data"
    data.mkdir()
    for split in ("train", "val", "test"):
        os.symlink(synth_data(tmp_path_factory), data / split)
    return ckpt, data


def test_compress_writes_sibling_bundles_and_a_report(tiny_run, tmp_path):
    from fusionedge.export.compress import CompressConfig, compress, with_budget_points
    from fusionedge.export.sparsity import check_2to4
    from fusionedge.sdk.bundle import load_bundle
    from fusionedge.training.finetune import FinetuneConfig

    ckpt, data = tiny_run
    cfg = with_budget_points(CompressConfig(prune=(0.15,), round_to=4, sparsity="2:4", int8="qat",
                                            finetune=FinetuneConfig(epochs=1, batch_size=12),
                                            calibration_limit=8, latency_runs=3), 100, 100)
    out = tmp_path / "out"
    report = compress(ckpt, data, out, cfg, progress=False)
    names = [s["name"] for s in report["stages"]]
    assert names == ["fp32", "pruned-15", "sparse-2of4", "int8"]
    assert report["chosen"] == "int8"
    for s in report["stages"]:
        b = load_bundle(out / s["bundle"], verify=True)
        b.golden()  # each stage has its own golden outputs, from its own model
        assert s["size"] == b.model_path.stat().st_size and s["latency"]["median_ms"] > 0
        assert set(s["test"]) >= {"event_accuracy", "detection_map50"}
    by = {s["name"]: s for s in report["stages"]}
    assert by["pruned-15"]["flops"] <= 0.85 * by["fp32"]["flops"]
    for name in ("pruned-15", "sparse-2of4"):  # exported through the normal exporter: parity at batch 1 and 3
        parity = load_bundle(out / name).manifest["variant"]["export_parity"]
        assert set(parity["batches"]) >= {1, 3} and parity["results"]
    assert load_bundle(out / "pruned-15").manifest["variant"]["parent"]["name"] == load_bundle(out / "fp32").name
    epochs = load_bundle(out / "pruned-15").manifest["variant"]["prune"]["rounds"][0]["finetune"]
    assert epochs and all(0 <= e["val_event_accuracy"] <= 1 for e in epochs)  # a validation per fine-tune epoch
    for name in ("sparse-2of4", "int8"):
        manifest = load_bundle(out / name).manifest
        assert manifest["sparsity"]["pattern"] == "2:4" and manifest["sparsity"]["weights"]
        check_2to4(str(out / name / "model.onnx"), manifest["sparsity"]["weights"])  # every claimed weight
    assert load_bundle(out / "int8").precision == "int8"
    # QAT fine-tuned on the grid the int8 stage wrote: the cpu profile's 7-bit weights, [-64, 64]
    variant = load_bundle(out / "int8").manifest["variant"]
    assert variant["method"] == "qat" and variant["qat"] == {"weight_bits": 8, "reduce_range": True,
                                                             "weight_qmax": 64}
    import numpy as np
    import onnx
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(t) for t in onnx.load(str(out / "int8" / "model.onnx")).graph.initializer
               if t.name.endswith("_quantized")]
    assert max(int(np.abs(w).max()) for w in weights if w.dtype == np.int8 and w.ndim == 4) == 64
    quantization = variant["quantization"]
    assert quantization["config"]["weight_int8"] and quantization["weight_int8"]["weights"] > 0
    assert by["int8"]["size"] < 0.6 * by["sparse-2of4"]["size"]  # the weights left float are int8 too (0.86 without)
    md = (out / "report.md").read_text()
    assert all(n in md for n in names)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["chosen"] == "int8"
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # no work folder left behind


@pytest.mark.parametrize("args, needle", [
    (["--prune", "1.5"], "1.5"),
    (["--sparsity", "1:4"], "'1:4'"),
    (["--int8", "ptq", "--budget-event", "-3"], "-3"),
    (["--prune", "0.3", "--ratio-scale", "det_head=-2"], "-2"),
    (["--prune", "0.3", "--ratio-scale", "det_head"], "'det_head'"),
])
def test_compress_cli_refuses_bad_input_without_a_bundle(tiny_run, tmp_path, args, needle):
    ckpt, data = tiny_run
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "fusionedge", "compress", "--checkpoint", str(ckpt), "--data",
                        str(data), "--out", str(out), *args], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_compress_refuses_a_data_folder_without_splits(tiny_run, tmp_path):
    from fusionedge.export.compress import CompressConfig, compress
    from fusionedge.sdk.errors import DataError

    ckpt, data = tiny_run
    (tmp_path / "d" / "train").mkdir(parents=True)
    (tmp_path / "d" / "train" / "manifest.jsonl").write_text((data / "train" / "manifest.jsonl").read_text())
    with pytest.raises(DataError, match="val/"):
        compress(ckpt, tmp_path / "d", tmp_path / "out", CompressConfig(int8="ptq"), progress=False)
    assert not (tmp_path / "out").exists()


def test_conv_only_int8_quantizes_the_convolutions_that_gain(tmp_path_factory, tmp_path):
    import onnx
    from _toy_model import TOY_GEOMETRY, shared_toy_bundle
    from fusionedge.export.int8_cpu import conv_only_keep_float
    from fusionedge.export.onnx_export import example_inputs
    from fusionedge.export.quantize import ArrayCalibrationReader, QuantizeConfig, quantize_onnx
    from fusionedge.sdk.bundle import load_bundle

    bundle = load_bundle(shared_toy_bundle(tmp_path_factory))
    fp = onnx.load(str(bundle.model_path))
    keep = set(conv_only_keep_float(fp))
    convs = {n.name: n for n in fp.graph.node if n.op_type == "Conv"}
    dims = {t.name: list(t.dims) for t in fp.graph.initializer}
    small = {name for name, n in convs.items() if dims[n.input[1]][1] < 4}  # the RGB and waveform convolutions
    assert small and small <= keep and set(convs) - small and not (set(convs) - small) & keep
    big_out = {convs[name].output[0] for name in set(convs) - small}
    acts = {n.name for n in fp.graph.node if n.op_type == "Relu" and n.input[0] in big_out}
    assert acts and not acts & keep  # a quantized convolution's activation is quantized with it
    assert {n.name for n in fp.graph.node if n.op_type != "Conv"} - acts <= keep
    feeds = [example_inputs(TOY_GEOMETRY, 2, seed=s) for s in range(2)]
    q_path = tmp_path / "q.onnx"
    quantize_onnx(bundle.model_path, q_path, ArrayCalibrationReader(feeds), QuantizeConfig(keep_float=tuple(keep)))
    q = onnx.load(str(q_path))
    producer = {o: n for n in q.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in q.graph.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    dq_out = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    quantized = {n.name for n in q.graph.node if n.op_type == "Conv" and any(x in dq_out for x in n.input)}
    assert quantized == set(convs) - small
    for node in (n for n in q.graph.node if n.op_type == "QuantizeLinear"):
        # every Q/DQ pair is a convolution's input or its activation's output: none sits around any
        # other operator, and none between a convolution and its activation (no requantization)
        src = producer.get(node.input[0])
        feeds_conv = any(r.op_type == "Conv" for dq in readers.get(node.output[0], [])
                         for r in readers.get(dq.output[0], []))
        act_inputs = {a.input[0] for a in fp.graph.node if a.name in acts}
        conv_output = src is not None and src.op_type == "Conv" and src.output[0] not in act_inputs
        assert feeds_conv or conv_output or (src is not None and src.name in acts), node.name


def test_compress_failing_midway_leaves_no_bundle(tiny_run, tmp_path):
    """A failure after the work folder exists (here an unreadable checkpoint) removes everything it wrote."""
    from fusionedge.export.compress import CompressConfig, compress
    from fusionedge.sdk.errors import FusionEdgeError

    _, data = tiny_run
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FusionEdgeError, match="best.pt"):
        compress(bad, data, tmp_path / "out", CompressConfig(int8="ptq"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # no out/, no work folder
