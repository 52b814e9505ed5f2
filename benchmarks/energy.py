"""Power, temperature and clocks sampled while a benchmark configuration runs: joules per inference and throttling.

:class:`EnergySampler` discovers what this machine exposes, then a background thread reads it every
``interval_s`` between :meth:`~EnergySampler.start` and :meth:`~EnergySampler.stop` (both also take a
sample, so even a short run has a first and a last reading). Sources:

- power sensors, integrated over time (trapezoids) into joules: hwmon ``power*_input`` (µW; an ACPI
  ``power_meter`` is the whole system), INA3221 rails on a Jetson (hwmon ``ina3221``: bus mV x mA,
  or the older ``ina3221x`` IIO ``in_power*_input`` in mW), NVML power of each NVIDIA GPU (mW) when
  the GPU has no energy counter;
- energy counters, differenced: Intel RAPL ``intel-rapl:N/energy_uj`` (µJ, per package; the counter
  wraps at ``max_energy_range_uj`` and a wrap between two samples is added back) and NVML's total
  energy (mJ);
- temperatures with the limit each sensor states (hwmon ``temp*_max``/``temp*_crit``, the thermal
  zone's lowest passive or critical trip point, NVML's slowdown threshold; else ``temp_limit_c``);
- clocks: the fastest CPU core (cpufreq), devfreq devices (a Jetson's GPU and memory), each GPU's
  SM clock (NVML), and NVML's clock-event reasons.

The headline energy sums independent sources: a board-level meter (a Jetson's input rail, an ACPI
power meter) when there is one, else the RAPL packages, the GPUs and the other hwmon power sensors.
It is everything those domains drew during the run, idle draw included, divided by the inferences
the run made. A run is *throttled* when a temperature reached its limit, a clock's median over the
last third of the run fell more than ``clock_drop`` below its median over the first third, or NVML
reported a power-cap, thermal or hardware slowdown. Whatever cannot be read is listed with the
reason ("RAPL: ... permission denied", "NVML: no library"); sampling never raises for a missing
sensor.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_TEMP_LIMIT_C", "NVML_THROTTLE_REASONS", "EnergySampler"]

DEFAULT_TEMP_LIMIT_C = 95.0  # used for a sensor that states no limit of its own
#: NVML clock-event reason bits that mean the clocks were held down (nvml.h).
NVML_THROTTLE_REASONS = {
    0x4: "power cap (software)",
    0x8: "hardware slowdown",
    0x20: "thermal slowdown (software)",
    0x40: "thermal slowdown (hardware)",
    0x80: "power brake (hardware)",
}
_BOARD_RAILS = re.compile(r"^(VDD_IN|POM_5V_IN|VIN|VDD_5V_IN|SYS_IN)$", re.IGNORECASE)


@dataclass
class _Reader:
    """One signal: ``kind`` is power (W), energy (J, cumulative), temp (°C), clock (MHz) or reasons."""

    name: str
    kind: str
    read: Callable[[], float]
    in_total: bool = False  # counted in the headline energy
    board: bool = False  # a whole-board meter: the headline energy is these alone
    wrap: float | None = None  # energy counters: the value (J) at which the counter restarts from 0
    limit: float | None = None  # temperatures: the sensor's own limit
    values: list[float] = field(default_factory=list)


def _read_number(path: Path, scale: float) -> Callable[[], float]:
    def read() -> float:
        return int(path.read_text().strip()) * scale

    return read


def _readable(path: Path, scale: float) -> tuple[Callable[[], float] | None, str | None]:
    """A reader for a numeric sysfs file, or the reason it cannot be read."""
    reader = _read_number(path, scale)
    try:
        reader()
    except FileNotFoundError:
        return None, f"{path.name}: does not exist"
    except PermissionError:
        return None, f"{path}: permission denied"
    except (OSError, ValueError) as e:
        return None, f"{path}: {getattr(e, 'strerror', None) or e}"
    return reader, None


def _text(path: Path, default: str) -> str:
    try:
        return path.read_text().strip() or default
    except OSError:
        return default


class EnergySampler:
    """Samples power, temperature and clocks in a background thread during one benchmark configuration.

    Use it as a context manager around the run, then ask for :meth:`summary`::

        with EnergySampler() as sampler:
            run()
        record["energy"] = sampler.summary(inferences=n)

    Args:
        sysroot: where ``/sys`` is read from (a fake tree in tests).
        interval_s: seconds between samples (> 0).
        temp_limit_c: the limit for a temperature sensor that states none.
        clock_drop: the fall of a clock (first third of the run to the last) that counts as throttling.
        nvml: also sample NVIDIA GPUs through NVML (``nvidia-ml-py``).
    """

    def __init__(
        self,
        *,
        sysroot: str | Path = "/",
        interval_s: float = 0.1,
        temp_limit_c: float = DEFAULT_TEMP_LIMIT_C,
        clock_drop: float = 0.15,
        nvml: bool = True,
    ) -> None:
        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        self.sysroot = Path(sysroot)
        self.interval_s = float(interval_s)
        self.temp_limit_c = float(temp_limit_c)
        self.clock_drop = float(clock_drop)
        self.unavailable: dict[str, str] = {}
        self.readers: list[_Reader] = []
        self.times: list[float] = []
        self._nvml: Any = None
        self._errors: tuple[type[BaseException], ...] = (OSError, ValueError)  # what a failed reading raises
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._discover(nvml)

    # ------------------------------------------------------------------------------- discovery

    def _add(self, reader: _Reader) -> None:
        """Keep a reader under a name unique for its kind (two NVMe drives both call their sensor 'Composite')."""
        names = {r.name for r in self.readers if r.kind == reader.kind}
        base, n = reader.name, 2
        while reader.name in names:
            reader.name = f"{base} #{n}"
            n += 1
        self.readers.append(reader)

    def _sys(self, rel: str) -> Path:
        return self.sysroot / rel.lstrip("/")

    def _discover(self, nvml: bool) -> None:
        self._hwmon()
        self._ina3221_iio()
        self._rapl()
        self._thermal_zones()
        self._cpufreq()
        self._devfreq()
        if nvml:
            self._nvml_devices()
        else:
            self.unavailable["NVML"] = "not sampled (disabled)"

    def _hwmon(self) -> None:
        root = self._sys("/sys/class/hwmon")
        dirs = sorted(root.glob("hwmon*"))
        powers = temps = ina = 0
        denied: list[str] = []
        for d in dirs:
            chip = _text(d / "name", d.name)
            board_meter = chip == "power_meter"
            inputs = sorted(d.glob("power*_input"))
            have = {f.name.split("_")[0] for f in inputs}
            # a channel with both an instant and an averaged reading is one sensor: take the instant one
            averages = [f for f in sorted(d.glob("power*_average")) if f.name.split("_")[0] not in have]
            for f in inputs + averages:
                label = _text(f.with_name(f.name.split("_")[0] + "_label"), f.name.split("_")[0])
                reader, why = _readable(f, 1e-6)
                if reader is None:
                    denied.append(why or f.name)
                    continue
                self._add(_Reader(f"hwmon:{chip}:{label}", "power", reader,
                                            in_total=True, board=board_meter))
                powers += 1
            if chip == "ina3221":
                ina += self._ina3221_hwmon(d)
            for f in sorted(d.glob("temp*_input")):
                stem = f.name[: -len("_input")]
                reader, why = _readable(f, 1e-3)
                if reader is None:
                    denied.append(why or f.name)
                    continue
                limit = None
                for suffix in ("_max", "_crit"):
                    lim, _ = _readable(f.with_name(stem + suffix), 1e-3)
                    if lim is not None and lim() > 0:
                        limit = lim()
                        break
                label = _text(f.with_name(stem + "_label"), stem)
                self._add(_Reader(f"hwmon:{chip}:{label}", "temp", reader, limit=limit))
                temps += 1
        if not dirs:
            reason = "no /sys/class/hwmon/hwmon*"
            self.unavailable["hwmon power"] = reason
            self.unavailable["hwmon temperature"] = reason
            return
        more = f" ({'; '.join(denied[:3])})" if denied else ""
        if not powers and not ina:
            self.unavailable["hwmon power"] = f"no readable power*_input in {len(dirs)} hwmon device(s){more}"
        if not temps:
            self.unavailable["hwmon temperature"] = f"no readable temp*_input in {len(dirs)} hwmon device(s){more}"

    def _ina3221_hwmon(self, d: Path) -> int:
        """INA3221 rails as hwmon channels: power = bus voltage (mV) x current (mA)."""
        n = 0
        for volt in sorted(d.glob("in[0-9]*_input")):
            ch = volt.name[2 : -len("_input")]
            curr = d / f"curr{ch}_input"
            if not curr.exists():
                continue
            rv, why_v = _readable(volt, 1e-3)
            rc, why_c = _readable(curr, 1e-3)
            if rv is None or rc is None:
                self.unavailable[f"INA3221 channel {ch}"] = why_v or why_c or "unreadable"
                continue
            rail = _text(d / f"in{ch}_label", f"channel {ch}")

            def read(rv: Callable[[], float] = rv, rc: Callable[[], float] = rc) -> float:
                return rv() * rc()

            board = bool(_BOARD_RAILS.match(rail))
            self._add(_Reader(f"ina3221:{rail}", "power", read, in_total=board, board=board))
            n += 1
        return n

    def _ina3221_iio(self) -> None:
        """Older Jetson kernels: INA3221 rails as IIO ``in_power*_input`` (mW) with ``rail_name_*``."""
        files = sorted(self._sys("/sys/bus/i2c/drivers/ina3221x").glob("*/iio:device*/in_power*_input"))
        if not files:
            if not any(r.name.startswith("ina3221:") for r in self.readers):
                self.unavailable["INA3221"] = (
                    "no /sys/bus/i2c/drivers/ina3221x/*/iio:device*/in_power*_input and no hwmon 'ina3221' "
                    "(not a Jetson)"
                )
            return
        for f in files:
            idx = f.name[len("in_power") : -len("_input")]
            rail = _text(f.with_name(f"rail_name_{idx}"), f"channel {idx}")
            reader, why = _readable(f, 1e-3)
            if reader is None:
                self.unavailable[f"INA3221 {rail}"] = why or "unreadable"
                continue
            board = bool(_BOARD_RAILS.match(rail))
            self._add(_Reader(f"ina3221:{rail}", "power", reader, in_total=board, board=board))

    def _rapl(self) -> None:
        domains = sorted(self._sys("/sys/class/powercap").glob("intel-rapl:[0-9]"))
        domains = [d for d in domains if re.fullmatch(r"intel-rapl:\d+", d.name)]
        if not domains:
            self.unavailable["RAPL"] = "no /sys/class/powercap/intel-rapl:* (not an Intel/AMD CPU with powercap)"
            return
        for d in domains:
            name = _text(d / "name", d.name)
            reader, why = _readable(d / "energy_uj", 1e-6)
            if reader is None:
                reason = why or "unreadable"
                if "permission denied" in reason:
                    reason += " (root only on recent kernels)"
                self.unavailable[f"RAPL {name}"] = reason
                continue
            wrap_reader, _ = _readable(d / "max_energy_range_uj", 1e-6)
            wrap = wrap_reader() if wrap_reader is not None else None
            if wrap is None:
                self.unavailable[f"RAPL {name} wrap"] = "max_energy_range_uj unreadable: a counter wrap is dropped"
            self._add(_Reader(f"rapl:{name}", "energy", reader, in_total=True, wrap=wrap))

    def _thermal_zones(self) -> None:
        zones = sorted(self._sys("/sys/class/thermal").glob("thermal_zone*"))
        found = 0
        for z in zones:
            reader, _ = _readable(z / "temp", 1e-3)
            if reader is None:
                continue
            trips: dict[str, list[float]] = {}
            for t in z.glob("trip_point_*_temp"):
                kind = _text(t.with_name(t.name.replace("_temp", "_type")), "")
                lim, _ = _readable(t, 1e-3)
                if lim is not None and lim() > 0:
                    trips.setdefault(kind, []).append(lim())
            limit = min(trips.get("passive") or trips.get("hot") or trips.get("critical") or [math.nan])
            kind = _text(z / "type", z.name)
            self._add(_Reader(f"thermal:{kind}", "temp", reader,
                                        limit=None if math.isnan(limit) else limit))
            found += 1
        if not found:
            self.unavailable["thermal zones"] = "no readable /sys/class/thermal/thermal_zone*/temp"

    def _cpufreq(self) -> None:
        files = sorted(self._sys("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq"))
        readers = [r for r in (_readable(f, 1e-3)[0] for f in files) if r is not None]
        if not readers:
            self.unavailable["cpufreq"] = "no readable /sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq"
            return

        def fastest_core() -> float:
            vals = []
            for r in readers:
                try:
                    vals.append(r())
                except (OSError, ValueError):
                    continue
            if not vals:
                raise OSError("no core's clock is readable")
            return max(vals)

        self._add(_Reader("cpu:fastest core", "clock", fastest_core))

    def _devfreq(self) -> None:
        for f in sorted(self._sys("/sys/class/devfreq").glob("*/cur_freq")):
            reader, _ = _readable(f, 1e-6)  # Hz -> MHz
            if reader is not None:
                self._add(_Reader(f"devfreq:{f.parent.name}", "clock", reader))

    def _nvml_devices(self) -> None:
        try:
            pynvml = importlib.import_module("pynvml")
        except ImportError:
            self.unavailable["NVML"] = "no library (pip install nvidia-ml-py, part of fusionedge[bench])"
            return
        nvml_error = pynvml.NVMLError
        try:
            pynvml.nvmlInit()
        except nvml_error as e:  # no driver, no GPU
            self.unavailable["NVML"] = f"cannot initialise ({type(e).__name__}: {e})"
            return
        self._nvml = pynvml
        self._errors = (OSError, ValueError, nvml_error)
        try:
            count = pynvml.nvmlDeviceGetCount()
        except nvml_error as e:
            self.unavailable["NVML"] = f"cannot count GPUs ({type(e).__name__}: {e})"
            return
        if count == 0:
            self.unavailable["NVML"] = "no NVIDIA GPU"
        for i in range(count):
            try:
                self._nvml_device(pynvml, i)
            except nvml_error as e:
                self.unavailable[f"NVML gpu{i}"] = f"{type(e).__name__}: {e}"

    def _nvml_device(self, nv: Any, i: int) -> None:
        h = nv.nvmlDeviceGetHandleByIndex(i)
        name = f"gpu{i}"

        def probe(field_name: str, fn: Callable[[], float]) -> Callable[[], float] | None:
            try:
                fn()
                return fn
            except (nv.NVMLError, AttributeError) as e:  # not supported by this GPU / this library version
                self.unavailable[f"NVML {name} {field_name}"] = f"{type(e).__name__}: {e}"
                return None

        energy = probe("energy", lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h) * 1e-3)
        if energy is not None:
            self._add(_Reader(f"nvml:{name}", "energy", energy, in_total=True))
        else:
            power = probe("power", lambda: nv.nvmlDeviceGetPowerUsage(h) * 1e-3)
            if power is not None:  # integrated instead: the missing counter costs nothing
                self._add(_Reader(f"nvml:{name}", "power", power, in_total=True))
                self.unavailable.pop(f"NVML {name} energy", None)
        temp = probe("temperature", lambda: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)))
        if temp is not None:
            try:
                limit = float(nv.nvmlDeviceGetTemperatureThreshold(h, nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN))
            except nv.NVMLError:
                limit = None
            self._add(_Reader(f"nvml:{name}", "temp", temp, limit=limit))
        clock = probe("sm clock", lambda: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)))
        if clock is not None:
            self._add(_Reader(f"nvml:{name} sm", "clock", clock))
        getter = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        if getter is not None:
            reasons = probe("clock-event reasons", lambda: float(getter(h)))
            if reasons is not None:
                self._add(_Reader(f"nvml:{name}", "reasons", reasons))

    # -------------------------------------------------------------------------------- sampling

    def sample(self) -> None:
        """Take one reading of every source now (the thread calls this every ``interval_s``)."""
        t = time.perf_counter()
        row = []
        for r in self.readers:
            try:
                row.append(float(r.read()))
            except self._errors:  # a sensor that fails mid-run leaves a gap, not a crash
                row.append(math.nan)
        with self._lock:
            self.times.append(t)
            for r, v in zip(self.readers, row, strict=True):
                r.values.append(v)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> EnergySampler:
        """Take the first sample and start the background thread."""
        self._stop.clear()
        self.sample()
        if self.readers:
            self._thread = threading.Thread(target=self._loop, name="fusionedge-energy", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and take the last sample."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample()
        if self._nvml is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
            self._nvml = None

    def __enter__(self) -> EnergySampler:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------------------------- results

    def _joules(self, r: _Reader) -> float | None:
        t, v = self.times, r.values
        total, used = 0.0, 0
        for i in range(1, len(v)):
            a, b = v[i - 1], v[i]
            if math.isnan(a) or math.isnan(b):
                continue
            if r.kind == "power":
                total += (a + b) / 2.0 * (t[i] - t[i - 1])
            else:
                d = b - a
                if d < 0:
                    if r.wrap is None:
                        continue
                    d += r.wrap
                total += d
            used += 1
        return total if used else None

    def summary(self, inferences: int) -> dict[str, Any]:
        """What the run drew and whether it throttled.

        Args:
            inferences: samples inferred during the window (the configuration's ``samples``).

        Returns:
            ``{"window_s", "interval_s", "readings", "joules", "joules_per_inference", "mean_watts",
            "total_of", "sources": {name: {"joules", "mean_watts", "max_watts"?, "method"}},
            "temperature_c": {name: {"max", "limit"}}, "clocks_mhz": {name: {"first", "last", "min",
            "max"}}, "throttled", "throttle_reasons", "unavailable": {source: reason}}``. ``joules`` and
            the figures made from it are null when no energy source is readable.
        """
        with self._lock:
            window = self.times[-1] - self.times[0] if len(self.times) > 1 else 0.0
            sources: dict[str, dict[str, Any]] = {}
            energies: dict[str, tuple[_Reader, float]] = {}
            temps: dict[str, dict[str, Any]] = {}
            clocks: dict[str, dict[str, Any]] = {}
            reasons: list[str] = []
            for r in self.readers:
                vals = [x for x in r.values if not math.isnan(x)]
                if r.kind in ("power", "energy"):
                    j = self._joules(r)
                    if j is None:
                        continue
                    energies[r.name] = (r, j)
                    s: dict[str, Any] = {
                        "joules": round(j, 6),
                        "mean_watts": round(j / window, 4) if window > 0 else None,
                        "method": "power integral" if r.kind == "power" else "energy counter",
                    }
                    if r.kind == "power" and vals:
                        s["max_watts"] = round(max(vals), 4)
                    sources[r.name] = s
                elif r.kind == "temp" and vals:
                    limit = r.limit if r.limit is not None else self.temp_limit_c
                    temps[r.name] = {"max": round(max(vals), 2), "limit": round(limit, 2)}
                    if max(vals) >= limit:
                        reasons.append(f"{r.name} reached {max(vals):.1f} °C (limit {limit:.1f} °C)")
                elif r.kind == "clock" and vals:
                    clocks[r.name] = {"first": round(vals[0], 1), "last": round(vals[-1], 1),
                                      "min": round(min(vals), 1), "max": round(max(vals), 1)}
                    drop = self._clock_drop(vals)
                    if drop is not None:
                        reasons.append(f"{r.name} clock fell from {drop[0]:.0f} to {drop[1]:.0f} MHz")
                elif r.kind == "reasons" and vals:
                    seen = 0
                    for x in vals:
                        seen |= int(x)
                    for bit, what in NVML_THROTTLE_REASONS.items():
                        if seen & bit:
                            reasons.append(f"{r.name}: {what}")
        boards = [n for n, (r, _) in energies.items() if r.board]
        total_of = boards or [n for n, (r, _) in energies.items() if r.in_total]
        joules = sum(energies[n][1] for n in total_of) if total_of else None
        per = joules / inferences if joules is not None and inferences > 0 else None
        return {
            "window_s": round(window, 4),
            "interval_s": self.interval_s,
            "readings": len(self.times),
            "joules": None if joules is None else round(joules, 6),
            "joules_per_inference": None if per is None else round(per, 8),
            "mean_watts": round(joules / window, 4) if joules is not None and window > 0 else None,
            "total_of": total_of,
            "sources": sources,
            "temperature_c": temps,
            "clocks_mhz": clocks,
            "throttled": bool(reasons),
            "throttle_reasons": reasons,
            "unavailable": dict(sorted(self.unavailable.items())),
        }

    def _clock_drop(self, vals: list[float]) -> tuple[float, float] | None:
        """(early, late) medians when the last third of the run ran clearly slower than the first."""
        if len(vals) < 6:
            return None
        k = len(vals) // 3
        early, late = _median(vals[:k]), _median(vals[-k:])
        if early > 0 and late < (1.0 - self.clock_drop) * early:
            return early, late
        return None


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0
