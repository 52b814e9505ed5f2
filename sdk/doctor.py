"""What this machine can run: inference libraries, GPU, video I/O, native code, extras, broker, clock.

A deployment fails late and obscurely when a piece is missing (an ONNX Runtime build without the
CUDA provider, pip's OpenCV without GStreamer on a Jetson, a preprocessing extension that was not
built). :func:`run_checks` looks at each piece the runtime may use and returns a :class:`Report`
of :class:`Check` results, each saying what was found or why it is missing. :data:`NEEDS` are the
names a caller (``fusionedge doctor --need X``) can require; :meth:`Report.missing` lists those
that are not usable. Every check is read-only, bounded in time (subprocesses and sockets have
timeouts) and imports nothing heavier than the runtime install (never torch).
"""

from __future__ import annotations

import ctypes
import importlib
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fusionedge.sdk.errors import InputError

__all__ = ["NEEDS", "Check", "Report", "mqtt_probe", "opencv_video_io", "parse_host_port", "run_checks"]

#: Names ``--need`` accepts: each is one check of :func:`run_checks` that must come out usable.
NEEDS = ("onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt", "cuda", "gstreamer", "ffmpeg",
         "native", "native-cuda", "train", "fleet", "bench", "telemetry", "mqtt")

_CLOCKSOURCE = Path("/sys/devices/system/clocksource/clocksource0")
_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
#: Clock sources whose reads are cheap and monotonic across cores (time.monotonic() stays fast).
_GOOD_CLOCKS = ("tsc", "arch_sys_counter", "kvm-clock")


@dataclass
class Check:
    """One thing looked at.

    Attributes:
        name: what was checked (one of :data:`NEEDS`, or an informational name such as ``clock``).
        ok: usable here.
        detail: what was found (a version, a path, a setting).
        reason: why it is not usable, when ``ok`` is False.
        info: further facts, for ``--json`` readers.
    """

    name: str
    ok: bool
    detail: str = ""
    reason: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """Every check of one :func:`run_checks`, in the order they ran."""

    checks: list[Check]

    def get(self, name: str) -> Check | None:
        """The check called ``name``, or None when it did not run (``mqtt`` without a broker)."""
        return next((c for c in self.checks if c.name == name), None)

    def missing(self, needs: list[str] | tuple[str, ...]) -> list[Check]:
        """The needed checks that are not usable (a need that did not run counts as missing).

        Raises:
            InputError: a name that is not one of :data:`NEEDS`.
        """
        out = []
        for name in needs:
            if name not in NEEDS:
                raise InputError(f"unknown need {name!r}; one of {', '.join(NEEDS)}")
            check = self.get(name)
            if check is None:
                reason = ("not checked: give the broker as --mqtt HOST:PORT" if name == "mqtt" else
                          "not an extra of the installed fusionedge's metadata (reinstall fusionedge)")
                check = Check(name, False, reason=reason)
            if not check.ok:
                out.append(check)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data: ``{"checks": {name: {ok, detail, reason, info}}}``."""
        return {"checks": {c.name: {k: v for k, v in asdict(c).items() if k != "name"} for c in self.checks}}


# ------------------------------------------------------------------------------------- helpers


def _run(cmd: list[str], timeout_s: float) -> tuple[int, str]:
    """Run a command; (exit status, stdout+stderr). A missing program or a timeout is status -1."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, f"{type(e).__name__}: {e}"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _import(module: str) -> tuple[Any, str | None]:
    """(the module, None) or (None, why it does not import)."""
    try:
        return importlib.import_module(module), None
    except Exception as e:  # noqa: BLE001 - an ImportError, or an OSError from a missing shared library
        return None, f"cannot import {module} ({type(e).__name__}: {e})"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


# ------------------------------------------------------------------------------------- checks


