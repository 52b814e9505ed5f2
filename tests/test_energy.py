"""The benchmark energy sampler on fake /sys trees: joules, counter wrap, throttling, unreadable sources."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from fusionedge.benchmarks.energy import EnergySampler


def _w(root: Path, rel: str, value: object) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f"{value}\n")
    return p


def _rapl(root: Path, n: int, joules: float, wrap_j: float = 1000.0) -> Path:
    d = f"sys/class/powercap/intel-rapl:{n}"
    _w(root, f"{d}/name", f"package-{n}")
    _w(root, f"{d}/max_energy_range_uj", int(wrap_j * 1e6))
    return _w(root, f"{d}/energy_uj", int(joules * 1e6))


def _sampler(root: Path, **kw) -> EnergySampler:
    # a long interval: the test takes every reading itself with sample(), start() and stop()
    return EnergySampler(sysroot=root, interval_s=3600, nvml=False, **kw)


def test_power_is_integrated_over_the_window(tmp_path):
    power = _w(tmp_path, "sys/class/hwmon/hwmon0/power1_input", 5_000_000)  # 5 W in µW
    _w(tmp_path, "sys/class/hwmon/hwmon0/name", "acpi_pm")
    s = _sampler(tmp_path).start()
    time.sleep(0.05)
    s.sample()
    time.sleep(0.05)
    s.stop()
    e = s.summary(inferences=10)
    window = s.times[-1] - s.times[0]
    assert e["readings"] == 3 and e["window_s"] == pytest.approx(window, abs=1e-4)
    assert e["total_of"] == ["hwmon:acpi_pm:power1"]
    assert e["joules"] == pytest.approx(5.0 * window, rel=1e-4)  # constant 5 W x window
    assert e["mean_watts"] == pytest.approx(5.0, rel=1e-3)
    assert e["joules_per_inference"] == pytest.approx(5.0 * window / 10, rel=1e-4)
    # a step from 5 W to 1 W: trapezoids over the sampler's own reading times
    power.write_text("1000000\n")
    s2 = _sampler(tmp_path)
    power.write_text("5000000\n")
    s2.start()
    time.sleep(0.05)
    power.write_text("1000000\n")
    s2.stop()
    (t0, t1) = s2.times
    assert s2.summary(1)["joules"] == pytest.approx((5.0 + 1.0) / 2 * (t1 - t0), rel=1e-4)


def test_a_channel_with_instant_and_average_power_counts_once(tmp_path):
    # amdgpu-style: power1_input and power1_average are one sensor (3 W); power2_average alone is another
    h = "sys/class/hwmon/hwmon2"
    _w(tmp_path, f"{h}/name", "amdgpu")
    _w(tmp_path, f"{h}/power1_input", 3_000_000)
    _w(tmp_path, f"{h}/power1_average", 2_900_000)
    _w(tmp_path, f"{h}/power2_average", 1_000_000)
    s = _sampler(tmp_path).start()
    time.sleep(0.02)
    s.stop()
    e = s.summary(inferences=1)
    assert sorted(e["total_of"]) == ["hwmon:amdgpu:power1", "hwmon:amdgpu:power2"]
    assert e["mean_watts"] == pytest.approx(4.0, rel=1e-3)


def test_sensors_with_one_name_are_kept_apart(tmp_path):
    # two drives whose hwmon chips are both "nvme" with a "Composite" sensor, and two zones of one type
    for i, milli in ((0, 40000), (1, 55000)):
        _w(tmp_path, f"sys/class/hwmon/hwmon{i}/name", "nvme")
        _w(tmp_path, f"sys/class/hwmon/hwmon{i}/temp1_label", "Composite")
        _w(tmp_path, f"sys/class/hwmon/hwmon{i}/temp1_input", milli)
        _w(tmp_path, f"sys/class/thermal/thermal_zone{i}/type", "acpitz")
        _w(tmp_path, f"sys/class/thermal/thermal_zone{i}/temp", milli)
    s = _sampler(tmp_path).start()
    s.stop()
    t = s.summary(inferences=1)["temperature_c"]
    assert {k: v["max"] for k, v in t.items()} == {"hwmon:nvme:Composite": 40.0, "hwmon:nvme:Composite #2": 55.0,
                                                   "thermal:acpitz": 40.0, "thermal:acpitz #2": 55.0}


def test_rapl_counter_wrap_is_added_back(tmp_path):
    # the counter wraps at 1000 J: 999 -> 1 is 2 J, then 1 -> 3 is 2 J more: 4 J whatever the time
    counter = _rapl(tmp_path, 0, 999.0)
    s = _sampler(tmp_path).start()
    counter.write_text(str(int(1.0e6)))
    s.sample()
    counter.write_text(str(int(3.0e6)))
    s.stop()
    e = s.summary(inferences=8)
    window = s.times[-1] - s.times[0]
    assert e["sources"]["rapl:package-0"] == {"joules": pytest.approx(4.0), "mean_watts": pytest.approx(
        4.0 / window, rel=1e-3), "method": "energy counter"}
    assert e["joules"] == pytest.approx(4.0) and e["joules_per_inference"] == pytest.approx(0.5)
    assert "RAPL" not in e["unavailable"]


def test_two_packages_sum_and_subdomains_are_not_counted_twice(tmp_path):
    a, b = _rapl(tmp_path, 0, 10.0), _rapl(tmp_path, 1, 20.0)
    core = _w(tmp_path, "sys/class/powercap/intel-rapl:0:0/energy_uj", 5_000_000)  # inside package 0
    s = _sampler(tmp_path).start()
    a.write_text("13000000\n")
    b.write_text("21000000\n")
    core.write_text("7000000\n")
    s.stop()
    e = s.summary(inferences=4)
    assert sorted(e["total_of"]) == ["rapl:package-0", "rapl:package-1"]
    assert e["joules"] == pytest.approx(3.0 + 1.0)


def test_jetson_input_rail_is_the_board_total(tmp_path):
    # INA3221 in hwmon: VDD_IN 5000 mV x 1000 mA = 5 W (the board); a sub-rail 5 V x 0.4 A is listed only
    h = "sys/class/hwmon/hwmon3"
    _w(tmp_path, f"{h}/name", "ina3221")
    for ch, label, mv, ma in ((1, "VDD_IN", 5000, 1000), (2, "VDD_CPU_GPU_CV", 5000, 400)):
        _w(tmp_path, f"{h}/in{ch}_label", label)
        _w(tmp_path, f"{h}/in{ch}_input", mv)
        _w(tmp_path, f"{h}/curr{ch}_input", ma)
    _w(tmp_path, f"{h}/in4_input", 12)  # a shunt voltage without a current: not a rail
    _rapl(tmp_path, 0, 1.0)  # the CPU package is inside the board: not added to it
    s = _sampler(tmp_path).start()
    time.sleep(0.05)
    s.stop()
    e = s.summary(inferences=2)
    assert e["total_of"] == ["ina3221:VDD_IN"]
    assert set(e["sources"]) == {"ina3221:VDD_IN", "ina3221:VDD_CPU_GPU_CV", "rapl:package-0"}
    assert e["joules"] == pytest.approx(5.0 * e["window_s"], rel=1e-2)
    assert e["sources"]["ina3221:VDD_CPU_GPU_CV"]["max_watts"] == pytest.approx(2.0)
    assert "INA3221" not in e["unavailable"]


def test_old_jetson_ina3221_iio_rails_in_milliwatts(tmp_path):
    d = "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    _w(tmp_path, f"{d}/rail_name_0", "POM_5V_IN")
    _w(tmp_path, f"{d}/in_power0_input", 4000)  # mW
    _w(tmp_path, f"{d}/rail_name_1", "POM_5V_GPU")
    _w(tmp_path, f"{d}/in_power1_input", 1500)
    s = _sampler(tmp_path).start()
    time.sleep(0.02)
    s.stop()
    e = s.summary(inferences=1)
    assert e["total_of"] == ["ina3221:POM_5V_IN"] and e["mean_watts"] == pytest.approx(4.0, rel=1e-3)
    assert e["sources"]["ina3221:POM_5V_GPU"]["max_watts"] == pytest.approx(1.5)


def test_temperature_at_its_limit_and_a_falling_clock_are_throttling(tmp_path):
    _w(tmp_path, "sys/class/hwmon/hwmon1/name", "coretemp")
    temp = _w(tmp_path, "sys/class/hwmon/hwmon1/temp1_input", 60000)
    _w(tmp_path, "sys/class/hwmon/hwmon1/temp1_label", "Package id 0")
    _w(tmp_path, "sys/class/hwmon/hwmon1/temp1_crit", 90000)
    z = "sys/class/thermal/thermal_zone0"
    _w(tmp_path, f"{z}/type", "soc")
    zone = _w(tmp_path, f"{z}/temp", 50000)
    _w(tmp_path, f"{z}/trip_point_0_type", "critical")
    _w(tmp_path, f"{z}/trip_point_0_temp", 100000)
    _w(tmp_path, f"{z}/trip_point_1_type", "passive")
    _w(tmp_path, f"{z}/trip_point_1_temp", 80000)
    clocks = [_w(tmp_path, f"sys/devices/system/cpu/cpu{i}/cpufreq/scaling_cur_freq", 2_400_000) for i in (0, 1)]

    s = _sampler(tmp_path).start()
    for _ in range(7):
        s.sample()
    s.stop()
    cool = s.summary(inferences=1)
    assert cool["throttled"] is False and cool["throttle_reasons"] == []
    assert cool["temperature_c"] == {"hwmon:coretemp:Package id 0": {"max": 60.0, "limit": 90.0},
                                     "thermal:soc": {"max": 50.0, "limit": 80.0}}  # passive trip, not critical
    assert cool["clocks_mhz"]["cpu:fastest core"] == {"first": 2400.0, "last": 2400.0, "min": 2400.0,
                                                      "max": 2400.0}

    s = _sampler(tmp_path).start()
    for i in range(8):
        if i == 4:  # the second half runs with both cores at 1.2 GHz and the zone past its passive trip
            for c in clocks:
                c.write_text("1200000\n")
            zone.write_text("81000\n")
        s.sample()
    s.stop()
    hot = s.summary(inferences=1)
    assert hot["throttled"] is True
    assert any("thermal:soc reached 81.0" in r for r in hot["throttle_reasons"])
    assert any("cpu:fastest core clock fell from 2400 to 1200 MHz" in r for r in hot["throttle_reasons"])
    assert not any("coretemp" in r for r in hot["throttle_reasons"])
    temp.write_text("91000\n")  # past temp1_crit
    s = _sampler(tmp_path).start()
    s.stop()
    assert any("coretemp:Package id 0 reached 91.0" in r for r in s.summary(1)["throttle_reasons"])


def test_a_sensor_that_vanishes_mid_run_leaves_a_gap(tmp_path):
    power = _w(tmp_path, "sys/class/hwmon/hwmon0/power1_input", 2_000_000)
    s = _sampler(tmp_path).start()
    time.sleep(0.02)
    s.sample()
    power.unlink()
    s.stop()
    e = s.summary(inferences=1)
    t = s.times
    assert e["readings"] == 3 and e["joules"] == pytest.approx(2.0 * (t[1] - t[0]), rel=1e-4)


def test_nothing_readable_lists_every_reason(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # as on a machine without nvidia-ml-py
    s = EnergySampler(sysroot=tmp_path, interval_s=0.01)
    with s:
        time.sleep(0.03)
    e = s.summary(inferences=5)
    assert e["joules"] is None and e["joules_per_inference"] is None and e["mean_watts"] is None
    assert e["throttled"] is False and e["readings"] == 2  # no source: no thread, first and last
    why = e["unavailable"]
    assert why["NVML"].startswith("no library")
    assert why["RAPL"].startswith("no /sys/class/powercap/intel-rapl:*")
    assert why["hwmon power"] == "no /sys/class/hwmon/hwmon*"
    assert "not a Jetson" in why["INA3221"]
    assert "cpufreq" in why and "thermal zones" in why


def test_nvml_without_a_driver_says_why():
    pytest.importorskip("pynvml")
    s = EnergySampler(sysroot="/nonexistent", interval_s=1.0)
    s.start()
    s.stop()
    why = s.summary(inferences=1)["unavailable"]
    if not any(k.startswith("nvml") for k in s.summary(1)["sources"]):
        assert why["NVML"].startswith(("cannot initialise", "no NVIDIA GPU")), why["NVML"]


_AS_NOBODY = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("energy", sys.argv[2])
energy = importlib.util.module_from_spec(spec)
sys.modules["energy"] = energy
spec.loader.exec_module(energy)
s = energy.EnergySampler(sysroot=sys.argv[1], interval_s=3600, nvml=False)
s.start(); s.stop()
print(json.dumps(s.summary(inferences=1)))
"""


