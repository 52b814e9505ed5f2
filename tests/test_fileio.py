"""The one atomic write, the one NaN->null and the bounded JSON reader (fusionedge.sdk.fileio)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fusionedge.sdk.errors import BundleError, InputError
from fusionedge.sdk.fileio import (
    copy_file_atomic,
    dumps_json,
    json_safe,
    loads_json,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("doc, says", [
    ("[" * 100_000 + "]" * 100_000, "nested more than"),
    ('{"a": ' + "1" * 5000 + "}", "integer of 5000 digits"),
    ("[NaN]", "NaN is not a JSON number"),
    ('{"a": Infinity}', "Infinity is not a JSON number"),
    ('{"a": 1', "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_hostile_documents_are_typed_errors_naming_the_document(doc, says):
    with pytest.raises(InputError, match=says) as e:
        loads_json(doc, what="manifest.json")
    assert str(e.value).startswith("manifest.json: ")


def test_limits_are_the_callers_and_so_is_the_error_type():
    deep = "[" * 10 + "]" * 10
    assert loads_json(deep) == json.loads(deep)
    with pytest.raises(BundleError, match="nested more than 5"):
        loads_json(deep, max_depth=5, error=BundleError)
    with pytest.raises(InputError, match="more than the 8 accepted"):
        loads_json('{"a": "long"}', max_bytes=8)
    assert loads_json('{"n": -12345678901234567890}') == {"n": -12345678901234567890}


def test_read_json_refuses_what_is_not_a_regular_file_and_checks_size_before_reading(tmp_path):
    with pytest.raises(InputError, match="not a regular file"):
        read_json(tmp_path)
    big = tmp_path / "big.json"
    big.write_text("[" + ",".join(["1"] * 1000) + "]")
    with pytest.raises(InputError, match="big.json: .* more than the 100 accepted"):
        read_json(big, max_bytes=100)
    assert len(read_json(big)) == 1000


def test_json_safe_turns_numpy_and_non_finite_values_into_strict_json():
    value = {"a": float("nan"), "b": (np.float32(1.5), np.int64(3)), "c": np.array([1.0, np.inf]),
             7: -math.inf}
    assert json_safe(value) == {"a": None, "b": [1.5, 3], "c": [1.0, None], "7": None}
    assert json.loads(dumps_json(value)) == {"a": None, "b": [1.5, 3], "c": [1.0, None], "7": None}
    with pytest.raises(InputError, match="cannot write as JSON"):
        dumps_json({"a": {1, 2}})


def test_a_failed_json_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"ok": 1})
    with pytest.raises(InputError, match="metrics.json"):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert _leftovers(tmp_path) == []


def test_atomic_writes_set_the_mode_and_replace_whole_files(tmp_path):
    path = tmp_path / "served.bin"
    write_bytes_atomic(path, b"old")
    write_bytes_atomic(path, b"new bytes", mode=0o600)
    assert path.read_bytes() == b"new bytes"
    assert path.stat().st_mode & 0o777 == 0o600
    assert _leftovers(tmp_path) == []


def test_copy_file_atomic_streams_a_copy_and_cleans_up_when_the_source_is_missing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(np.random.default_rng(0).bytes(3 << 20))  # several copy chunks
    out = tmp_path / "out"
    out.mkdir()
    copy_file_atomic(src, out / "copy.bin")
    assert (out / "copy.bin").read_bytes() == src.read_bytes()
    assert (out / "copy.bin").stat().st_mode & 0o777 == 0o644
    with pytest.raises(FileNotFoundError):
        copy_file_atomic(tmp_path / "missing.bin", out / "other.bin")
    assert sorted(p.name for p in out.iterdir()) == ["copy.bin"]
