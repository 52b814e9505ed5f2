"""Bundle archives: deterministic packing, and unpacking that refuses hostile archives and leaves nothing."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from _toy_model import copy_bundle, shared_toy_bundle
from fusionedge.sdk.bundle import load_bundle, sha256_file
from fusionedge.sdk.bundle_archive import pack_bundle, unpack_bundle
from fusionedge.sdk.errors import BundleError, InputError, VerificationError


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def archive(bundle_dir, tmp_path_factory) -> Path:
    return pack_bundle(bundle_dir, tmp_path_factory.mktemp("archive") / "bundle.tar")


def _entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def _hostile(tmp_path: Path, bundle_dir: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A tar with the real bundle files followed by ``extra`` members (crafted headers)."""
    out = tmp_path / "hostile.tar"
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("golden.npz", "manifest.json", "model.onnx"):
            tar.add(bundle_dir / name, arcname=name)
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", **fields) -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for k, v in fields.items():
        setattr(info, k, v)
    return info, (data if kind == tarfile.REGTYPE else None)


# -------------------------------------------------------------------------------------------- packing


def test_pack_is_deterministic_across_copies_times_and_modes(bundle_dir, archive, tmp_path):
    copy = copy_bundle(bundle_dir, tmp_path / "copy")
    for i, f in enumerate(sorted(copy.iterdir())):
        os.utime(f, (1_000_000 + i, 2_000_000 + i))
        f.chmod(0o600)
    again = pack_bundle(copy, tmp_path / "again.tar")
    assert sha256_file(again) == sha256_file(archive)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) == ["golden.npz", "manifest.json", "model.onnx"]
    assert all((m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "") for m in members)
    assert all(m.mode == 0o644 and m.isreg() and not m.name.startswith("/") for m in members)


def test_pack_includes_engine_folder_sorted(bundle_dir, tmp_path):
    copy = copy_bundle(bundle_dir, tmp_path / "copy")
    (copy / "engines").mkdir()
    (copy / "engines" / "b.plan").write_bytes(b"plan-b")
    (copy / "engines" / "a.plan").write_bytes(b"plan-a")
    out = pack_bundle(copy, tmp_path / "b.tar")
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["engines", "engines/a.plan", "engines/b.plan", "golden.npz",
                                  "manifest.json", "model.onnx"]
        assert tar.getmember("engines").isdir() and tar.getmember("engines").mode == 0o755
    dest = unpack_bundle(out, tmp_path / "x")
    assert (dest / "engines" / "a.plan").read_bytes() == b"plan-a"


