"""System fingerprint: real probes on this GPU-less machine, and a fake Jetson tree with fake tools."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
from pathlib import Path

from fusionedge.benchmarks.fingerprint import collect_fingerprint, fingerprint_summary


def test_this_machine_has_cpu_memory_and_software_and_no_gpu_with_a_reason():
    fp = collect_fingerprint(power_sample_s=0)
    json.dumps(fp, allow_nan=False)  # JSON-ready as is
    cpu = fp["cpu"]
    assert cpu["logical_cores"] == os.cpu_count() and 1 <= cpu["usable_cores"] <= cpu["logical_cores"]
    assert isinstance(cpu["model"], str) and cpu["model"]
    assert set(cpu["isa"]) >= {"avx2", "avx512f", "avx512_vnni", "amx"}
    assert all(isinstance(v, bool) for v in cpu["isa"].values())
    assert fp["memory"]["total_mb"] > 0
    assert fp["software"]["onnxruntime"] and "CPUExecutionProvider" in fp["software"]["onnxruntime_providers"]
    assert fp["software"]["numpy"]
    assert len(fp["host"]["loadavg"]) == 3
    if not Path("/etc/nv_tegra_release").exists():
        assert fp["unavailable"]["jetson"].startswith("not a Jetson")
    if shutil.which("nvidia-smi") is None and importlib.util.find_spec("pynvml") is None:
        # No GPU tooling on a CPU-only machine: the section is empty, the reason says why.
        assert "devices" not in fp["gpu"]
        assert "nvidia-smi not found on PATH" in fp["unavailable"]["gpu"]
        assert "no GPU (" in fingerprint_summary(fp)
    else:  # a GPU machine: either devices are listed or the reason is recorded
        assert fp["gpu"].get("devices") or fp["unavailable"]["gpu"]


def _tool(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_fake_jetson_tree_and_tools_are_parsed(tmp_path):
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    files = {
        "proc/cpuinfo": "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\nFeatures\t: fp asimd\n\n"
        "processor\t: 1\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\nFeatures\t: fp asimd\n",
        "proc/meminfo": "MemTotal:       7620000 kB\nMemAvailable:   5000000 kB\n",
        "etc/nv_tegra_release": "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic\n",
        "proc/device-tree/model": "NVIDIA Jetson Orin Nano Developer Kit\x00",
        "sys/class/thermal/thermal_zone0/type": "cpu-thermal\n",
        "sys/class/thermal/thermal_zone0/temp": "48500\n",
        "sys/class/devfreq/17000000.gpu/cur_freq": "624750000\n",
        "sys/class/hwmon/hwmon1/name": "ina3221\n",
        "sys/class/hwmon/hwmon1/power1_input": "4250000\n",
        "sys/class/hwmon/hwmon1/power1_label": "VDD_IN\n",
        "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq": "1510400\n",
        "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor": "schedutil\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    bin_dir.mkdir()
    _tool(bin_dir, "nvpmodel", 'echo "NV Power Mode: 15W"\necho 0\n')
    _tool(
        bin_dir,
        "nvidia-smi",
        'case "$1" in --query-gpu*) echo "Orin (nvgpu), 540.3.0, [N/A], 8.7, 624, '
        '[N/A], 47, [N/A], P0";; *) echo "| CUDA Version: 12.6 |";; esac\n',
    )
    _tool(bin_dir, "dpkg-query", "exit 1\n")  # nvidia-jetpack not installed as a package

    fp = collect_fingerprint(sysroot=root, path=str(bin_dir), power_sample_s=0)
    assert fp["cpu"]["model"] == "ARM implementer 0x41 part 0xd42"
    assert fp["cpu"]["isa"]["asimd"] is True and fp["cpu"]["isa"]["avx2"] is False
    assert fp["cpu"]["cur_mhz"] == [1510] and fp["cpu"]["governor"] == "schedutil"
    assert fp["memory"] == {"total_mb": 7441, "available_mb": 4883}
    assert fp["jetson"]["l4t"] == "36.3.0"
    assert fp["jetson"]["module"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert fp["jetson"]["power_mode"] == "15W"
    assert fp["jetson"]["devfreq_mhz"] == {"17000000.gpu": 624}
    assert "nvidia-jetpack" in fp["unavailable"]["jetson.jetpack"]
    gpu = fp["gpu"]["devices"][0]
    assert gpu["name"] == "Orin (nvgpu)" and gpu["compute_cap"] == 8.7 and gpu["temperature_gpu"] == 47
    assert "memory_total" not in gpu  # "[N/A]" is left out, not recorded as text
    assert fp["gpu"]["cuda_driver_version"] == "12.6" and "gpu" not in fp["unavailable"]
    assert fp["thermal"]["celsius"] == {"thermal_zone0:cpu-thermal": 48.5}
    assert fp["power"]["watts"] == {"ina3221:VDD_IN": 4.25}
    assert "Jetson Orin Nano" in fingerprint_summary(fp)


def test_a_failing_tool_and_empty_tree_record_reasons_instead_of_raising(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(
        bin_dir,
        "nvidia-smi",
        'echo "NVIDIA-SMI has failed because it could not communicate with the driver" >&2\nexit 9\n',
    )
    fp = collect_fingerprint(sysroot=tmp_path / "empty", path=str(bin_dir), power_sample_s=0)
    assert "exited with 9" in fp["unavailable"]["gpu"] and "could not communicate" in fp["unavailable"]["gpu"]
    assert "/proc/cpuinfo does not exist" in fp["unavailable"]["cpu.model"]
    assert "/proc/meminfo does not exist" in fp["unavailable"]["memory.total_mb"]
    assert fp["memory"] == {} and fp["thermal"] == {} and "thermal" in fp["unavailable"]
    assert "not found on PATH" in fp["unavailable"]["cuda.toolkit"]
