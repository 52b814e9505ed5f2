"""Bundle verification: what loading a bundle on a device costs (schema, sizes, SHA-256 of every file)."""

from __future__ import annotations

from fusionedge.sdk.bundle import load_bundle, sha256_file


def test_load_bundle_verified(benchmark, bench_bundle):
    """Schema check plus size and SHA-256 of every listed file (the default)."""
    bundle = benchmark(load_bundle, bench_bundle, verify=True)
    assert bundle.verified


def test_load_bundle_schema_only(benchmark, bench_bundle):
    """Schema check only (verify=False), for comparison."""
    bundle = benchmark(load_bundle, bench_bundle, verify=False)
    assert not bundle.verified


def test_sha256_model(benchmark, bench_bundle):
    """SHA-256 of model.onnx alone."""
    digest = benchmark(sha256_file, bench_bundle / "model.onnx")
    assert len(digest) == 64
