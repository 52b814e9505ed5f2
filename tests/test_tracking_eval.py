"""Synthetic sequences with true identities, their MOTChallenge files, and ``fusionedge track``.

The ground truth is read back with py-motmetrics' own MOTChallenge reader, so a standard evaluator
sees the same boxes and identities the generator drew; one end-to-end run of the CLI tracks a
sequence with the toy bundle.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _toy_model import shared_toy_bundle
from fusionedge.cli.main import main
from fusionedge.sdk.audio_file import read_audio
from fusionedge.sdk.errors import DataError, InputError
from fusionedge.sdk.spec import OBJECTS
from fusionedge.sdk.track_events import DB_PER_LOG_DISTANCE, SirenLevels
from fusionedge.training.synth.sequence import (
    SequenceConfig,
    generate_sequences,
    read_mot_rows,
    read_sequence,
    render_sequence,
    write_mot_rows,
)
from fusionedge.training.track_eval import mot_metrics

mm = pytest.importorskip("motmetrics")
pytest.importorskip("scipy")

SMALL = SequenceConfig(seconds=4.0, fps=4.0, width=160, height=96, cars=(2, 2), pedestrians=(1, 1))


@pytest.fixture(scope="module")
def seq_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("seqs")
    generate_sequences(out, 2, seed=3, config=SMALL)
    return out


def test_ground_truth_reads_back_through_the_evaluators_own_reader(seq_dir):
    seq = read_sequence(seq_dir / "seq_0000")
    assert seq.frames == 16 and seq.objects[0].label == "emergency_vehicle"
    df = mm.io.loadtxt(str(seq_dir / "seq_0000" / "gt" / "gt.txt"), fmt="mot16")
    assert len(df) == len(seq.truth) > 0
    for frame, tid, label, (x1, y1, x2, y2) in seq.truth:
        row = df.loc[(frame, tid)]
        assert (row["X"], row["Y"], row["Width"], row["Height"]) == pytest.approx((x1, y1, x2 - x1, y2 - y1))
        assert int(row["ClassId"]) == OBJECTS.index(label) + 1
    # truth against itself: perfect; against itself with the ids of two objects exchanged halfway: switches
    perfect = mot_metrics([("s", seq.truth, seq.truth, seq.frames)])
    assert perfect["all"]["mota"] == 1.0 and perfect["all"]["idf1"] == 1.0
    cars = sorted({r[1] for r in seq.truth if r[2] == "car"})
    swap = {cars[0]: cars[1], cars[1]: cars[0]}
    swapped = [(f, swap.get(i, i) if f > 8 else i, lab, b) for f, i, lab, b in seq.truth]
    assert mot_metrics([("s", seq.truth, swapped, seq.frames)])["car"]["num_switches"] >= 1


def test_mot_rows_round_trip_and_bad_rows_are_data_errors(tmp_path):
    rows = [(1, 7, "car", [10.0, 20.0, 40.5, 60.25]), (2, 7, "emergency_vehicle", [11.0, 20.0, 41.0, 61.0])]
    write_mot_rows(tmp_path / "r.txt", rows, scores=[0.9, 0.4])
    assert read_mot_rows(tmp_path / "r.txt") == rows
    with pytest.raises(InputError):
        write_mot_rows(tmp_path / "x.txt", [(1, 1, "bicycle", [0, 0, 1, 1])])
    for bad in ("1,1,0,0,10\n", "1,1,0,0,-5,10,1,1,1\n", "1,1,0,0,5,10,1,9,1\n", "1,1,nan,0,5,10,1,1,1\n"):
        (tmp_path / "bad.txt").write_text(bad)
        with pytest.raises(DataError):
            read_mot_rows(tmp_path / "bad.txt")
    with pytest.raises(DataError):
        read_sequence(tmp_path)
    with pytest.raises(InputError):
        generate_sequences(tmp_path / "none", 0)
    with pytest.raises(InputError):
        render_sequence(np.random.default_rng(0), SequenceConfig(fps=0.5))


def test_the_emergency_vehicles_box_and_siren_move_as_its_truth_says():
    for seed in range(6):
        seq = render_sequence(np.random.default_rng(seed), SequenceConfig(seconds=6.0, fps=4.0, width=160, height=96))
        ev = seq.objects[0]
        if ev.motion == "steady":
            continue
        h = [(f, b[3] - b[1]) for f, tid, _, b in seq.truth if tid == ev.track_id]
        grows = h[-1][1] > h[0][1]
        assert grows == (ev.motion == "approach"), (seed, ev, h[0], h[-1])
        levels = SirenLevels(seq.sample_rate)
        audio = seq.audio.astype(np.float64) / 32768.0
        for k in range(1, 25):
            end = k * seq.sample_rate // 4
            levels.add(audio[end - seq.sample_rate // 4:end], k / 4)
        slope, _, _ = levels.trend(6.0, window_s=6.0)
        expected = np.log(ev.depth_start_m / ev.depth_end_m) / 6.0 * DB_PER_LOG_DISTANCE
        assert np.sign(slope) == np.sign(expected) and abs(slope) > 0.3 * abs(expected), (seed, slope, expected)


@pytest.mark.slow
def test_track_eval_end_to_end_with_a_bundle(tmp_path_factory, seq_dir, capsys):
    bundle = shared_toy_bundle(tmp_path_factory)
    data = tmp_path_factory.mktemp("one")
    shutil.copytree(seq_dir / "seq_0001", data / "seq_0001")
    out = tmp_path_factory.mktemp("tracks")
    assert main(["track", "eval", "--bundle", str(bundle), "--data", str(data), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sequences"] == 1 and report["frames"] == 16
    assert set(report["per_class"]) >= {"emergency_vehicle", "all"}
    assert report["per_class"]["all"]["num_objects"] == len(read_sequence(data / "seq_0001").truth)
    for label, m in report["motion"].items():
        assert 0.0 <= m["box"] <= 1.0 and m["frames"] > 0, label
    rows = read_mot_rows(out / "seq_0001.txt")
    assert all(1 <= f <= 16 and lab in OBJECTS for f, _, lab, _ in rows)
    # reading the audio back gives what the generator wrote (the siren evaluation reads this file)
    audio, sr = read_audio(data / "seq_0001" / "audio.wav")
    assert sr == 16000 and audio.shape[0] == 4 * 16000
    # a folder without sequences is a one-line error with status 2
    assert main(["track", "eval", "--bundle", str(bundle), "--data", str(out)]) == 2
    assert "no sequence folder" in capsys.readouterr().err


def test_hota_is_trackevals_when_installed(seq_dir):
    pytest.importorskip("trackeval")
    from fusionedge.training.track_eval import hota

    seq = read_sequence(seq_dir / "seq_0000")
    perfect = hota([("s", seq.truth, seq.truth, seq.frames)])
    assert perfect["emergency_vehicle"] == pytest.approx(1.0)
    shifted = [(f, i, lab, [b[0] + 3, b[1], b[2] + 3, b[3]]) for f, i, lab, b in seq.truth]
    assert hota([("s", seq.truth, shifted, seq.frames)])["emergency_vehicle"] < 0.95
