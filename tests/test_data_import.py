"""``fusionedge data import``: COCO, MOT, CSV and class folders → a manifest the project's reader accepts.

Every source is made here (OpenCV-written images and mp4s, wave-module WAVs, COCO/MOT/CSV text), then
imported, and the manifest is compared with the source: samples, boxes per class, tags, and the media
decoded back. Refused rows go through the real command: one line naming file and line (or COCO id),
exit status 2, nothing written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from fusionedge.cli.main import main
from fusionedge.sdk.datamanifest import read_manifest
from fusionedge.sdk.errors import DataError, MediaError
from fusionedge.sdk.media import read_audio, read_video
from fusionedge.training.data_import import import_dataset


def write_image(path: Path, w: int, h: int, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), value, np.uint8)
    cv2.rectangle(img, (2, 2), (w // 2, h // 2), (255, 0, 0), -1)
    assert cv2.imwrite(str(path), img)


def write_mp4(path: Path, frames: int, w: int = 64, h: int = 48, fps: float = 10.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for k in range(frames):
        writer.write(np.full((h, w, 3), (k * 20) % 256, np.uint8))
    writer.release()


def write_wav(path: Path, seconds: float, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def read_own(out: Path):
    """The manifest read back with the project's reader and the data's own vocabularies."""
    return read_manifest(out, require_labels=False, events=None, audio_tags=None, objects=None)


def cli(*argv) -> subprocess.CompletedProcess:
    """The installed command, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "fusionedge", *map(str, argv)],
                          check=False, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------------- COCO