def _platform_check() -> Check:
    info: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                            "system": platform.platform(), "cpus": os.cpu_count()}
    tegra = _read(_TEGRA_RELEASE)
    if tegra is not None:
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", tegra)
        info["l4t"] = f"{m.group(1)}.{m.group(2)}" if m else tegra.splitlines()[0]
    try:
        from fusionedge.sdk import __version__
    except ImportError:  # pragma: no cover - sdk always has it
        __version__ = "0+unknown"
    info["fusionedge"] = __version__
    detail = f"fusionedge {__version__}, Python {info['python']} on {info['machine']}"
    if "l4t" in info:
        detail += f", Jetson L4T {info['l4t']}"
    return Check("platform", True, detail, info=info)


def _onnxruntime_checks() -> list[Check]:
    ort, why = _import("onnxruntime")
    if ort is None:
        return [Check("onnxruntime", False, reason=why)]
    providers = list(ort.get_available_providers())
    checks = [Check("onnxruntime", True, f"{ort.__version__}; providers: {', '.join(providers)}",
                    info={"version": ort.__version__, "providers": providers,
                          "device": getattr(ort, "get_device", lambda: None)()})]
    backends, why = _import("fusionedge.sdk.backends")
    for name in ("onnxruntime-cuda", "onnxruntime-trt"):
        reason = why if backends is None else backends.backend_class(name).unavailable_reason()
        checks.append(Check(name, reason is None, "execution provider in this build" if reason is None else "",
                            reason=reason))
    return checks


def _cuda_check(timeout_s: float) -> Check:
    """The NVIDIA driver and GPU: nvidia-smi where it exists, else the CUDA runtime through cuda-python."""
    info: dict[str, Any] = {}
    driver = _read(Path("/proc/driver/nvidia/version"))
    if driver is not None:
        info["proc_driver"] = driver.splitlines()[0]
    if shutil.which("nvidia-smi"):
        code, out = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], timeout_s)
        if code == 0 and out:
            gpus = [line.strip() for line in out.splitlines() if line.strip()]
            info["gpus"] = gpus
            return Check("cuda", True, "; ".join(gpus), info=info)
        return Check("cuda", False, reason=f"nvidia-smi failed: {out.splitlines()[0] if out else code}",
                     info=info)
    runtime, _ = _import("cuda.bindings.runtime")
    if runtime is not None:
        err, count = runtime.cudaGetDeviceCount()
        if int(err) == 0 and count > 0:
            _, version = runtime.cudaRuntimeGetVersion()
            info.update(devices=int(count), runtime=int(version))
            return Check("cuda", True, f"{count} device(s), CUDA runtime {version}", info=info)
        return Check("cuda", False, reason=f"cuda-python sees no device ({err})", info=info)
    if _TEGRA_RELEASE.exists():
        return Check("cuda", False, reason="Jetson without nvidia-smi and without cuda-python: "
                                           "pip install 'fusionedge[tensorrt]' to query the GPU", info=info)
    return Check("cuda", False, reason="no NVIDIA driver: nvidia-smi not found and cuda-python not installed",
                 info=info)


def _tensorrt_check() -> Check:
    trt, why = _import("tensorrt")
    if trt is None:
        return Check("tensorrt", False, reason=f"{why}; on x86: pip install 'fusionedge[tensorrt]', "
                                               "on a Jetson: JetPack's python3-libnvinfer")
    backends, why = _import("fusionedge.sdk.backends")
    reason = why if backends is None else backends.backend_class("tensorrt").unavailable_reason()
    return Check("tensorrt", reason is None, f"TensorRT {trt.__version__}", reason=reason,
                 info={"version": trt.__version__})


