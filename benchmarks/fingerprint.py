"""System fingerprint: what a benchmark ran on, so numbers from different machines are never confused.

:func:`collect_fingerprint` returns a JSON-ready dict of sections::

    host      os, kernel, arch, python, load average
    cpu       model, logical/usable/physical cores, ISA flags (avx2, avx512f, avx512_vnni, amx),
              frequency governor and current clocks
    memory    total and available MiB
    gpu       per GPU: name, driver, memory, compute capability, clocks, temperature, power
              (nvidia-smi, else NVML through pynvml); CUDA driver version
    cuda      toolkit (nvcc) and cuda-python versions
    software  onnxruntime (+ providers), tensorrt, numpy, opencv, torch, mlcommons-loadgen, fusionedge
    jetson    module, L4T release (/etc/nv_tegra_release), JetPack, power mode (nvpmodel -q), clocks
    thermal   zone -> degrees C (/sys/class/thermal)
    power     readable power sensors (hwmon, INA3221 on a Jetson, Intel RAPL), watts: a snapshot
              before the run (the energy of each configuration is sampled by energy.py)

Every probe is best-effort: a field that cannot be read is left out of its section and
``fingerprint["unavailable"]["<section>.<field>"]`` says why (no such file, command not found,
permission denied, ...). Collecting a fingerprint never raises for a missing probe.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["collect_fingerprint", "fingerprint_summary", "ISA_FLAGS"]

#: ISA features recorded from /proc/cpuinfo; "amx" is true when any amx_* flag is present.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx")

_TIMEOUT_S = 10.0


class _Probe:
    """Collects fields into sections and records why a field is missing."""

    def __init__(self, sysroot: Path, path: str | None) -> None:
        self.sysroot = sysroot
        self.path = path
        self.data: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}

    def section(self, name: str) -> dict[str, Any]:
        return self.data.setdefault(name, {})

    def missing(self, field: str, reason: str) -> None:
        self.unavailable[field] = reason

    def file(self, rel: str) -> Path:
        return self.sysroot / rel.lstrip("/")

    def read(self, rel: str, field: str) -> str | None:
        """Read a text file under the sysroot, or record why not."""
        p = self.file(rel)
        try:
            return p.read_text(encoding="utf-8", errors="replace").strip("\x00\n ")
        except FileNotFoundError:
            self.missing(field, f"{rel} does not exist")
        except PermissionError:
            self.missing(field, f"{rel}: permission denied")
        except OSError as e:
            self.missing(field, f"{rel}: {e.strerror or e}")
        return None

    def run(self, argv: list[str], field: str) -> str | None:
        """Run a command found on PATH, or record why it could not run."""
        exe = shutil.which(argv[0], path=self.path)
        if exe is None:
            self.missing(field, f"{argv[0]} not found on PATH")
            return None
        try:
            proc = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.missing(field, f"{argv[0]} did not answer within {_TIMEOUT_S:g} s")
            return None
        except OSError as e:
            self.missing(field, f"{argv[0]} could not run: {e}")
            return None
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).strip().splitlines()
            self.missing(
                field,
                f"{' '.join(argv)} exited with {proc.returncode}" + (f": {err[-1][:200]}" if err else ""),
            )
            return None
        return proc.stdout


def collect_fingerprint(
    *, sysroot: str | os.PathLike = "/", path: str | None = None, power_sample_s: float = 0.2
) -> dict[str, Any]:
    """Describe this machine for a benchmark record.

    Args:
        sysroot: where ``/proc``, ``/sys`` and ``/etc`` are read from (a fake tree in tests).
        path: the ``PATH`` searched for ``nvidia-smi``, ``nvpmodel``, ``nvcc`` (default: the
            process's own).
        power_sample_s: how long an energy counter (Intel RAPL) is sampled to turn it into watts;
            0 skips sampling.

    Returns:
        ``{"collected": ISO time, "host": {...}, "cpu": {...}, "memory": {...}, "gpu": {...},
        "cuda": {...}, "software": {...}, "jetson": {...}, "thermal": {...}, "power": {...},
        "unavailable": {"section.field": reason}}``. Sections with nothing readable are present
        and empty, and their reason is in ``unavailable``.
    """
    probe = _Probe(Path(sysroot), path)
    probe.data["collected"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for step in (_host, _cpu, _memory, _gpu, _cuda, _software, _jetson, _thermal):
        step(probe)
    _power(probe, power_sample_s)
    for name in ("host", "cpu", "memory", "gpu", "cuda", "software", "jetson", "thermal", "power"):
        probe.section(name)
    probe.data["unavailable"] = dict(sorted(probe.unavailable.items()))
    return probe.data


def fingerprint_summary(fp: dict[str, Any]) -> str:
    """One line naming the machine: CPU, cores, ISA, memory, GPU (or why none)."""
    cpu, mem, gpu = fp.get("cpu", {}), fp.get("memory", {}), fp.get("gpu", {})
    flags = [f for f in ISA_FLAGS if cpu.get("isa", {}).get(f)]
    parts = [
        f"{cpu.get('model', 'unknown CPU')} ({cpu.get('usable_cores', '?')} usable cores"
        + (f", {' '.join(flags)}" if flags else "")
        + ")"
    ]
    if "total_mb" in mem:
        parts.append(f"{mem['total_mb'] / 1024:.0f} GiB RAM")
    devices = gpu.get("devices") or []
    if devices:
        parts.append(", ".join(d.get("name", "GPU") for d in devices))
    else:
        parts.append("no GPU (" + fp.get("unavailable", {}).get("gpu", "none found") + ")")
    jetson = fp.get("jetson", {})
    if jetson.get("module"):
        parts.append(f"{jetson['module']} L4T {jetson.get('l4t', '?')}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------ probes


def _host(p: _Probe) -> None:
    s = p.section("host")
    s.update(
        os=platform.system(),
        kernel=platform.release(),
        arch=platform.machine(),
        python=platform.python_version(),
        platform=platform.platform(),
    )
    try:
        s["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError as e:
        p.missing("host.loadavg", str(e))


def _cpu(p: _Probe) -> None:
    s = p.section("cpu")
    s["logical_cores"] = os.cpu_count()
    try:
        s["usable_cores"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        s["usable_cores"] = os.cpu_count()
    text = p.read("/proc/cpuinfo", "cpu.model")
    if text is None:
        p.missing("cpu.isa", "/proc/cpuinfo is not readable")
    else:
        blocks = [b for b in text.split("\n\n") if b.strip()]
        first = _kv(blocks[0]) if blocks else {}
        model = first.get("model name") or first.get("Hardware") or _kv(text).get("Model")
        if model is None and "CPU part" in first:
            model = f"ARM implementer {first.get('CPU implementer', '?')} part {first['CPU part']}"
        if model:
            s["model"] = model
        else:
            p.missing("cpu.model", "/proc/cpuinfo names no model")
        cores = {(b.get("physical id", "0"), b["core id"]) for b in map(_kv, blocks) if "core id" in b}
        if cores:
            s["physical_cores"] = len(cores)
        else:
            p.missing("cpu.physical_cores", "/proc/cpuinfo has no 'core id' fields")
        flags = set((first.get("flags") or first.get("Features") or "").split())
        if flags:
            isa = {f: f in flags for f in ISA_FLAGS if f != "amx"}
            isa["amx"] = any(f.startswith("amx") for f in flags)
            s["isa"] = isa
            if "asimd" in flags:
                s["isa"]["asimd"] = True
        else:
            p.missing("cpu.isa", "/proc/cpuinfo lists no flags")
    gov = p.read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "cpu.governor")
    if gov:
        s["governor"] = gov
    freqs = []
    for f in sorted(p.file("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq")):
        try:
            freqs.append(int(f.read_text().strip()) // 1000)
        except (OSError, ValueError):
            continue
    if freqs:
        s["cur_mhz"] = freqs
    else:
        p.missing("cpu.cur_mhz", "no readable /sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq")


def _memory(p: _Probe) -> None:
    text = p.read("/proc/meminfo", "memory.total_mb")
    if text is None:
        return
    info = _kv(text)
    s = p.section("memory")
    for key, name in (("MemTotal", "total_mb"), ("MemAvailable", "available_mb")):
        m = re.match(r"(\d+)\s*kB", info.get(key, ""))
        if m:
            s[name] = round(int(m.group(1)) / 1024)
        else:
            p.missing(f"memory.{name}", f"/proc/meminfo has no {key}")


_SMI_FIELDS = (
    "name",
    "driver_version",
    "memory.total",
    "compute_cap",
    "clocks.sm",
    "clocks.mem",
    "temperature.gpu",
    "power.draw",
    "pstate",
)


def _gpu(p: _Probe) -> None:
    s = p.section("gpu")
    reasons = []
    out = p.run(
        ["nvidia-smi", f"--query-gpu={','.join(_SMI_FIELDS)}", "--format=csv,noheader,nounits"], "gpu"
    )
    if out is not None:
        devices = []
        for line in out.strip().splitlines():
            values = [v.strip() for v in line.split(",")]
            if len(values) != len(_SMI_FIELDS):
                continue
            d = {
                k.replace(".", "_"): _number_or_text(v)
                for k, v in zip(_SMI_FIELDS, values, strict=True)
                if v and not v.startswith("[")
            }  # "[N/A]", "[Not Supported]"
            devices.append(d)
        header = p.run(["nvidia-smi"], "gpu.cuda_driver_version")
        if header:
            m = re.search(r"CUDA Version:\s*([\d.]+)", header)
            if m:
                s["cuda_driver_version"] = m.group(1)
        if devices:
            s["devices"], s["source"] = devices, "nvidia-smi"
            p.unavailable.pop("gpu", None)
            return
        reasons.append("nvidia-smi listed no GPU")
    else:
        reasons.append(p.unavailable.pop("gpu"))
    try:
        pynvml = importlib.import_module("pynvml")
        pynvml.nvmlInit()
    except Exception as e:  # ImportError, or NVMLError when there is no driver
        reasons.append(
            f"NVML unavailable ({type(e).__name__}: {e})"
            if not isinstance(e, ImportError)
            else "pynvml is not installed"
        )
        p.missing("gpu", "; ".join(reasons))
        return
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            devices.append(
                {
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "memory_total": pynvml.nvmlDeviceGetMemoryInfo(h).total // (1 << 20),
                    "compute_cap": f"{major}.{minor}",
                }
            )
        driver = pynvml.nvmlSystemGetDriverVersion()
        s.update(
            devices=devices,
            source="nvml",
            driver_version=driver.decode() if isinstance(driver, bytes) else driver,
        )
        if not devices:
            p.missing("gpu", "NVML lists no GPU")
    except Exception as e:
        p.missing("gpu", f"NVML query failed: {type(e).__name__}: {e}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _cuda(p: _Probe) -> None:
    s = p.section("cuda")
    out = p.run(["nvcc", "--version"], "cuda.toolkit")
    if out:
        m = re.search(r"release ([\d.]+)", out)
        if m:
            s["toolkit"] = m.group(1)
    v = _dist_version("cuda-python") or _dist_version("cuda-bindings")
    if v:
        s["cuda_python"] = v
    else:
        p.missing("cuda.cuda_python", "cuda-python is not installed")


def _software(p: _Probe) -> None:
    s = p.section("software")
    for dist, key in (
        ("numpy", "numpy"),
        ("onnxruntime", "onnxruntime"),
        ("onnxruntime-gpu", "onnxruntime"),
        ("opencv-python-headless", "opencv"),
        ("opencv-python", "opencv"),
        ("torch", "torch"),
        ("mlcommons-loadgen", "mlcommons_loadgen"),
        ("fusionedge", "fusionedge"),
        ("tensorrt", "tensorrt"),
    ):
        v = _dist_version(dist)
        if v and key not in s:
            s[key] = v
    if "opencv" not in s:  # a Jetson's system OpenCV has no pip metadata
        try:
            s["opencv"] = importlib.import_module("cv2").__version__
        except Exception as e:
            p.missing("software.opencv", f"cv2 does not import ({type(e).__name__})")
    if "tensorrt" not in s:
        try:
            s["tensorrt"] = importlib.import_module("tensorrt").__version__
        except Exception as e:
            p.missing("software.tensorrt", f"tensorrt does not import ({type(e).__name__}: {e})")
    try:
        ort = importlib.import_module("onnxruntime")
        s["onnxruntime"] = ort.__version__
        s["onnxruntime_providers"] = list(ort.get_available_providers())
    except Exception as e:
        p.missing("software.onnxruntime", f"onnxruntime does not import ({type(e).__name__}: {e})")
    if "torch" not in s:
        p.missing("software.torch", "torch is not installed")
    if "mlcommons_loadgen" not in s:
        p.missing("software.mlcommons_loadgen", "mlcommons-loadgen is not installed")


def _jetson(p: _Probe) -> None:
    release = p.read("/etc/nv_tegra_release", "jetson")
    if release is None:
        p.unavailable["jetson"] = "not a Jetson (" + p.unavailable["jetson"] + ")"
        return
    s = p.section("jetson")
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
    if m:
        s["l4t"] = f"{m.group(1)}.{m.group(2)}"
    else:
        p.missing("jetson.l4t", f"cannot parse /etc/nv_tegra_release: {release.splitlines()[0][:80]!r}")
    model = p.read("/proc/device-tree/model", "jetson.module")
    if model:
        s["module"] = model
    out = p.run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"], "jetson.jetpack")
    if out:
        s["jetpack"] = out.strip()
    out = p.run(["nvpmodel", "-q"], "jetson.power_mode")
    if out:
        m = re.search(r"NV Power Mode:\s*(.+)", out)
        s["power_mode"] = m.group(1).strip() if m else out.strip().splitlines()[0]
    clocks = {}
    for f in sorted(p.file("/sys/class/devfreq").glob("*/cur_freq")):
        try:
            clocks[f.parent.name] = int(f.read_text().strip()) // 1_000_000  # Hz -> MHz
        except (OSError, ValueError):
            continue
    if clocks:
        s["devfreq_mhz"] = clocks
    else:
        p.missing("jetson.devfreq_mhz", "no readable /sys/class/devfreq/*/cur_freq")


def _thermal(p: _Probe) -> None:
    zones = {}
    for zone in sorted(p.file("/sys/class/thermal").glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip()
            zones[f"{zone.name}:{kind}"] = int((zone / "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
    if zones:
        p.section("thermal")["celsius"] = zones
    else:
        p.missing("thermal", "no readable /sys/class/thermal/thermal_zone*/temp")


def _power(p: _Probe, sample_s: float) -> None:
    s = p.section("power")
    watts: dict[str, float] = {}
    # hwmon power sensors (µW), including INA3221 rails on a Jetson (in newer kernels under hwmon).
    for f in sorted(p.file("/sys/class/hwmon").glob("hwmon*/power*_input")):
        try:
            label_file = f.with_name(f.name.replace("_input", "_label"))
            label = label_file.read_text().strip() if label_file.exists() else f.name
            name = (f.parent / "name").read_text().strip() if (f.parent / "name").exists() else f.parent.name
            watts[f"{name}:{label}"] = int(f.read_text().strip()) / 1e6
        except (OSError, ValueError):
            continue
    # Older Jetson kernels: INA3221 rails as in_powerN_input (mW).
    for f in sorted(p.file("/sys/bus/i2c/drivers/ina3221x").glob("*/iio:device*/in_power*_input")):
        try:
            rail_file = f.with_name(f.name.replace("in_power", "rail_name_").replace("_input", ""))
            rail = rail_file.read_text().strip() if rail_file.exists() else f.name
            watts[f"ina3221:{rail}"] = int(f.read_text().strip()) / 1e3
        except (OSError, ValueError):
            continue
    # Intel RAPL: an energy counter (µJ); two reads over sample_s give the package power.
    rapl = sorted(p.file("/sys/class/powercap").glob("intel-rapl:[0-9]"))
    rapl_reason = "no /sys/class/powercap/intel-rapl:*" if not rapl else None
    if rapl and sample_s > 0:
        try:
            e0 = [int((r / "energy_uj").read_text()) for r in rapl]
            time.sleep(sample_s)
            e1 = [int((r / "energy_uj").read_text()) for r in rapl]
            for r, a, b in zip(rapl, e0, e1, strict=True):
                if b >= a:
                    watts[f"rapl:{(r / 'name').read_text().strip()}"] = round((b - a) / 1e6 / sample_s, 2)
        except PermissionError:
            rapl_reason = "intel-rapl energy_uj: permission denied (root only on recent kernels)"
        except (OSError, ValueError) as e:
            rapl_reason = f"intel-rapl unreadable: {e}"
    if watts:
        s["watts"] = watts
    else:
        p.missing(
            "power",
            "no readable power sensor (hwmon power*_input, INA3221, "
            + (rapl_reason or "intel-rapl not sampled")
            + ")",
        )


# ----------------------------------------------------------------------------------------- helpers


def _kv(block: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip(), v.strip())
    return out


def _number_or_text(v: str) -> Any:
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v else f


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
