"""What a bundle's hashes alone did not protect: the manifest itself, unlisted files, links, hostile JSON.

Every tampered bundle here passes the per-file hashes; each test names the defence that catches it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from _tamper import edit_manifest
from _toy_model import copy_bundle, shared_toy_bundle
from fusionedge.sdk import Perception
from fusionedge.sdk.bundle import load_bundle, manifest_digest, update_bundle_metrics
from fusionedge.sdk.errors import BundleError, InputError


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