def coco_stills(root: Path) -> Path:
    write_image(root / "img" / "a.png", 80, 60)
    write_image(root / "img" / "b.png", 80, 60)
    write_image(root / "img" / "c.png", 40, 30)
    doc = {
        "images": [{"id": 1, "file_name": "img/a.png", "width": 80, "height": 60},
                   {"id": 2, "file_name": "img/b.png", "width": 80, "height": 60},
                   {"id": 3, "file_name": "img/c.png", "width": 40, "height": 30}],
        "categories": [{"id": 1, "name": "car"}, {"id": 7, "name": "person"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": [70, 50, 30, 30], "iscrowd": 0},  # cut at 80x60
            {"id": 12, "image_id": 2, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 13, "image_id": 2, "category_id": 1, "bbox": [0, 0, 80, 60], "iscrowd": 1},  # ignore region
        ],
    }
    (root / "coco.json").write_text(json.dumps(doc))
    return root / "coco.json"


def test_coco_stills_round_trip(tmp_path):
    src = coco_stills(tmp_path / "src")
    result = import_dataset("coco", src, tmp_path / "out", progress=False, fps=10.0, still_seconds=0.5)
    samples = read_own(tmp_path / "out")
    assert result.samples == len(samples) == 3
    assert result.boxes == {"car": 1, "person": 2}  # the crowd region is left out
    by_source = {s.meta["source"]: s for s in samples}
    a = by_source["img/a.png"]
    assert (a.width, a.height) == (80, 60)
    assert sorted((b.label, b.x1, b.y1, b.x2, b.y2) for b in a.boxes) == [
        ("car", 10, 5, 30, 15), ("person", 70, 50, 80, 60)]
    assert by_source["img/c.png"].boxes == ()
    clip = read_video(a.video)
    assert clip.frames.shape[0] == 5 and clip.size == (80, 60)


def test_coco_vid_windows_take_the_last_frames_boxes(tmp_path):
    root = tmp_path / "src"
    images, anns = [], []
    for k in range(1, 7):
        write_image(root / "v" / f"{k:03d}.png", 64, 48, value=20 * k)
        images.append({"id": 100 + k, "file_name": f"v/{k:03d}.png", "width": 64, "height": 48,
                       "video_id": 5, "frame_id": k})
        anns.append({"id": k, "image_id": 100 + k, "category_id": 1, "bbox": [k, k, 10, 10]})
    doc = {"videos": [{"id": 5, "name": "drive"}], "images": images, "annotations": anns,
           "categories": [{"id": 1, "name": "bus"}]}
    (root / "vid.json").write_text(json.dumps(doc))
    import_dataset("coco", root / "vid.json", tmp_path / "out", progress=False, clip_frames=3)
    samples = read_own(tmp_path / "out")
    assert [s.id for s in samples] == ["drive-3", "drive-6"]
    assert [(s.boxes[0].x1, s.boxes[0].x2) for s in samples] == [(3, 13), (6, 16)]
    assert read_video(samples[1].video).frames.shape[0] == 3


def test_coco_annotation_pointing_nowhere_is_refused_by_id(tmp_path):
    src = coco_stills(tmp_path / "src")
    doc = json.loads(src.read_text())
    doc["annotations"].append({"id": 77, "image_id": 999, "category_id": 1, "bbox": [1, 1, 2, 2]})
    src.write_text(json.dumps(doc))
    out = tmp_path / "out"
    r = cli("data", "import", "--format", "coco", src, "--out", out)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{src}: annotation id 77: image_id 999 is not in 'images'" in lines[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging folder left


def test_skip_invalid_lists_refused_rows_in_the_summary(tmp_path, capsys):
    src = coco_stills(tmp_path / "src")
    doc = json.loads(src.read_text())
    doc["annotations"].append({"id": 77, "image_id": 999, "category_id": 1, "bbox": [1, 1, 2, 2]})
    src.write_text(json.dumps(doc))
    code = main(["data", "import", "--format", "coco", str(src), "--out", str(tmp_path / "out"),
                 "--skip-invalid", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["samples"] == 3 and summary["boxes"] == {"car": 1, "person": 2}
    assert len(summary["refused"]) == 1 and "annotation id 77" in summary["refused"][0]


def test_an_image_that_does_not_decode_leaves_nothing_behind(tmp_path):
    src = coco_stills(tmp_path / "src")
    (tmp_path / "src" / "img" / "b.png").write_bytes(b"not a png")
    with pytest.raises(MediaError, match="b.png"):
        import_dataset("coco", src, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_non_empty_out_is_kept_without_overwrite(tmp_path):
    src = coco_stills(tmp_path / "src")
    out = tmp_path / "out"
    import_dataset("coco", src, out, progress=False)
    before = (out / "manifest.jsonl").read_bytes()
    r = cli("data", "import", "--format", "coco", src, "--out", out)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert (out / "manifest.jsonl").read_bytes() == before
    import_dataset("coco", src, out, progress=False, overwrite=True, still_seconds=0.2)
    assert len(read_own(out)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


# -------------------------------------------------------------------------------------------- MOT


GT = """\
1,1,5,5,10,10,1,1,1.0
4,1,6,6,10,10,1,1,1.0
4,2,50,40,30,30,1,3,0.5
4,3,0,0,8,8,0,1,1.0
7,1,7,7,10,10,1,1,1.0
10,2,20,20,10,10,1,3,1.0
10,1,8,8,10,10,1,1,1.0
"""


def mot_sequence(root: Path, frames: int = 10) -> Path:
    seq = root / "MOT-01"
    for k in range(1, frames + 1):
        write_image(seq / "img1" / f"{k:06d}.jpg", 64, 48, value=10 * k)
    (seq / "gt").mkdir(parents=True)
    (seq / "gt" / "gt.txt").write_text(GT)
    (seq / "seqinfo.ini").write_text("[Sequence]\nname=MOT-01\nframeRate=5\nimWidth=64\nimHeight=48\n")
    return seq


def test_mot_windows_from_frames_round_trip(tmp_path):
    seq = mot_sequence(tmp_path)
    result = import_dataset("mot", seq, tmp_path / "out", progress=False, clip_frames=4, stride=3)
    samples = read_own(tmp_path / "out")
    assert [s.id for s in samples] == ["MOT-01-000004", "MOT-01-000007", "MOT-01-000010"]
    # frame 4: two boxes (the conf-0 line is an ignore region), the car cut to the 64x48 frame
    assert sorted((b.label, b.x1, b.y1, b.x2, b.y2) for b in samples[0].boxes) == [
        ("car", 50, 40, 64, 48), ("pedestrian", 6, 6, 16, 16)]
    source = Counter(b.label for s in samples for b in s.boxes)
    assert result.boxes == dict(source) == {"car": 2, "pedestrian": 3}
    clip = read_video(samples[2].video)
    assert clip.frames.shape[0] == 4 and clip.fps == pytest.approx(5.0)
    # the window's last frame is frame 10 of the sequence (grey level 100 where the rectangle is not)
    assert abs(int(clip.frames[-1, 40, 60, 1]) - 100) <= 4


def test_mot_windows_from_a_video(tmp_path):
    seq = tmp_path / "MOT-02"
    (seq / "gt").mkdir(parents=True)
    (seq / "gt" / "gt.txt").write_text(GT)
    write_mp4(tmp_path / "seq.mp4", 10)
    import_dataset("mot", seq, tmp_path / "out", progress=False, video=tmp_path / "seq.mp4",
                   clip_frames=3, stride=3, fps=10.0)
    samples = read_own(tmp_path / "out")
    assert [s.id for s in samples] == ["MOT-02-000003", "MOT-02-000006", "MOT-02-000009"]
    assert [len(s.boxes) for s in samples] == [0, 0, 0]  # no annotated frame is a window's last
    clip = read_video(samples[2].video)
    assert clip.frames.shape[0] == 3
    assert abs(int(clip.frames[-1, 10, 10, 0]) - 160) <= 6  # frame 9 of the source (index 8 * 20)


def test_mot_line_with_five_fields_is_refused_by_line(tmp_path):
    seq = mot_sequence(tmp_path)
    (seq / "gt" / "gt.txt").write_text(GT + "9,1,5,5,10\n")
    out = tmp_path / "out"
    r = cli("data", "import", "--format", "mot", seq, "--out", out)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{seq / 'gt' / 'gt.txt'}:8: 5 fields, expected 6 to 10" in lines[0]
    assert not out.exists()


# -------------------------------------------------------------------------------------------- CSV


def test_esc_style_csv_round_trip(tmp_path):
    audio = tmp_path / "ESC" / "audio"
    for name, sec in (("1-dog.wav", 1.0), ("1-rain.wav", 0.5), ("2-dog.wav", 0.8)):
        write_wav(audio / name, sec)
    csv_path = tmp_path / "ESC" / "meta" / "esc.csv"
    csv_path.parent.mkdir(parents=True)
    csv_path.write_text("filename,fold,target,category\n1-dog.wav,1,0,dog\n1-rain.wav,1,10,rain\n"
                        "2-dog.wav,2,0,dog\n")
    result = import_dataset("csv", csv_path, tmp_path / "out", progress=False, media_dir=audio)
    samples = read_own(tmp_path / "out")
    assert result.audio_tags == {"dog": 2, "rain": 1}
    assert Counter(t for s in samples for t in s.audio_tags) == Counter(result.audio_tags)
    rain = next(s for s in samples if s.meta["source"] == "1-rain.wav")
    assert rain.meta["fold"] == "1" and rain.event is None
    pcm, rate = read_audio(rain.audio)
    assert rate == 16000 and pcm.shape[0] == 8000
    clip = read_video(rain.video)  # black, as long as the audio
    assert clip.seconds == pytest.approx(0.5) and int(clip.frames.max()) <= 2


def test_audioset_style_csv_cuts_windows_and_splits_labels(tmp_path):
    write_wav(tmp_path / "abc.wav", 3.0)
    write_wav(tmp_path / "xyz.wav", 2.0)
    (tmp_path / "seg.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        'abc, 0.500, 2.000, "/m/siren,/m/engine"\n'
        'xyz, 0.000, 1.000, "/m/engine"\n')
    result = import_dataset("csv", tmp_path / "seg.csv", tmp_path / "out", progress=False)
    samples = {s.id: s for s in read_own(tmp_path / "out")}
    assert result.audio_tags == {"/m/engine": 2, "/m/siren": 1}
    assert samples["abc-0.5"].audio_tags == ("/m/siren", "/m/engine")
    pcm, _ = read_audio(samples["abc-0.5"].audio)
    assert pcm.shape[0] == 24000  # 1.5 s at 16 kHz
    assert read_video(samples["abc-0.5"].video).seconds == pytest.approx(1.5)


def test_csv_row_naming_a_missing_file_is_refused_by_line(tmp_path):
    write_wav(tmp_path / "a.wav", 0.5)
    (tmp_path / "tags.csv").write_text("filename,label\na.wav,dog\nmissing.wav,cat\n")
    out = tmp_path / "out"
    r = cli("data", "import", "--format", "csv", tmp_path / "tags.csv", "--out", out)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{tmp_path / 'tags.csv'}:3: file not found: {tmp_path / 'missing.wav'}" in lines[0]
    assert not out.exists()


# ---------------------------------------------------------------------------------------- folders


def test_folders_round_trip(tmp_path):
    src = tmp_path / "clips"
    write_mp4(src / "ambulance" / "a1.mp4", 6)
    write_mp4(src / "ambulance" / "a2.mp4", 6)
    write_wav(src / "ambulance" / "a2.wav", 0.6)  # same name: one sample with both
    write_wav(src / "quiet" / "q1.wav", 0.4)  # audio only: a black video
    (src / ".DS_Store").write_bytes(b"")
    result = import_dataset("folders", src, tmp_path / "out", progress=False)
    samples = {s.id: s for s in read_own(tmp_path / "out")}
    assert result.events == {"ambulance": 2, "quiet": 1}
    assert set(samples) == {"ambulance-a1", "ambulance-a2", "quiet-q1"}
    assert samples["ambulance-a1"].audio is None
    assert samples["ambulance-a2"].audio is not None
    assert read_video(samples["ambulance-a2"].video).frames.shape[0] == 6
    assert read_video(samples["quiet-q1"].video).seconds == pytest.approx(0.4)


def test_folders_refuse_stray_files(tmp_path):
    src = tmp_path / "clips"
    write_mp4(src / "car" / "c.mp4", 3)
    (src / "car" / "notes.txt").write_text("x")
    (src / "loose.mp4").write_bytes(b"")
    with pytest.raises(DataError) as e:
        import_dataset("folders", src, tmp_path / "out", progress=False)
    assert "2 row(s) refused" in str(e.value)
    assert "notes.txt: neither a video nor a WAV file" in str(e.value)
    assert "loose.mp4: not in a class folder" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_default_manifest_reader_still_refuses_labels_outside_the_spec(tmp_path):
    src = tmp_path / "clips"
    write_mp4(src / "ambulance" / "a1.mp4", 3)
    import_dataset("folders", src, tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="'ambulance' is not one of"):
        read_manifest(tmp_path / "out")


def test_a_relative_out_folder_gives_a_valid_manifest(tmp_path, monkeypatch):
    src = coco_stills(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    result = import_dataset("coco", src, "out", progress=False)
    samples = read_own(tmp_path / "out")
    assert len(samples) == result.samples == 3
    assert all(s.video.parent == tmp_path / "out" / "media" for s in samples)


def test_csv_labels_as_event_through_the_command(tmp_path, capsys):
    for name in ("a.wav", "b.wav"):
        write_wav(tmp_path / name, 0.3)
    (tmp_path / "t.csv").write_text("file,class\na.wav,dog\nb.wav,\"dog,cat\"\n")
    code = main(["data", "import", "--format", "csv", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"),
                 "--labels-as", "event", "--json"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{tmp_path / 't.csv'}:3: 2 labels, an event takes one" in err
    (tmp_path / "t.csv").write_text("file,class\na.wav,dog\nb.wav,cat\n")
    assert main(["data", "import", "--format", "csv", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"),
                 "--labels-as", "event", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events"] == {"cat": 1, "dog": 1} and summary["audio_tags"] == {}
    assert {s.event for s in read_own(tmp_path / "out")} == {"cat", "dog"}


def test_a_json_file_that_is_not_coco_is_one_data_error(tmp_path):
    (tmp_path / "x.json").write_text('{"images": 3}')
    with pytest.raises(DataError, match="not a COCO detection file"):
        import_dataset("coco", tmp_path / "x.json", tmp_path / "out", progress=False)
    (tmp_path / "x.json").write_text("[" * 100 + "]" * 100)
    with pytest.raises(DataError, match="nested more than"):
        import_dataset("coco", tmp_path / "x.json", tmp_path / "out", progress=False)