def _as_nobody(root: Path) -> dict:
    """Run the sampler as an unprivileged user (root reads any file) with a system interpreter."""
    from fusionedge.benchmarks import energy

    script = root / "energy.py"  # the module is standard-library only: it runs on its own
    shutil.copy(energy.__file__, script)
    script.chmod(0o644)
    for exe in ("/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            proc = subprocess.run([exe, "-c", _AS_NOBODY, str(root / "tree"), str(script)], check=False,
                                  capture_output=True, text=True, timeout=60, user=65534, group=65534, extra_groups=[], cwd="/",
                                  env={"PATH": "/usr/bin:/bin", "HOME": "/"})
        except OSError:
            continue
        if proc.returncode == 0:
            return json.loads(proc.stdout)
    pytest.skip("no Python interpreter here can run as an unprivileged user")


def test_rapl_readable_by_root_only_is_a_permission_reason():
    """energy_uj with mode 0400 (as recent kernels ship it), read by an unprivileged user."""
    root = Path(tempfile.mkdtemp(prefix="fusionedge-rapl-"))
    try:
        counter = _rapl(root / "tree", 0, 5.0)
        for d, _, files in os.walk(root):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o444)
        counter.chmod(0o400)
        if os.geteuid() == 0:
            e = _as_nobody(root)
        else:
            s = _sampler(root / "tree").start()
            s.stop()
            e = s.summary(inferences=1)
        assert e["unavailable"]["RAPL package-0"].endswith("energy_uj: permission denied (root only on recent kernels)")
        assert e["joules"] is None and "rapl:package-0" not in e["sources"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_interval_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        EnergySampler(sysroot=tmp_path, interval_s=0)


class _FakeNvml:
    """The few NVML calls the sampler makes, for a machine without an NVIDIA driver (no GPU runs here).

    GPU 0 has an energy counter (mJ) and reports a software power cap; GPU 1 has no counter, so its
    power (mW) is integrated instead.
    """

    NVML_TEMPERATURE_GPU = 0
    NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
    NVML_CLOCK_SM = 1

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.energy_mj = 1_000_000
        self.reasons = 0x1  # idle: not throttling
        self.shutdown = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        if h == 1:
            raise self.NVMLError("Not Supported")
        return self.energy_mj

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 30_000  # mW

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return 70

    def nvmlDeviceGetTemperatureThreshold(self, h: int, kind: int) -> int:
        return 87

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        return 1980

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        return self.reasons if h == 0 else 0


def test_nvml_energy_counter_power_fallback_and_throttle_reasons(tmp_path, monkeypatch):
    nv = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    s = EnergySampler(sysroot=tmp_path, interval_s=3600).start()
    nv.energy_mj += 12_500  # 12.5 J on GPU 0
    nv.reasons = 0x1 | 0x4  # a software power cap held the clocks down
    time.sleep(0.02)
    s.stop()
    e = s.summary(inferences=5)
    assert nv.shutdown
    assert e["sources"]["nvml:gpu0"]["method"] == "energy counter"
    assert e["sources"]["nvml:gpu0"]["joules"] == pytest.approx(12.5)
    assert e["sources"]["nvml:gpu1"]["method"] == "power integral"
    window = s.times[-1] - s.times[0]
    assert e["sources"]["nvml:gpu1"]["joules"] == pytest.approx(30.0 * window, rel=1e-4)
    assert sorted(e["total_of"]) == ["nvml:gpu0", "nvml:gpu1"]
    assert e["joules_per_inference"] == pytest.approx((12.5 + 30.0 * window) / 5, rel=1e-3)
    assert e["temperature_c"]["nvml:gpu0"] == {"max": 70.0, "limit": 87.0}
    assert e["throttle_reasons"] == ["nvml:gpu0: power cap (software)"] and e["throttled"]
    assert "NVML" not in e["unavailable"] and "NVML gpu1 energy" not in e["unavailable"]