def test_pack_refuses_a_bundle_that_does_not_verify(bundle_dir, tmp_path):
    copy = copy_bundle(bundle_dir, tmp_path / "copy")
    with open(copy / "model.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    with pytest.raises(BundleError, match="model.onnx: sha256 mismatch"):
        pack_bundle(copy, tmp_path / "b.tar")
    assert not (tmp_path / "b.tar").exists()


def test_pack_refuses_links_and_output_inside_the_bundle(bundle_dir, tmp_path):
    copy = copy_bundle(bundle_dir, tmp_path / "copy")
    with pytest.raises(InputError, match="inside the bundle folder"):
        pack_bundle(copy, copy / "self.tar")
    (copy / "engines").mkdir()
    (copy / "engines" / "evil.plan").symlink_to("/etc/passwd")
    with pytest.raises(InputError, match="engines/evil.plan is a symbolic link"):
        pack_bundle(copy, tmp_path / "b.tar")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


# ------------------------------------------------------------------------------------------ unpacking


def test_unpack_round_trip_verifies(bundle_dir, archive, tmp_path):
    dest = unpack_bundle(archive, tmp_path / "store" / "abc")
    assert dest == tmp_path / "store" / "abc"
    b = load_bundle(dest)
    assert b.verified and b.model_id == load_bundle(bundle_dir).model_id
    for name in ("model.onnx", "golden.npz", "manifest.json"):
        assert sha256_file(dest / name) == sha256_file(bundle_dir / name)
    assert _entries(tmp_path / "store") == ["abc"], "no temporary folder is left behind"


def test_unpack_refuses_an_existing_destination(archive, tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="already exists"):
        unpack_bundle(archive, tmp_path / "d")
    assert _entries(tmp_path) == ["d"] and _entries(tmp_path / "d") == []


@pytest.mark.parametrize(
    "extra, message",
    [
        ([_member("/etc/evil")], "absolute path"),
        ([_member("../evil")], "climbs out of the bundle"),
        ([_member("engines/../../evil")], "climbs out of the bundle"),
        ([_member("engines/link", tarfile.SYMTYPE, linkname="/etc/passwd")], "is a symbolic link"),
        ([_member("engines/hard", tarfile.LNKTYPE, linkname="model.onnx")], "is a hard link"),
        ([_member("engines/tty", tarfile.CHRTYPE, devmajor=5, devminor=0)], "is a character device"),
        ([_member("engines/disk", tarfile.BLKTYPE, devmajor=8, devminor=0)], "is a block device"),
        ([_member("engines/fifo", tarfile.FIFOTYPE)], "is a FIFO"),
        ([_member("model.onnx", data=b"replaced")], "appears twice"),
        ([_member("a\\..\\b")], "invalid name"),
    ],
    ids=["absolute", "dotdot", "nested-dotdot", "symlink", "hardlink", "chardev", "blockdev", "fifo",
         "duplicate", "backslash"],
)
def test_unpack_refuses_hostile_entries(bundle_dir, tmp_path, extra, message):
    bad = _hostile(tmp_path, bundle_dir, extra)
    with pytest.raises(VerificationError, match=message):
        unpack_bundle(bad, tmp_path / "out" / "bundle")
    assert _entries(tmp_path / "out") == [], "nothing extracted, no temporary folder left"
    assert not (tmp_path.parent / "evil").exists() and not Path("/etc/evil").exists()


def test_unpack_enforces_size_and_count_limits(bundle_dir, archive, tmp_path):
    total = sum(f.stat().st_size for f in bundle_dir.iterdir())
    with pytest.raises(VerificationError, match=f"more than {total - 1} bytes"):
        unpack_bundle(archive, tmp_path / "a", max_bytes=total - 1)
    with pytest.raises(VerificationError, match="more than 2 entries"):
        unpack_bundle(archive, tmp_path / "b", max_files=2)
    assert _entries(tmp_path) == []
    assert unpack_bundle(archive, tmp_path / "c", max_bytes=total, max_files=3).is_dir()


def test_unpack_refuses_garbage_compressed_and_manifestless_archives(bundle_dir, tmp_path):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(4096))
    gz = tmp_path / "bundle.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        tar.add(bundle_dir / "manifest.json", arcname="manifest.json")
    nomanifest = tmp_path / "nomanifest.tar"
    with tarfile.open(nomanifest, "w") as tar:
        tar.add(bundle_dir / "model.onnx", arcname="model.onnx")
    for bad, message in ((garbage, "not an uncompressed tar"), (gz, "not an uncompressed tar"),
                         (nomanifest, "no top-level manifest.json")):
        with pytest.raises(VerificationError, match=message):
            unpack_bundle(bad, tmp_path / "out" / "x")
        assert _entries(tmp_path / "out") == []


def test_unpack_refuses_a_tampered_file_inside_a_well_formed_archive(bundle_dir, tmp_path):
    copy = copy_bundle(bundle_dir, tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text())
    data = bytearray((copy / "golden.npz").read_bytes())
    data[-10] ^= 0xFF
    out = tmp_path / "t.tar"
    with tarfile.open(out, "w") as tar:  # hand-packed: pack_bundle would refuse the altered bundle
        for name in ("golden.npz", "manifest.json", "model.onnx"):
            payload = bytes(data) if name == "golden.npz" else (copy / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(VerificationError, match="golden.npz: sha256 mismatch") as exc:
        unpack_bundle(out, tmp_path / "out" / "x")
    assert isinstance(exc.value.__cause__, BundleError)
    assert manifest["files"]["golden.npz"]["size"] == len(data)
    assert _entries(tmp_path / "out") == []


def test_unpack_rejects_bad_limits(archive, tmp_path):
    for kw in ({"max_bytes": 0}, {"max_files": -1}, {"max_bytes": True}):
        with pytest.raises(InputError, match="must be a positive integer"):
            unpack_bundle(archive, tmp_path / "x", **kw)



def test_unpack_refuses_a_file_the_manifest_does_not_list(bundle_dir, tmp_path):
    hostile = _hostile(tmp_path, bundle_dir, [_member("weights.bin", data=b"\x00" * 64)])
    with pytest.raises(VerificationError, match=r"does not verify: weights\.bin: in the bundle folder but not "
                                                r"listed in manifest\.json"):
        unpack_bundle(hostile, tmp_path / "store" / "x")
    assert _entries(tmp_path / "store") == []  # nothing left behind
