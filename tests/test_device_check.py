"""The prepared GPU check (scripts/device_check.py): its training section dry-runs on the CPU here.

On a machine with a CUDA GPU the same section trains with mixed precision, resumes and distills on
the GPU; here it runs with ``device="cpu"`` so the script cannot rot between GPU sessions.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_training_section_dry_run_on_cpu():
    res = _load().check_training("cpu")
    assert res["ok"] is True, res
    assert res["resume"] == {"bit_exact": True, "max_abs_diff": 0.0}  # the CPU is deterministic
    assert res["best_val_loss"]["saved"] == pytest.approx(res["best_val_loss"]["cpu"], rel=1e-5)
    assert len(res["amp_train_loss"]) == 2 and res["amp_dtype"] is None  # no autocast on the CPU
    assert res["pretrain"]["view_top1"] is not None


def test_sections_report_skips_and_failures(tmp_path, monkeypatch, capsys):
    module = _load()
    # the training section has its own test above; here it is replaced to keep this one fast
    monkeypatch.setattr(module, "check_training", lambda device: {"ok": None, "skipped": "replaced in this test"})
    out = tmp_path / "check.json"
    rc = module.main(["--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result) == {"cuda_memory", "torch_gpu", "training", "tensorrt", "cuda_preprocess"}
    lines = capsys.readouterr().err.splitlines()  # one readable line per section
    assert [line.split(":")[0] for line in lines] == list(result)
    if importlib.util.find_spec("tensorrt") is None:
        assert result["tensorrt"]["skipped"] == "tensorrt is not installed on this machine"
    if module.gpu_unavailable() is not None:  # this machine: every GPU section says why it was skipped
        for name in ("cuda_memory", "cuda_preprocess"):
            assert result[name]["ok"] is None and result[name]["skipped"] == module.gpu_unavailable()
            assert f"{name}: skipped (" in "\n".join(lines)
        assert rc == 0
    # a section that fails is reported, and makes the exit status 1
    monkeypatch.setattr(module, "check_tensorrt", lambda bundle: 1 / 0)
    assert module.main(["--sections", "tensorrt"]) == 1
    assert "tensorrt: FAILED (ZeroDivisionError" in capsys.readouterr().err


def test_help_and_a_run_without_a_gpu_exit_cleanly(tmp_path):
    import subprocess
    import sys

    help_ = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert help_.returncode == 0 and "--sections" in help_.stdout
    if _load().gpu_unavailable() is None:
        pytest.skip("this machine has a GPU: the sections run instead of skipping")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--sections", "cuda_memory,cuda_preprocess"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cuda_preprocess"]["ok"] is None
    assert "cuda_preprocess: skipped" in proc.stderr and "Traceback" not in proc.stderr
