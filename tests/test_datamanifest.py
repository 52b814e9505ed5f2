"""Tests of the data-set manifest format (sdk/datamanifest.py): round trip and every error case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusionedge.sdk.datamanifest import Box, Sample, manifest_path, read_manifest, write_manifest
from fusionedge.sdk.errors import DataError


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / "media").mkdir()
    for name in ("a.mp4", "a.wav", "b.mp4", "c.mp4"):
        (tmp_path / "media" / name).write_bytes(b"x")
    return tmp_path.resolve()


def good(**over) -> dict:
    rec = {
        "id": "a",
        "video": "media/a.mp4",
        "audio": "media/a.wav",
        "event": "emergency_ahead",
        "audio_tags": ["siren", "engine"],
        "boxes": [
            {"label": "car", "box": [1, 2, 30, 40]},
            {"label": "emergency_vehicle", "box": [0, 0, 320, 192]},  # touches every edge: allowed
        ],
        "width": 320,
        "height": 192,
    }
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not ...}  # `...` drops a key


def write_lines(root: Path, *lines) -> Path:
    path = root / "manifest.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_round_trip(root):
    samples = [
        Sample("a", root / "media/a.mp4", root / "media/a.wav", "emergency_ahead", ("siren",),
               (Box("car", 1.0, 2.0, 30.5, 40.0),), 320, 192, {"camera": "front", "k": [1, 2]}),
        Sample("b", root / "media/b.mp4", None, None),
    ]
    path = root / "manifest.jsonl"
    write_manifest(path, samples)
    back = read_manifest(root, require_labels=False)  # a folder means folder/manifest.jsonl
    assert back == samples
    assert [s.meta for s in back] == [{"camera": "front", "k": [1, 2]}, {}]
    raw = [json.loads(x) for x in path.read_text().splitlines()]
    assert raw[0]["video"] == "media/a.mp4" and raw[0]["audio"] == "media/a.wav"  # relative on disk
    assert raw[0]["boxes"] == [{"label": "car", "box": [1, 2, 30.5, 40]}]
    assert raw[1]["audio"] is None and "event" not in raw[1]
    assert sorted(p.name for p in root.iterdir()) == ["manifest.jsonl", "media"]  # no temp file left


def test_defaults_absent_fields_and_blank_lines(root):
    path = write_lines(root, good(), "", {"id": "b", "video": "media/b.mp4", "event": "none"})
    a, b = read_manifest(path)
    assert a.video == root / "media" / "a.mp4" and a.video.is_absolute()
    assert a.audio_tags == ("siren", "engine") and a.boxes[0] == Box("car", 1, 2, 30, 40)
    assert (b.audio, b.audio_tags, b.boxes, b.width, b.height, b.meta) == (None, (), (), None, None, {})


def test_paths_outside_the_folder_are_allowed_if_present(root):
    sub = root / "lists"
    sub.mkdir()
    path = write_lines(sub, good(video="../media/c.mp4", audio=None))
    (s,) = read_manifest(path)
    assert s.video == root / "media" / "c.mp4" and s.audio is None


def test_unlabelled_needs_require_labels_false(root):
    path = write_lines(root, good(event=...))
    with pytest.raises(DataError, match=r"manifest\.jsonl:1: field 'event': is required"):
        read_manifest(path)
    assert read_manifest(path, require_labels=False)[0].event is None


@pytest.mark.parametrize(
    "line2, field, words",
    [
        ('{"id": "b", "video": ', None, "not valid JSON"),
        ('["b"]', None, "JSON object"),
        (good(id=...), "id", "is required"),
        (good(id=7), "id", "must be a string"),
        (good(id="a"), "id", "duplicate id 'a' (first on line 1)"),
        (good(id="b", video=...), "video", "is required"),
        (good(id="b", video=["x"]), "video", "must be a string"),
        (good(id="b", event="siren_ahead"), "event", "'siren_ahead' is not one of none, emergency_ahead"),
        (good(id="b", event=3), "event", "must be a string"),
        (good(id="b", audio_tags="siren"), "audio_tags", "must be a list"),
        (good(id="b", audio_tags=["siren", "bark"]), "audio_tags[1]", "'bark' is not one of siren"),
        (good(id="b", audio_tags=["horn", "horn"]), "audio_tags", "twice"),
        (good(id="b", width="320"), "width", "must be an integer"),
        (good(id="b", height=0), "height", "must be positive"),
        (good(id="b", boxes={"label": "car"}), "boxes", "must be a list"),
        (good(id="b", boxes=[{"label": "truck", "box": [0, 0, 1, 1]}]), "boxes[0].label",
         "'truck' is not one of car"),
        (good(id="b", boxes=[{"box": [0, 0, 1, 1]}]), "boxes[0].label", "is required"),
        (good(id="b", boxes=[{"label": "car", "box": [0, 0, 1]}]), "boxes[0].box", "[x1, y1, x2, y2]"),
        (good(id="b", boxes=[{"label": "car", "box": [5, 0, 5, 1]}]), "boxes[0].box", "x1 < x2"),
        (good(id="b", boxes=[{"label": "car", "box": [0, 9, 5, 1]}]), "boxes[0].box", "y1 < y2"),
        (good(id="b", boxes=[{"label": "car", "box": [0, 0, 5, "1"]}]), "boxes[0].box", "finite numbers"),
        (good(id="b", boxes=[{"label": "car", "box": [0, 0, 5, 1]}, {"label": "car", "box": [0, 0, 321, 5]}]),
         "boxes[1].box", "outside the image [0, 320]"),
        (good(id="b", boxes=[{"label": "car", "box": [0, -1, 5, 5]}]), "boxes[0].box",
         "outside the image [0, 192]"),
        (good(id="b", video="media/missing.mp4"), "video", "file not found"),
        (good(id="b", audio="media/missing.wav"), "audio", "file not found"),
    ],
)
def test_errors_name_file_line_and_field(root, line2, field, words):
    path = write_lines(root, good(), line2)
    with pytest.raises(DataError) as err:
        read_manifest(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:2: "), msg
    if field is not None:
        assert f"field {field!r}" in msg, msg
    assert words in msg, msg


def test_non_finite_box_is_refused(root):
    # Python's json module accepts NaN/Infinity literals; strict JSON has none: refused at parse
    path = write_lines(root, good(), '{"id": "b", "video": "media/b.mp4", "event": "none", '
                                     '"boxes": [{"label": "car", "box": [0, 0, NaN, 4]}]}')
    with pytest.raises(DataError, match=r"manifest\.jsonl:2: NaN is not a JSON number"):
        read_manifest(path)
    path = write_lines(root, good(), '{"id": "b", "video": "media/b.mp4", "event": "none", '
                                     '"boxes": [{"label": "car", "box": [0, 0, 1e999, 4]}]}')
    with pytest.raises(DataError, match=r"manifest\.jsonl:2: field 'boxes\[0\]\.box': must hold 4 finite"):
        read_manifest(path)  # an overflowing number parses as inf: the field check still refuses it


def test_line_numbers_count_blank_lines(root):
    path = write_lines(root, good(), "", good(id="c", event="nope"))
    with pytest.raises(DataError, match=r"manifest\.jsonl:3: field 'event'"):
        read_manifest(path)


def test_missing_files_pass_without_check_files(root):
    path = write_lines(root, good(video="media/none.mp4", audio="media/none.wav"))
    (s,) = read_manifest(path, check_files=False)
    assert s.video == root / "media" / "none.mp4"


def test_custom_vocabulary(root):
    path = write_lines(root, good(event="pothole", audio_tags=[], boxes=[]))
    with pytest.raises(DataError, match="'pothole' is not one of"):
        read_manifest(path)
    assert read_manifest(path, events=("pothole", "clear"))[0].event == "pothole"


def test_empty_and_missing_manifest(root):
    path = write_lines(root, "", "   ")
    with pytest.raises(DataError, match="no samples"):
        read_manifest(path)
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(root / "nope.jsonl")
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(root / "media")  # a folder without manifest.jsonl
    assert manifest_path(root) == root / "manifest.jsonl"


def test_write_refuses_duplicates_and_meta_clash(root):
    path = root / "manifest.jsonl"
    s = Sample("a", root / "media/a.mp4", None, "none")
    with pytest.raises(DataError, match="duplicate id 'a'"):
        write_manifest(path, [s, s])
    with pytest.raises(DataError, match="clash"):
        write_manifest(path, [Sample("a", root / "media/a.mp4", None, "none", meta={"event": "x"})])
    with pytest.raises(DataError, match="cannot be written as JSON"):
        write_manifest(path, [Sample("a", root / "media/a.mp4", None, "none", meta={"x": object()})])
    assert not path.exists() and sorted(p.name for p in root.iterdir()) == ["media"]


def test_write_replaces_atomically(root):
    path = root / "manifest.jsonl"
    write_manifest(path, [Sample("a", root / "media/a.mp4", None, "none")])
    write_manifest(path, [Sample("b", root / "media/b.mp4", None, "none")])
    assert [s.id for s in read_manifest(path)] == ["b"]
    assert sorted(p.name for p in root.iterdir()) == ["manifest.jsonl", "media"]


@pytest.mark.parametrize("line2, words", [
    ("[" * 100_000 + "]" * 100_000, "nested more than"),
    ('{"id": "b", "video": "media/b.mp4", "width": ' + "7" * 5000 + "}", "an integer of 5000 digits"),
], ids=["deep", "long-int"])
def test_hostile_json_line_is_a_data_error_naming_file_and_line(root, line2, words):
    path = write_lines(root, good(), line2)
    with pytest.raises(DataError) as err:
        read_manifest(path)
    assert str(err.value).startswith(f"{path}:2: ") and words in str(err.value)
