"""What a bundle's hashes alone did not protect: the manifest itself, unlisted files, links, hostile JSON.

Every tampered bundle here passes the per-file hashes; each test names the defence that catches it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from _tamper import edit_manifest, externalize, rehash
from _toy_model import copy_bundle, shared_toy_bundle
from fusionedge.cli.main import main
from fusionedge.sdk import Perception
from fusionedge.sdk.bundle import load_bundle, manifest_digest, update_bundle_metrics
from fusionedge.sdk.bundle_signature import key_id, sign_bundle
from fusionedge.sdk.errors import BundleError, InputError
from fusionedge.sdk.selftest import run_golden


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture
def copy(bundle_dir, tmp_path) -> Path:
    return copy_bundle(bundle_dir, tmp_path / "bundle")


def _swap_first_two_events(manifest: dict) -> None:
    events = manifest["labels"]["events"]
    events[0], events[1] = events[1], events[0]


# ------------------------------------------------------------------------------------------- digest


def test_digest_is_sha256_of_the_canonical_manifest_without_metrics(bundle_dir):
    bundle = load_bundle(bundle_dir)
    body = {k: v for k, v in bundle.manifest.items() if k != "metrics"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert bundle.digest == hashlib.sha256(canonical.encode()).hexdigest()
    assert bundle.digest == manifest_digest(json.loads((bundle_dir / "manifest.json").read_text()))


def test_digest_ignores_layout_and_recorded_metrics(copy, bundle_dir):
    pinned = load_bundle(bundle_dir).digest
    manifest = json.loads((copy / "manifest.json").read_text())
    reordered = dict(reversed(list(manifest.items())))
    (copy / "manifest.json").write_text(json.dumps(reordered, indent=7))
    assert load_bundle(copy, expected_digest=pinned).digest == pinned
    update_bundle_metrics(copy, {"event_accuracy": 0.75, "samples": 8})
    assert load_bundle(copy, expected_digest=pinned).manifest["metrics"]["event_accuracy"] == 0.75


@pytest.mark.parametrize("edit", [
    _swap_first_two_events,
    lambda m: m["golden"].update(atol=1.0),
    lambda m: m["golden"].update(rtol=0.5),
    lambda m: m["geometry"].update(mean=[0.0, 0.0, 0.0]),
    lambda m: m.update(version="0.1.1"),
], ids=["swapped-labels", "loosened-atol", "loosened-rtol", "other-normalization", "other-version"])
def test_an_altered_manifest_is_refused_by_its_pinned_digest(copy, bundle_dir, edit):
    pinned = load_bundle(bundle_dir).digest
    edit_manifest(copy, edit)
    load_bundle(copy)  # every file hash still matches: without the pin this goes unnoticed
    with pytest.raises(BundleError, match=r"^manifest\.json: digest mismatch \(expected [0-9a-f]{12}…, got "):
        load_bundle(copy, expected_digest=pinned)
    with pytest.raises(BundleError, match="digest mismatch"):
        Perception.load(copy, expected_digest=pinned)


def test_digest_pin_formats(bundle_dir):
    pinned = load_bundle(bundle_dir).digest
    assert load_bundle(bundle_dir, expected_digest="sha256:" + pinned.upper()).digest == pinned
    for bad in ("abc", "sha256:" + "g" * 64, 42):
        with pytest.raises(InputError, match="expected_digest must be 64 hex digits"):
            load_bundle(bundle_dir, expected_digest=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- signature


def _keypair():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, pub


def test_signed_bundle_verifies_with_the_trusted_key_only(copy):
    pem, pub = _keypair()
    _, other = _keypair()
    sig = sign_bundle(copy, pem)
    assert sig == copy / "manifest.sig"
    record = json.loads(sig.read_text())
    assert record["digest"] == load_bundle(copy).digest and record["algorithm"] == "ed25519"
    assert load_bundle(copy, public_key=pub).signer == record["keyid"] == key_id(pub)
    assert load_bundle(copy).signer is None  # the signature is optional: no key, no check
    with Perception.load(copy, public_key=pub) as p:
        assert p.bundle.signer == record["keyid"]
    with pytest.raises(BundleError, match=r"^manifest\.sig: not signed by a trusted key"):
        load_bundle(copy, public_key=other)
    assert load_bundle(copy, public_key=[other, pub]).verified  # any one of several trusted keys
    update_bundle_metrics(copy, {"event_accuracy": 0.5})  # metrics are outside the signed digest
    assert load_bundle(copy, public_key=pub).manifest["metrics"] == {"event_accuracy": 0.5}


def test_signature_catches_a_manifest_altered_after_signing(copy):
    pem, pub = _keypair()
    sign_bundle(copy, pem)
    edit_manifest(copy, lambda m: m["golden"].update(atol=1.0))
    with pytest.raises(BundleError, match=r"^manifest\.sig: signs digest [0-9a-f]{12}…, the manifest has "):
        load_bundle(copy, public_key=pub)


def test_forged_or_missing_signature_is_refused(copy):
    pem, pub = _keypair()
    with pytest.raises(BundleError, match=r"^manifest\.sig: missing; the bundle is not signed"):
        load_bundle(copy, public_key=pub)
    sign_bundle(copy, pem)
    record = json.loads((copy / "manifest.sig").read_text())
    record["signature"] = ("00" if record["signature"][:2] != "00" else "11") + record["signature"][2:]
    (copy / "manifest.sig").write_text(json.dumps(record))
    with pytest.raises(BundleError, match=r"^manifest\.sig: the signature does not verify"):
        load_bundle(copy, public_key=pub)
    (copy / "manifest.sig").write_text("[" * 100_000)
    with pytest.raises(BundleError, match=r"^manifest\.sig: "):
        load_bundle(copy, public_key=pub)


def test_bad_keys_are_the_callers_error(copy):
    with pytest.raises(InputError, match="not an ed25519"):
        load_bundle(copy, public_key=b"not a key")
    with pytest.raises(InputError, match="not an ed25519"):
        sign_bundle(copy, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert not (copy / "manifest.sig").exists()


# --------------------------------------------------------------------------- unlisted files, links


def test_unlisted_external_data_is_refused(copy, tmp_path):
    """model.onnx reads its weights from a side file the manifest does not list: refused at load."""
    externalize(copy / "model.onnx", copy / "model.onnx", "weights.bin")
    rehash(copy, "model.onnx")  # the attacker re-hashes what the manifest lists
    with pytest.raises(BundleError, match=r"^weights\.bin: in the bundle folder but not listed in manifest\.json"):
        load_bundle(copy)
    with pytest.raises(BundleError, match=r"^weights\.bin: .*not listed"):
        load_bundle(copy, verify=False)  # the folder check does not depend on hashing
    rehash(copy, "weights.bin")  # listed and hashed: a valid bundle whose model uses external data
    assert run_golden(copy).max_abs_err < 1e-4
    data = bytearray((copy / "weights.bin").read_bytes())
    data[0] ^= 0x40
    (copy / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"^weights\.bin: sha256 mismatch"):
        load_bundle(copy)


@pytest.mark.parametrize("rel", ["notes.txt", "sub/extra.onnx", ".hidden", "manifest.json.bak"])
def test_any_unlisted_file_is_refused(copy, rel):
    (copy / rel).parent.mkdir(parents=True, exist_ok=True)
    (copy / rel).write_bytes(b"x")
    with pytest.raises(BundleError, match=rf"^{rel.replace('.', chr(92) + '.')}: in the bundle folder but not listed"):
        load_bundle(copy)


def test_engine_cache_and_runtime_temp_files_are_allowed(copy):
    (copy / "engines").mkdir()
    (copy / "engines" / "0123abcd.plan").write_bytes(b"plan")
    (copy / "engines" / ".0123abcd.plan.x1y2.tmp").write_bytes(b"partial")
    (copy / ".manifest.json.ab12cd.tmp").write_text("{")  # update_bundle_metrics interrupted by a power cut
    assert load_bundle(copy).verified
    update_bundle_metrics(copy, {"samples": 1})
    assert load_bundle(copy).manifest["metrics"] == {"samples": 1}


@pytest.mark.parametrize("rel", ["golden.npz", "manifest.json", "engines/a.plan"])
def test_a_link_to_a_file_is_refused(copy, tmp_path, rel):
    (copy / "engines").mkdir()
    (copy / "engines" / "a.plan").write_bytes(b"plan")
    outside = tmp_path / "outside"
    outside.write_bytes((copy / rel).read_bytes())  # same bytes: every hash would match
    (copy / rel).unlink()
    (copy / rel).symlink_to(outside)
    with pytest.raises(BundleError, match=rf"^{rel.replace('.', chr(92) + '.')}: a symbolic link"):
        load_bundle(copy)


def test_a_link_to_a_folder_is_refused_but_a_linked_bundle_path_is_fine(copy, tmp_path):
    (tmp_path / "plans").mkdir()
    (copy / "engines").symlink_to(tmp_path / "plans")
    with pytest.raises(BundleError, match=r"^engines: a symbolic link"):
        load_bundle(copy)
    (copy / "engines").unlink()
    current = tmp_path / "current"
    current.symlink_to(copy)  # how a device points at its running bundle
    assert load_bundle(current).verified


# ----------------------------------------------------------------------------------- hostile JSON


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, r"nested more than \d+ levels deep"),
    ('{"schema_version": ' + "9" * 5000 + "}", r"an integer of 5000 digits"),
    ('{"schema_version": NaN}', r"NaN is not a JSON number"),
], ids=["deep", "long-int", "nan"])
def test_hostile_bundle_manifest_is_a_typed_error(copy, capsys, text, message):
    (copy / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match=r"^manifest\.json: " + message):
        load_bundle(copy)
    with pytest.raises(BundleError, match=r"^manifest\.json: " + message):
        update_bundle_metrics(copy, {"samples": 1})
    assert main(["eval", "--bundle", str(copy), "--data", str(copy)]) == 2
    assert "manifest.json: " in capsys.readouterr().err


def test_a_fifo_in_the_bundle_is_refused(copy):
    import os

    os.mkfifo(copy / "golden.pipe")  # opening it to hash it would block forever
    with pytest.raises(BundleError, match=r"^golden\.pipe: not a regular file or folder"):
        load_bundle(copy)


def test_loading_without_a_key_does_not_import_cryptography(bundle_dir):
    """The device runtime needs `cryptography` only when it checks a signature."""
    import subprocess
    import sys

    code = ("import sys; from fusionedge.sdk import Perception\n"
            f"p = Perception.load({str(bundle_dir)!r}, expected_digest={load_bundle(bundle_dir).digest!r})\n"
            "p.self_test(); p.close()\n"
            "print(sorted(m for m in ('cryptography', 'securesystemslib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
