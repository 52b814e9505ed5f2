"""``fusionedge data check``: label balance, box sizes, media seen, and the clips that do not decode."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
from fusionedge.cli.main import main
from fusionedge.sdk.datacheck import check_dataset, format_report
from fusionedge.sdk.datamanifest import Box, Sample, write_manifest
from fusionedge.sdk.errors import DataError


def write_mp4(path: Path, frames: int, w: int, h: int, fps: float) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for k in range(frames):
        writer.write(np.full((h, w, 3), 30 * k % 256, np.uint8))
    writer.release()


def write_wav(path: Path, seconds: float, rate: int, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(int(seconds * rate) * channels, "<i2").tobytes())


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """Four samples with their own labels: two videos sizes and rates, one clip without audio."""
    m = tmp_path / "set" / "media"
    m.mkdir(parents=True)
    write_mp4(m / "a.mp4", 10, 64, 48, 10.0)
    write_mp4(m / "b.mp4", 20, 64, 48, 10.0)
    write_mp4(m / "c.mp4", 15, 80, 60, 15.0)
    write_mp4(m / "d.mp4", 10, 64, 48, 10.0)
    write_wav(m / "a.wav", 1.0, 16000)
    write_wav(m / "b.wav", 2.0, 16000)
    write_wav(m / "c.wav", 1.0, 44100, channels=2)
    samples = [
        Sample("a", m / "a.mp4", m / "a.wav", "ambulance", ("siren",),
               (Box("bus", 1, 1, 41, 21), Box("bike", 10, 10, 14, 30)), 64, 48),
        Sample("b", m / "b.mp4", m / "b.wav", "ambulance", ("siren", "horn"), (Box("bus", 0, 0, 64, 48),), 64, 48),
        Sample("c", m / "c.mp4", m / "c.wav", "quiet", ()),
        Sample("d", m / "d.mp4", None, None, ()),
    ]
    write_manifest(tmp_path / "set", samples)
    return tmp_path / "set"


def test_report_counts_balance_boxes_and_media(dataset):
    r = check_dataset(dataset)
    assert r.samples == 4 and r.unlabelled == 1 and r.unlabelled_share == pytest.approx(0.25)
    assert r.events == {"ambulance": 2, "quiet": 1}
    assert r.audio_tags == {"horn": 1, "siren": 2}
    assert r.boxes == {"bike": 1, "bus": 2}
    assert r.box_width == {"min": 4.0, "median": 40.0, "max": 64.0}
    assert r.tiny_boxes == 1  # the 4 px wide bike
    assert r.video_sizes == {"64x48": 3, "80x60": 1}
    assert r.video_fps == {"10": 3, "15": 1}
    assert r.video_seconds["min"] == pytest.approx(1.0) and r.video_seconds["max"] == pytest.approx(2.0)
    assert r.audio_rates == {"16000": 2, "44100": 1} and r.audio_channels == {"1": 2, "2": 1}
    assert r.samples_without_audio == 1 and r.failures == []
    text = format_report(r)
    assert "every clip decodes" in text and "tiny boxes (shorter side < 8 px): 1" in text


def test_a_corrupt_clip_is_reported_with_its_file_and_exit_1(dataset, capsys):
    bad = dataset / "media" / "b.mp4"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated inside the header
    (dataset / "media" / "c.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    code = main(["data", "check", str(dataset), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    failed = {f["file"]: f["error"] for f in report["failures"]}
    assert set(failed) == {str(bad), str(dataset / "media" / "c.wav")}
    assert str(bad) in failed[str(bad)]
    assert report["samples"] == 4 and report["video_sizes"] == {"64x48": 2, "80x60": 1}
    code = main(["data", "check", str(dataset)])
    text = capsys.readouterr().out
    assert code == 1 and "2 file(s) do not decode:" in text and f"b: {bad}" in text


def test_an_invalid_manifest_exits_2_with_one_line(dataset):
    lines = (dataset / "manifest.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"id": "c"', '"id": 3')
    (dataset / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    r = subprocess.run([sys.executable, "-m", "fusionedge", "data", "check", str(dataset)],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "manifest.jsonl:3: field 'id': must be a string" in err[0]
    assert r.stdout == ""


def test_labels_only_check_decodes_nothing(dataset):
    (dataset / "media" / "a.mp4").write_bytes(b"garbage")
    r = check_dataset(dataset, decode=False)
    assert r.failures == [] and r.video_sizes == {} and r.boxes == {"bike": 1, "bus": 2}
    assert "media not decoded" in format_report(r)


def test_missing_manifest_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        check_dataset(tmp_path)


def test_check_and_import_run_without_torch(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "import fusionedge.sdk.datacheck, fusionedge.training.data_import, fusionedge.cli.data\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_a_clip_that_breaks_off_midway_is_reported(tmp_path):
    """OpenCV gives the frames before the break without an error; the check compares with the header."""
    m = tmp_path / "media"
    m.mkdir()
    writer = cv2.VideoWriter(str(m / "cut.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for k in range(30):
        writer.write(np.random.default_rng(k).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    data = (m / "cut.avi").read_bytes()
    (m / "cut.avi").write_bytes(data[: len(data) // 2])
    write_mp4(m / "ok.mp4", 10, 64, 48, 10.0)
    write_manifest(tmp_path, [Sample("cut", m / "cut.avi", None, "x"), Sample("ok", m / "ok.mp4", None, "x")])
    r = check_dataset(tmp_path)
    assert [(f.id, f.file) for f in r.failures] == [("cut", str(m / "cut.avi"))]
    assert "of the 30 frames its header declares" in r.failures[0].error
