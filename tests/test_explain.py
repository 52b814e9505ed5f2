"""Evidence maps through the runtime on a tiny model whose evidence is known by construction: the map
finds the cell and the audio slice the decision rests on, the attribution matches the model's own
arithmetic, the deletion test separates most-attributed from random regions, and ``fusionedge
explain`` draws a picture, a video and a report."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _toy_model import TOY_GEOMETRY
from fusionedge.cli.main import main
from fusionedge.sdk import Perception
from fusionedge.sdk.datamanifest import Sample, write_manifest
from fusionedge.sdk.explain import deletion_test, explain_clip, explain_inputs
from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS
from test_streaming_pipeline import write_clip
from torch import nn
from torch.nn import functional as F

CELL, SLICES = 8, 8  # 8-px cells on the 32x48 toy input: 4 x 6; 8 slices of the 0.25 s window


class KnownEvidenceNet(nn.Module):
    """``emergency_ahead``'s logit is ``2 * seen + 2 * heard``: ``seen`` the brightest 8x8 cell of the last
    frame's first channel, ``heard`` ten times the loudest of 8 audio slices (each zero when withheld);
    ``none`` is fixed at 1. Where the evidence lies is therefore known exactly."""

    def forward(self, video: torch.Tensor, audio: torch.Tensor, presence: torch.Tensor):
        b = video.shape[0]
        seen = F.avg_pool2d(video[:, -1, :1], CELL).flatten(1).amax(1) * presence[:, 0]  # (B,)
        heard = 10.0 * audio.abs().reshape(b, SLICES, -1).mean(-1).amax(1) * presence[:, 1]  # (B,)
        one = torch.ones_like(seen)
        events = torch.stack([one, 2.0 * seen + 2.0 * heard, 0.0 * one, 0.0 * one], 1)
        tags = heard[:, None] * torch.ones(1, len(AUDIO_TAGS))
        grid = video[:, -1, :1, ::4, ::4] * 0.0  # (B, 1, 8, 12): the detection heads say nothing
        return (events, tags, grid.expand(-1, len(OBJECTS), -1, -1) - 20.0, grid.expand(-1, 2, -1, -1) + 1.0,
                grid.expand(-1, 2, -1, -1) + 0.5)


@pytest.fixture(scope="module")
def known(tmp_path_factory) -> Path:
    from fusionedge.export import export_model

    info = {"model_name": "known", "model_config": {}, "geometry": TOY_GEOMETRY.to_dict(),
            "labels": {"events": list(EVENTS), "audio_tags": list(AUDIO_TAGS), "objects": list(OBJECTS)}}
    return export_model(KnownEvidenceNet().eval(), info, tmp_path_factory.mktemp("known") / "b", progress=False)


def _clip(cell: tuple[int, int], burst: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faint noise, one bright cell in the last frame, one loud audio slice."""
    g = TOY_GEOMETRY
    rng = np.random.default_rng(seed)
    video = (0.05 * rng.normal(size=(g.clip_frames, 3, g.height, g.width))).astype(np.float32)
    r, c = cell
    video[-1, 0, r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] += 1.0
    audio = (0.01 * rng.uniform(-1, 1, g.audio_samples)).astype(np.float32)
    n = g.audio_samples // SLICES
    audio[burst * n : (burst + 1) * n] += 0.1 * np.sign(np.sin(np.arange(n) * 0.7)).astype(np.float32)
    return video, audio, np.ones(2, np.float32)


def test_the_map_finds_the_cell_and_the_slice_the_decision_rests_on(known):
    with Perception.load(known) as p:
        for cell, burst in (((1, 4), 6), ((3, 0), 1)):
            video, audio, presence = _clip(cell, burst)
            m = explain_inputs(p, video, audio, presence, cell=CELL, audio_segments=SLICES)
            assert m.event == "emergency_ahead" and m.spatial.shape == (4, 6) and m.audio.shape == (SLICES,)
            assert np.unravel_index(int(m.spatial.argmax()), m.spatial.shape) == cell
            assert int(m.audio.argmax()) == burst
            assert int(m.frames.argmax()) == TOY_GEOMETRY.clip_frames - 1  # only the last frame is read
            # the bright cell's evidence is the fall of the margin over "none": 2 * (1 - next brightest)
            assert m.spatial.max() == pytest.approx(2.0 * 1.0, abs=0.15)
            # attribution: withholding a sense removes its term, so the shares are seen : heard
            seen = video[-1, 0].reshape(4, CELL, 6, CELL).mean(axis=(1, 3)).max()
            heard = 10.0 * np.abs(audio).reshape(SLICES, -1).mean(-1).max()
            assert m.attribution.contribution["video"] == pytest.approx(seen / (seen + heard), abs=1e-3)
            assert m.attribution.margin_drop["audio"] == pytest.approx(2.0 * heard, abs=1e-3)


