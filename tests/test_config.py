"""``--config FILE`` and ``FUSIONEDGE_*`` variables for ``fleet agent`` and ``run``, through the real
parser: flags > environment > file > defaults, and a bad key, type or file is one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fusionedge.cli.main import build_parser, main, parse_args
from fusionedge.sdk.errors import InputError

FUSIONEDGE = Path(sys.executable).parent / "fusionedge"

AGENT_TOML = """
url = "http://127.0.0.1:8000"
device_id = "cam-17"
state-dir = "state"
device_class = "x86-cpu"
model = "student"
interval = 600
timeout = 10
backends = ["tensorrt", "onnxruntime"]
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith(("FUSIONEDGE_AGENT_", "FUSIONEDGE_RUN_")):
            monkeypatch.delenv(name)


def _file(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / "etc" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def parse(*argv: str):
    return parse_args(build_parser(), list(argv))


def test_the_agent_takes_every_option_from_a_file(tmp_path):
    conf = _file(tmp_path, AGENT_TOML)
    args = parse("fleet", "agent", "--config", str(conf))
    assert (args.url, args.device_id, args.device_class, args.model) == ("http://127.0.0.1:8000", "cam-17",
                                                                         "x86-cpu", "student")
    assert args.state_dir == conf.parent / "state"  # relative to the file
    assert args.interval == 600.0 and isinstance(args.interval, float)
    assert args.timeout == 10.0 and args.backends == ["tensorrt", "onnxruntime"]
    assert args.latency_budget_ms == 2000.0  # not in the file: the built-in default


def test_flags_beat_the_environment_which_beats_the_file(tmp_path, monkeypatch):
    conf = _file(tmp_path, AGENT_TOML)
    monkeypatch.setenv("FUSIONEDGE_AGENT_TIMEOUT", "20")
    monkeypatch.setenv("FUSIONEDGE_AGENT_DEVICE_ID", "cam-18")
    args = parse("fleet", "agent", "--config", str(conf), "--timeout", "30")
    assert args.timeout == 30.0 and args.device_id == "cam-18" and args.model == "student"
    args = parse("fleet", "agent", "--config", str(conf))
    assert args.timeout == 20.0


def test_the_environment_alone_satisfies_required_options(monkeypatch, tmp_path):
    for key, value in (("URL", "http://127.0.0.1:9"), ("DEVICE_ID", "d"), ("STATE_DIR", str(tmp_path)),
                       ("DEVICE_CLASS", "x86-cpu"), ("MODEL", "m"), ("JSON", "yes"), ("MAX_CHECKS", "3")):
        monkeypatch.setenv(f"FUSIONEDGE_AGENT_{key}", value)
    args = parse("fleet", "agent")
    assert args.device_id == "d" and args.json is True and args.max_checks == 3
    assert args.state_dir == tmp_path


def test_without_file_or_environment_required_options_are_still_required(capsys):
    with pytest.raises(SystemExit) as e:
        parse("fleet", "agent", "--url", "u")
    assert e.value.code == 2 and "--device-id" in capsys.readouterr().err


def test_a_flag_of_an_exclusive_pair_beats_the_other_one_in_the_file(tmp_path):
    conf = _file(tmp_path, 'bundle = "b"\nvideo = "clip.mp4"\nfast = true\nstall_timeout = 2.5\n', "run.toml")
    args = parse("run", "--config", str(conf))
    assert args.realtime is False and args.stall_timeout == 2.5 and args.bundle == conf.parent / "b"
    assert args.video == "clip.mp4"  # a URI, not a path: kept as written
    assert parse("run", "--config", str(conf), "--realtime").realtime is True


def test_run_reads_its_own_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONEDGE_RUN_BUNDLE", str(tmp_path / "b"))
    monkeypatch.setenv("FUSIONEDGE_RUN_AUDIO", "mic://default")
    monkeypatch.setenv("FUSIONEDGE_RUN_NO_PROGRESS", "true")
    monkeypatch.setenv("FUSIONEDGE_RUN_POLICY", "offline")
    args = parse("run")
    assert args.bundle == tmp_path / "b" and args.audio == "mic://default"
    assert args.progress is False and args.policy == "offline"


@pytest.mark.parametrize("text,message", [
    ('devce_id = "x"\n', "unknown key 'devce_id'"),
    ("interval = \"often\"\n", "interval: expected a number, got 'often'"),
    ("max_checks = 2.5\n", "max_checks: expected an integer, got 2.5"),
    ("timeout = true\n", "timeout: expected a number, got True"),
    ("json = \"yes\"\n", "json: expected true or false, got 'yes'"),
    ("backends = 3\n", "backends: expected a string, got 3"),
    ('mqtt_password = "hunter2"\n', "unknown key 'mqtt_password'"),  # a password never comes from here
    ("url = [\n", "not a TOML file"),
])
def test_a_bad_file_is_one_line_exit_2(tmp_path, capsys, text, message):
    conf = _file(tmp_path, text)
    code = main(["fleet", "agent", "--config", str(conf), "--url", "u", "--device-id", "d", "--state-dir", "s",
                 "--device-class", "c", "--model", "m"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fusionedge fleet agent: error: --config {conf}"), err
    assert message in lines[0]
    assert "hunter2" not in err


def test_a_choice_outside_the_choices_is_refused(tmp_path):
    conf = _file(tmp_path, 'bundle = "b"\npolicy = "sometimes"\n', "run.toml")
    with pytest.raises(InputError, match="policy: expected one of live, offline, got 'sometimes'"):
        parse("run", "--config", str(conf))


@pytest.mark.parametrize("name,value,message", [
    ("FUSIONEDGE_AGENT_INTERVAL", "abc", "FUSIONEDGE_AGENT_INTERVAL: expected a number, got 'abc'"),
    ("FUSIONEDGE_AGENT_DEVCE_ID", "x", "FUSIONEDGE_AGENT_DEVCE_ID: unknown variable"),
    ("FUSIONEDGE_AGENT_JSON", "maybe", "FUSIONEDGE_AGENT_JSON: expected true or false, got 'maybe'"),
])
def test_a_bad_variable_is_one_line_exit_2_through_the_command(tmp_path, name, value, message):
    import os

    env = {**os.environ, name: value}
    proc = subprocess.run([str(FUSIONEDGE), "fleet", "agent", "--url", "u", "--device-id", "d", "--state-dir",
                           str(tmp_path), "--device-class", "c", "--model", "m"], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fusionedge fleet agent: error: {message}"), proc.stderr


def test_a_missing_file_names_it(tmp_path, capsys):
    code = main(["run", "--config", str(tmp_path / "nope.toml")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"fusionedge run: error: --config {tmp_path / 'nope.toml'}: cannot read")


def test_other_verbs_ignore_the_variables(monkeypatch):
    monkeypatch.setenv("FUSIONEDGE_AGENT_NO_SUCH_OPTION", "1")
    monkeypatch.setenv("FUSIONEDGE_RUN_NO_SUCH_OPTION", "1")
    assert parse("eval", "--bundle", "b", "--data", "d").batch_size == 16
    with pytest.raises(InputError, match="FUSIONEDGE_RUN_NO_SUCH_OPTION"):
        parse("run", "--bundle", "b")
