"""The container images: the CPU image builds and its runtime loads (where a Docker engine works), and
both Dockerfiles stay in step with pyproject.toml (on every machine)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0).lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _copied(dockerfile: Path) -> set[str]:
    """Source paths of the COPY lines that read the build context."""
    out = set()
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            out.update(p.rstrip("/") for p in parts[1:-1])
    return out


def _pip_requirements(dockerfile: Path) -> list[str]:
    """The quoted requirements of the Dockerfile's pip install lines."""
    text = dockerfile.read_text().replace("\\\n", " ")
    return [req for line in text.splitlines() if "pip install" in line
            for req in re.findall(r'"([^"]*)"', line) if "$" not in req]


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.jetson"])
def test_each_image_copies_every_folder_the_wheel_is_built_from(name):
    packaged = set(_pyproject()["tool"]["scikit-build"]["wheel"]["packages"].values())
    needed = packaged | {"native", "CMakeLists.txt", "pyproject.toml", "README.md"}
    missing = needed - _copied(DOCKER / name)
    assert not missing, f"{name} does not copy {sorted(missing)} into the build"


def test_the_jetson_image_installs_every_runtime_dependency_but_opencv():
    text = (DOCKER / "Dockerfile.jetson").read_text()
    runtime = {_name(r) for r in _pyproject()["project"]["dependencies"]}
    installed = {_name(r) for r in _pip_requirements(DOCKER / "Dockerfile.jetson")}
    installed |= {"onnxruntime"} if "onnxruntime-gpu" in installed else set()
    assert runtime - {"opencv-python-headless"} <= installed, runtime - installed
    assert not any(n.startswith("opencv") for n in installed), "a pip OpenCV would hide the system one"
    assert "python3-opencv" in text and "--no-deps /wheels/fusionedge-" in text
    assert "l4t-jetpack:r36.4.0" in text  # the JetPack the docs name
    assert "r36.4.0" in (ROOT / "docs" / "CONTAINERS.md").read_text()


def _docker_works() -> str | None:
    """None when a Docker engine answers here, else why not."""
    if shutil.which("docker") is None:
        return "no docker client on this machine"
    proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                          timeout=30, check=False)
    if proc.returncode != 0:
        return f"no Docker engine answers: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


@pytest.mark.slow
def test_the_cpu_image_builds_and_its_runtime_loads():
    why = _docker_works()
    if why is not None:
        pytest.skip(why)
    tag = "fusionedge-test:cpu"
    build = subprocess.run(["docker", "build", "-f", str(DOCKER / "Dockerfile.cpu"), "-t", tag, str(ROOT)],
                           capture_output=True, text=True, timeout=3600, check=False)
    assert build.returncode == 0, build.stderr[-4000:]
    try:
        run = subprocess.run(["docker", "run", "--rm", tag, "doctor", "--json"], capture_output=True, text=True,
                             timeout=300, check=False)
        assert run.returncode == 0, run.stderr
        checks = json.loads(run.stdout)["checks"]
        for name in ("onnxruntime", "opencv", "ffmpeg", "native", "runtime", "fleet", "telemetry"):
            assert checks[name]["ok"], (name, checks[name])
        assert not checks["train"]["ok"], "the runtime image must not hold torch"
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120, check=False)
