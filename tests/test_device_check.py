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


def test_sections_report_skips_and_failures(tmp_path, monkeypatch):
    module = _load()
    # the training section has its own test above; here it is replaced to keep this one fast
    monkeypatch.setattr(module, "check_training", lambda device: {"ok": None, "skipped": "replaced in this test"})
    out = tmp_path / "check.json"
    rc = module.main(["--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result) == {"cuda_memory", "torch_gpu", "training", "tensorrt"}
    if importlib.util.find_spec("tensorrt") is None:
        assert result["tensorrt"] == {"ok": None, "skipped": "tensorrt is not installed on this machine"}
    if importlib.util.find_spec("cuda") is None:  # this machine: the section fails, and it is not hidden
        assert result["cuda_memory"]["ok"] is False
        assert "cuda-python is not installed" in result["cuda_memory"]["error"]
        assert rc == 1