def test_masking_the_most_attributed_regions_lowers_the_decision_more_than_random_ones(known):
    with Perception.load(known) as p:
        tops, randoms = {"video": [], "audio": []}, {"video": [], "audio": []}
        for seed, (cell, burst) in enumerate((((0, 0), 0), ((2, 3), 4), ((3, 5), 7))):
            clip = _clip(cell, burst, seed)
            m = explain_inputs(p, *clip, cell=CELL, audio_segments=SLICES)
            d = deletion_test(p, *clip, m, fraction=0.25, trials=12, seed=seed)
            assert (d["video"].k, d["video"].of, d["audio"].k, d["audio"].of) == (6, 24, 2, 8)
            for mod in ("video", "audio"):
                tops[mod].append(d[mod].top_drop)
                randoms[mod].append(d[mod].random_drop)
    for mod in ("video", "audio"):
        assert np.mean(tops[mod]) > 2.0 * np.mean(randoms[mod]) > 0.0, mod


def test_explain_cli_draws_a_picture_a_video_and_a_report(known, tmp_path, capsys):
    video, audio = write_clip(tmp_path, 1.0, seed=5)
    png, mp4 = tmp_path / "explain.png", tmp_path / "explain.mp4"
    assert main(["explain", "--bundle", str(known), "--video", str(video), "--audio", str(audio),
                 "--cell", str(CELL), "--out", str(png), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["event"] in EVENTS and len(out["spatial"]) == 4 and len(out["audio"]) == 10
    img = cv2.imread(str(png))
    assert img is not None and img.shape[1] == 2 * 320 and img.shape[0] > 300
    assert main(["explain", "--bundle", str(known), "--video", str(video), "--out", str(mp4)]) == 0
    assert "seen 100%, heard 0%" in capsys.readouterr().out
    cap = cv2.VideoCapture(str(mp4))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5  # the 0.25 s window at 20 fps
    cap.release()
    # a report over a labelled manifest: tables, JSON and the plot
    data = tmp_path / "data"
    data.mkdir()
    clips = [write_clip(data, 1.0, seed=s) for s in (1, 2)]
    write_manifest(data / "manifest.jsonl", [Sample(f"c{i}", v, a, "emergency_ahead") for i, (v, a) in
                                            enumerate(clips)])
    report = tmp_path / "report"
    assert main(["explain", "--bundle", str(known), "--data", str(data), "--out", str(report)]) == 0
    assert "report written" in capsys.readouterr().out
    summary = json.loads((report / "report.json").read_text())
    assert summary["clips"] == 2 and set(summary["deletion"]) == {"video", "audio"}
    assert "| emergency_ahead | 2 |" in (report / "report.md").read_text()
    assert cv2.imread(str(report / "report.png")) is not None
    # one line and status 2 for a user error
    assert main(["explain", "--bundle", str(known), "--video", str(video), "--out", str(tmp_path / "x.gif")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_explain_clip_keeps_the_frames_the_model_saw_and_reports_a_missing_sense(known, tmp_path):
    video, audio = write_clip(tmp_path, 1.0, seed=6)
    with Perception.load(known) as p:
        both = explain_clip(p, video, audio)
        heard = explain_clip(p, None, audio)
    assert both.frames.shape == (TOY_GEOMETRY.clip_frames, 64, 96, 3) and both.audio.shape == (2000,)
    assert heard.frames is None and heard.map.spatial is None and heard.map.frames is None
    assert heard.map.attribution.contribution == {"video": 0.0, "audio": 1.0}