def opencv_video_io(build_information: str) -> dict[str, str]:
    """The ``Video I/O`` section of ``cv2.getBuildInformation()``: ``{"GStreamer": "YES (1.20.3)", ...}``.

    Only top-level entries are kept (``FFMPEG``, ``GStreamer``, ``v4l/v4l2``...), not FFmpeg's
    per-library sub-lines.
    """
    section = build_information.split("Video I/O:", 1)
    if len(section) < 2:
        return {}
    out: dict[str, str] = {}
    for line in section[1].splitlines()[1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= 2:  # the next section
            break
        m = re.match(r"\s*([^:]+?):\s+(.*)$", line)
        if m and indent <= 4:
            out[m.group(1).strip()] = m.group(2).strip()
    return out


def _opencv_checks() -> list[Check]:
    cv2, why = _import("cv2")
    if cv2 is None:
        reason = f"{why}; on a Jetson use the system OpenCV (python3-opencv), elsewhere opencv-python-headless"
        return [Check("opencv", False, reason=reason), Check("gstreamer", False, reason=reason),
                Check("ffmpeg", False, reason=reason)]
    video_io = opencv_video_io(cv2.getBuildInformation())
    path = getattr(cv2, "__file__", None) or ""
    checks = [Check("opencv", True, f"{cv2.__version__} from {path}",
                    info={"version": cv2.__version__, "path": path, "video_io": video_io})]
    for name, key in (("gstreamer", "GStreamer"), ("ffmpeg", "FFMPEG")):
        value = video_io.get(key, "not listed")
        ok = value.upper().startswith("YES")
        hint = (" (csi://, rtsp:// and gst:// sources need it: pip's OpenCV has none; on a Jetson use the system "
                "OpenCV, see docs/CONTAINERS.md)" if name == "gstreamer" else " (video files need it)")
        checks.append(Check(name, ok, value, reason=None if ok else f"OpenCV built without {key}{hint}"))
    return checks


def _native_checks() -> list[Check]:
    native, why = _import("fusionedge.sdk._native")
    if native is None:
        reason = f"{why}; preprocessing uses the NumPy path (build it with `pip install .`)"
        return [Check("native", False, reason=reason),
                Check("native-cuda", False, reason="the native extension is not built")]
    ext = Path(native.__file__)
    checks = [Check("native", True, str(ext))]
    lib = ext.with_name("libfusionedge_cuda.so")
    if not lib.is_file():
        checks.append(Check("native-cuda", False, reason=f"{lib.name} not built (CMake found no CUDA compiler, "
                                                          "or FUSIONEDGE_CUDA=OFF)"))
        return checks
    try:
        ctypes.CDLL(str(lib)).fusionedge_preprocess_frame_cuda  # noqa: B018 - the symbol must resolve
    except (OSError, AttributeError) as e:
        checks.append(Check("native-cuda", False, reason=f"{lib} does not load: {e}"))
    else:
        checks.append(Check("native-cuda", True, str(lib)))
    return checks


def _requirement_name(requirement: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return m.group(1) if m else requirement


def _applies_here(requirement: str) -> bool:
    """False for a requirement whose environment marker excludes this interpreter (``tomli`` on 3.11+).

    The ``extra == ...`` part of a marker only says which group the requirement belongs to, so it is
    taken as satisfied. Without the ``packaging`` library every requirement counts.
    """
    _, sep, marker = requirement.partition(";")
    if not sep:
        return True
    try:
        from packaging.markers import Marker
    except ImportError:
        return True
    m = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
    return Marker(marker).evaluate({"extra": m.group(1) if m else ""})


def _packages_checks() -> list[Check]:
    """The runtime's own dependencies, then each optional extra: installed when all its packages are.

    A device installed with ``--no-deps`` (a Jetson keeping its system OpenCV) is told here which
    runtime dependency it still lacks. OpenCV counts as present when ``cv2`` imports, whichever
    package provides it.
    """
    from importlib.metadata import PackageNotFoundError, distribution, version

    try:
        requires = distribution("fusionedge").requires or []
    except PackageNotFoundError:
        return [Check(name, False, reason="fusionedge is not installed (no package metadata)")
                for name in ("runtime", "train", "fleet", "bench", "tensorrt-extra")]
    groups: dict[str, list[str]] = {"runtime": []}
    for req in requires:
        m = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
        if _requirement_name(req) != "fusionedge" and _applies_here(req):
            groups.setdefault(m.group(1) if m else "runtime", []).append(_requirement_name(req))
    checks = []
    for extra, names in groups.items():
        if extra == "dev":
            continue
        found, absent = {}, []
        for name in names:
            try:
                found[name] = version(name)
            except PackageNotFoundError:
                cv2 = _import("cv2")[0] if name.startswith("opencv") else None
                if cv2 is not None:
                    found["cv2"] = f"{cv2.__version__} (not from pip)"
                else:
                    absent.append(name)
        check_name = "tensorrt-extra" if extra == "tensorrt" else extra
        detail = ", ".join(f"{k} {v}" for k, v in found.items())
        install = "pip install fusionedge" if extra == "runtime" else f"pip install 'fusionedge[{extra}]'"
        reason = f"not installed: {', '.join(absent)} ({install})" if absent else None
        checks.append(Check(check_name, not absent, detail, reason=reason, info={"packages": found}))
    return checks


def parse_host_port(text: str, default_port: int = 1883) -> tuple[str, int]:
    """``"broker:1883"`` / ``"[::1]:1883"`` / ``"broker"`` -> (host, port).

    Raises:
        InputError: an empty host or a port that is not 1-65535.
    """
    host, port = text, str(default_port)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


_CONNACK_CODES = {1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
                  4: "bad user name or password", 5: "not authorized (the broker requires a login)"}


def mqtt_probe(host: str, port: int, timeout_s: float = 2.0) -> Check:
    """Connect to an MQTT broker and exchange CONNECT/CONNACK (MQTT 3.1.1, clean session).

    A broker that answers with a refusal code is reachable: the check says why it refused (most often
    a login is needed). Only a failed TCP connection, a timeout or an answer that is not MQTT make
    the check fail.
    """
    client_id = f"fusionedge-doctor-{os.getpid()}".encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol name, level 4, clean session, keep-alive 10 s
    payload = len(client_id).to_bytes(2, "big") + client_id
    connect = b"\x10" + bytes([len(variable) + len(payload)]) + variable + payload
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(connect)
            answer = b""
            while len(answer) < 4:
                chunk = sock.recv(4 - len(answer))
                if not chunk:
                    break
                answer += chunk
            if len(answer) < 4 or answer[0] != 0x20 or answer[1] != 0x02:
                return Check("mqtt", False, where, reason=f"{where} answered, but not with an MQTT CONNACK "
                                                          f"(a TLS port, or not a broker?): {answer[:8]!r}")
            code = answer[3]
            if code == 0:
                sock.sendall(b"\xe0\x00")  # DISCONNECT
            detail = f"{where}: broker reachable" + ("" if code == 0 else f", {_CONNACK_CODES.get(code, code)}")
            return Check("mqtt", True, detail, info={"connack": code})
    except OSError as e:
        return Check("mqtt", False, where, reason=f"{where} unreachable: {e.strerror or e}")


def _clock_check() -> Check:
    current = _read(_CLOCKSOURCE / "current_clocksource")
    if current is None:
        return Check("clock", True, "clock source not readable here (not Linux?)")
    available = (_read(_CLOCKSOURCE / "available_clocksource") or "").split()
    info = {"current": current, "available": available}
    if current in _GOOD_CLOCKS:
        return Check("clock", True, f"{current} (available: {' '.join(available)})", info=info)
    return Check("clock", True, f"{current} (available: {' '.join(available)}): reading the time is slow on "
                                f"this clock source, which adds to every timestamp the pipeline takes", info=info)


def run_checks(*, mqtt: str | None = None, timeout_s: float = 3.0) -> Report:
    """Look at everything the runtime may use on this machine.

    Args:
        mqtt: a broker ``HOST:PORT`` to try (MQTT CONNECT); None skips the ``mqtt`` check.
        timeout_s: limit of each subprocess and of the broker connection.

    Raises:
        InputError: ``mqtt`` is not ``HOST:PORT``.
    """
    broker = parse_host_port(mqtt) if mqtt is not None else None
    checks = [_platform_check(), *_onnxruntime_checks(), _cuda_check(timeout_s), _tensorrt_check(),
              *_opencv_checks(), *_native_checks(), *_packages_checks()]
    if broker is not None:
        checks.append(mqtt_probe(*broker, timeout_s=timeout_s))
    checks.append(_clock_check())
    if sys.platform != "linux":
        checks.append(Check("os", True, f"{sys.platform}: device features (v4l2, csi://, ALSA) are Linux-only"))
    return Report(checks)
