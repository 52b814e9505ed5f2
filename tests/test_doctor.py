"""``fusionedge doctor`` on this machine, for real: what is installed is reported present with the
version the library itself gives, what is not (TensorRT, a GPU) is reported missing with a reason,
``--need`` sets the exit status, and ``--mqtt`` talks MQTT to a real mosquitto."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from _fleet import Mosquitto, free_port
from fusionedge.sdk.doctor import NEEDS, opencv_video_io, parse_host_port, run_checks
from fusionedge.sdk.errors import InputError

FUSIONEDGE = Path(sys.executable).parent / "fusionedge"


def doctor(*argv: str) -> tuple[int, dict, str]:
    proc = subprocess.run([str(FUSIONEDGE), "doctor", "--json", *argv], capture_output=True, text=True,
                          timeout=120, check=False)
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else {}), proc.stderr


@pytest.fixture(scope="module")
def report() -> dict:
    code, doc, err = doctor()
    assert code == 0, err
    return doc


def test_what_is_installed_here_is_reported_present_with_its_own_version(report):
    import cv2
    import onnxruntime as ort
    from fusionedge.sdk.preprocess import NATIVE_AVAILABLE

    checks = report["checks"]
    assert checks["onnxruntime"]["ok"] and checks["onnxruntime"]["info"]["version"] == ort.__version__
    assert checks["onnxruntime"]["info"]["providers"] == ort.get_available_providers()
    assert checks["opencv"]["ok"] and checks["opencv"]["info"]["version"] == cv2.__version__
    build = cv2.getBuildInformation()
    assert checks["ffmpeg"]["ok"] == any(line.split() == ["FFMPEG:", "YES"] for line in build.splitlines())
    assert checks["gstreamer"]["ok"] == any(line.split()[:2] == ["GStreamer:", "YES"] for line in build.splitlines())
    assert checks["native"]["ok"] is NATIVE_AVAILABLE
    assert checks["runtime"]["ok"], checks["runtime"]
    for extra, dist in (("train", "torch"), ("fleet", "tuf"), ("bench", "mlcommons-loadgen")):
        try:
            assert checks[extra]["info"]["packages"][dist] == version(dist), extra
        except PackageNotFoundError:
            assert not checks[extra]["ok"] and dist in checks[extra]["reason"], extra
        assert checks[extra]["ok"] is (checks[extra]["reason"] is None)
    clock = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")
    if clock.exists():
        assert checks["clock"]["info"]["current"] == clock.read_text().strip()


def test_what_is_not_here_is_reported_missing_with_a_reason(report):
    checks = report["checks"]
    if importlib.util.find_spec("tensorrt") is None:
        assert not checks["tensorrt"]["ok"] and "tensorrt" in checks["tensorrt"]["reason"]
    if shutil.which("nvidia-smi") is None and importlib.util.find_spec("cuda") is None:
        assert not checks["cuda"]["ok"] and "nvidia-smi" in checks["cuda"]["reason"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert not checks["onnxruntime-cuda"]["ok"]
        assert "CUDAExecutionProvider" in checks["onnxruntime-cuda"]["reason"]
    for name, check in checks.items():
        assert check["ok"] or check["reason"], f"{name} is missing without a reason"


def test_need_sets_the_exit_status():
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    code, doc, _ = doctor("--need", "tensorrt", "--need", "onnxruntime")
    assert code == 1 and doc["missing"] == ["tensorrt"] and doc["ok"] is False
    proc = subprocess.run([str(FUSIONEDGE), "doctor", "--need", "tensorrt"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 1 and proc.stdout.splitlines()[-1] == "missing: tensorrt"
    code, doc, _ = doctor("--need", "onnxruntime", "--need", "ffmpeg")
    assert code == 0 and doc["missing"] == []


def test_an_unknown_need_is_a_usage_error():
    proc = subprocess.run([str(FUSIONEDGE), "doctor", "--need", "warpdrive"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2 and "warpdrive" in proc.stderr


def test_the_verb_offers_exactly_the_library_needs():
    from fusionedge.cli.doctor import _NEEDS

    assert _NEEDS == NEEDS


def test_mqtt_against_a_real_broker_is_reachable(tmp_path):
    broker = Mosquitto(tmp_path)
    try:
        code, doc, err = doctor("--mqtt", broker.address, "--need", "mqtt")
    finally:
        broker.close()
    assert code == 0, err
    mqtt = doc["checks"]["mqtt"]
    assert mqtt["ok"] and mqtt["info"]["connack"] == 0 and broker.address in mqtt["detail"]


def test_a_broker_that_wants_a_login_is_reachable_and_says_so(tmp_path):
    broker = Mosquitto(tmp_path, settings="allow_anonymous false\n")
    try:
        check = run_checks(mqtt=broker.address).get("mqtt")
    finally:
        broker.close()
    assert check.ok and check.info["connack"] == 5 and "login" in check.detail


def test_mqtt_on_a_closed_port_is_unreachable():
    address = f"127.0.0.1:{free_port()}"
    code, doc, _ = doctor("--mqtt", address, "--need", "mqtt")
    assert code == 1 and doc["missing"] == ["mqtt"]
    assert "unreachable" in doc["checks"]["mqtt"]["reason"]


def test_a_port_that_is_not_a_broker_is_not_taken_for_one():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer_http() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(64)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=answer_http, daemon=True)
    thread.start()
    try:
        check = run_checks(mqtt=f"127.0.0.1:{server.getsockname()[1]}", timeout_s=5).get("mqtt")
    finally:
        thread.join(timeout=5)
        server.close()
    assert not check.ok and "not with an MQTT CONNACK" in check.reason


def test_need_mqtt_without_a_broker_is_missing():
    code, doc, _ = doctor("--need", "mqtt")
    assert code == 1 and doc["missing"] == ["mqtt"] and "mqtt" not in doc["checks"]
    report = run_checks()
    assert "--mqtt HOST:PORT" in report.missing(["mqtt"])[0].reason
    report.checks = [c for c in report.checks if c.name != "telemetry"]  # metadata of an older install
    assert "reinstall" in report.missing(["telemetry"])[0].reason


def test_a_bad_broker_address_is_one_line_exit_2():
    proc = subprocess.run([str(FUSIONEDGE), "doctor", "--mqtt", "host:notaport"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["fusionedge doctor: error: expected HOST:PORT, got 'host:notaport'"]


def test_host_port_forms():
    assert parse_host_port("broker") == ("broker", 1883)
    assert parse_host_port("10.0.0.2:8883") == ("10.0.0.2", 8883)
    assert parse_host_port("[::1]:1884") == ("::1", 1884)
    for bad in ("", ":1883", "host:0", "host:70000"):
        with pytest.raises(InputError):
            parse_host_port(bad)


JETSON_VIDEO_IO = """
  Video I/O:
    DC1394:                      NO
    FFMPEG:                      YES
      avcodec:                   YES (58.54.100)
      avformat:                  YES (58.29.100)
    GStreamer:                   YES (1.20.3)
    v4l/v4l2:                    YES (linux/videodev2.h)

  Parallel framework:            TBB (ver 2020.1 interface 11101)
"""


def test_opencv_video_io_is_read_from_the_build_information():
    assert opencv_video_io(JETSON_VIDEO_IO) == {"DC1394": "NO", "FFMPEG": "YES", "GStreamer": "YES (1.20.3)",
                                                "v4l/v4l2": "YES (linux/videodev2.h)"}
    assert opencv_video_io("General configuration for OpenCV 4.8.0") == {}


def test_the_checks_import_no_torch():
    script = ("import sys\nfrom fusionedge.sdk.doctor import run_checks\nr = run_checks()\n"
              "print('torch' in sys.modules, r.get('onnxruntime').ok)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.split() == ["False", "True"]


def test_plain_output_is_one_line_per_check(report):
    proc = subprocess.run([str(FUSIONEDGE), "doctor"], capture_output=True, text=True, timeout=120, check=True)
    lines = proc.stdout.splitlines()
    assert len(lines) == len(report["checks"])
    assert all(line[:3] in ("ok ", "-- ") for line in lines)
