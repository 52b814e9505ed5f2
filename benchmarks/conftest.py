"""pytest-benchmark suites for FusionEdge's components (``benchmarks/bench_*.py``).

They are not part of the test run (``pytest`` collects ``tests/`` only). Run them with::

    pytest benchmarks/ --benchmark-json=bench-components.json [--bench-bundle path/to/bundle]

This conftest collects the ``bench_*.py`` files (pytest's default pattern is ``test_*.py``) and
provides the bundle: ``--bench-bundle`` names one; without it an untrained ``fusion_student`` is
exported once into a temporary folder (latency does not depend on training; needs torch).
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-bundle",
        action="store",
        default=None,
        type=Path,
        help="bundle folder to benchmark (default: export an untrained fusion_student)",
    )


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def bench_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle folder the suites run."""
    given = request.config.getoption("--bench-bundle")
    if given is not None:
        return Path(given)
    pytest.importorskip("torch", reason="exporting the default bundle needs torch; pass --bench-bundle")
    from fusionedge.export import export_model
    from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS, InputGeometry
    from fusionedge.training.models import create_model

    import torch

    torch.manual_seed(0)
    model = create_model("fusion_student").eval()
    geometry = InputGeometry()
    info = {
        "model_name": "fusion_student",
        "model_config": model.config.to_dict(),
        "geometry": geometry.to_dict(),
        "labels": {"events": list(EVENTS), "audio_tags": list(AUDIO_TAGS), "objects": list(OBJECTS)},
    }
    return export_model(model, info, tmp_path_factory.mktemp("bench") / "bundle", progress=False)


@pytest.fixture(scope="session")
def bench_geometry(bench_bundle: Path):
    """The bundle's input geometry."""
    from fusionedge.sdk.bundle import load_bundle

    return load_bundle(bench_bundle).geometry
