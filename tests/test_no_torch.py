"""The device runtime runs without torch: ``fusionedge.sdk`` never imports it, directly or lazily."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _toy_model import shared_toy_bundle

SDK = Path(__file__).resolve().parents[1] / "sdk"
FORBIDDEN = ("torch", "fusionedge.training", "fusionedge.export")


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    import numpy as np
    import fusionedge.sdk as sdk
    bare = sorted(m for m in ("onnxruntime", "cv2") if m in sys.modules)
    p = sdk.Perception.load(sys.argv[1])
    rng = np.random.default_rng(0)
    r = p.infer(video=rng.integers(0, 256, (6, 120, 200, 3), dtype=np.uint8),
                audio=rng.uniform(-0.3, 0.3, 12000), sample_rate=22050)
    err = p.self_test()
    p.close()
    print(json.dumps({"result": r.to_dict(), "self_test": err, "bare_import_loaded": bare,
                      "torch": sys.modules.get("torch", "absent") is not None,
                      "forbidden": sorted(m for m in sys.modules
                                          if m.startswith(("fusionedge.training", "fusionedge.export")))}))
    """
)


def test_sdk_runs_a_bundle_with_torch_blocked(bundle_dir):
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(bundle_dir)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["torch"] is False, "torch was imported"
    assert report["forbidden"] == []
    assert report["bare_import_loaded"] == [], "import fusionedge.sdk must stay light (lazy heavy imports)"
    result = report["result"]
    assert result["backend"] == "onnxruntime" and result["missing"] == []
    assert result["event"] in result["scores"] and abs(sum(result["scores"].values()) - 1) < 1e-6
    assert 0 <= report["self_test"] < 1e-4


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted(SDK.rglob("*.py")), ids=lambda p: str(p.relative_to(SDK)))
def test_no_sdk_module_imports_torch_training_or_export(path):
    """Also catches imports hidden inside functions, which a run-time check only sees when executed."""
    bad = [n for n in _imports(path) if n.split(".")[0] == "torch" or n.startswith(FORBIDDEN[1:])]
    assert bad == [], f"sdk/{path.relative_to(SDK)} imports {bad}"
