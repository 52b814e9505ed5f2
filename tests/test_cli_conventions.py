"""The habits of a command-line tool, through the real ``fusionedge`` command: ``--version``,
``python -m fusionedge``, every option's help with its default, an example per verb, ``-v`` and
``--json`` on either side of the verb, a grouping verb that names its sub-verbs, shell completion."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from fusionedge.cli.help import EXAMPLES, walk_parsers
from fusionedge.cli.main import build_parser, parse_args

ROOT = Path(__file__).resolve().parents[1]
FUSIONEDGE = Path(sys.executable).parent / "fusionedge"


def _cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(FUSIONEDGE), *argv], capture_output=True, text=True, timeout=60, cwd=cwd,
                          check=False)


def test_version_is_the_installed_distributions():
    proc = _cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"fusionedge {version('fusionedge')}"
    import fusionedge.sdk

    assert fusionedge.sdk.__version__ == version("fusionedge")


def test_python_dash_m_fusionedge_is_the_command(tmp_path):
    """From a folder other than the source tree, so the installed mapping is what is tested."""
    proc = subprocess.run([sys.executable, "-m", "fusionedge", "--help"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: fusionedge ") and "quickstart" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "fusionedge", "data"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "choose a sub-verb: synth" in proc.stderr


def _load_check_script():
    spec = importlib.util.spec_from_file_location("check_cli_help", ROOT / "scripts" / "check_cli_help.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_option_has_help_and_every_verb_a_description_and_an_example():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_cli_help.py")], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    read = int(proc.stdout.split()[0])
    assert read == len(list(walk_parsers(build_parser()))), "the script did not reach every verb"


def test_the_help_check_finds_an_undocumented_option_a_verb_without_example_and_a_failing_help():
    from fusionedge.cli.help import Parser

    check = _load_check_script()
    p = Parser(prog="fusionedge x", description="x", epilog="examples:\n  fusionedge x --count 2")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--task-weighting", choices=("fixed", "uncertainty"), default=None)
    p.add_argument("--ratio", type=float, default=0.5, help="share of it")
    p.add_argument("path", help="a path")
    problems, _ = check.help_text_problems("fusionedge x", p.format_help())
    assert problems == ["fusionedge x --count COUNT: no help text",
                        "fusionedge x --task-weighting {fixed,uncertainty}: no help text"]
    bare = Parser(prog="fusionedge y")
    assert check.help_text_problems("fusionedge y", bare.format_help())[0] == [
        "fusionedge y: no description", "fusionedge y: no example"]
    broken = [sys.executable, "-c", "import sys; sys.exit('no such verb')"]
    assert check.check(broken)[0] == ["fusionedge --help fails (exit 1): no such verb"]


def _option_help(path: tuple[str, ...], option: str) -> str:
    """The help line(s) of one option as ``fusionedge PATH --help`` prints them, joined into one line."""
    text = _cli(*path, "--help").stdout
    block = re.search(rf"^  {re.escape(option)}\b.*?(?=^  -|^\S|\Z)", text, re.MULTILINE | re.DOTALL)
    assert block, f"{option} not in fusionedge {' '.join(path)} --help"
    return " ".join(block.group(0).split())


def test_help_shows_defaults():
    assert "(default: 10)" in _option_help(("train",), "--epochs")
    assert "(default: 16)" in _option_help(("eval",), "--batch-size")
    assert "(default: onnxruntime)" in _option_help(("eval",), "--backends")
    assert "(default: 2000.0)" in _option_help(("fleet", "agent"), "--latency-budget-ms")
    # A flag shows no "(default: False)"; a help that states its default is not repeated.
    assert "default" not in _option_help(("eval",), "--record")
    assert _option_help(("bench",), "--duration").count("default") == 1


def test_documented_defaults_are_the_configurations_defaults():
    """``train --epochs`` and friends default to None (the config decides): their help must say what that is."""
    pytest.importorskip("torch")
    from fusionedge.training.pretrain import PretrainConfig
    from fusionedge.training.report import ReportConfig
    from fusionedge.training.train import TrainConfig

    def documented(path: tuple[str, ...], option: str) -> str:
        m = re.search(r"\(default: ([^)]+)\)", _option_help(path, option))
        assert m, f"fusionedge {' '.join(path)} {option} does not state its default"
        return m.group(1)

    for path, cls in ((("train",), TrainConfig), (("distill",), TrainConfig), (("pretrain",), PretrainConfig)):
        for option in ("--epochs", "--batch-size", "--lr"):
            default = cls.__dataclass_fields__[option[2:].replace("-", "_")].default
            assert float(documented(path, option)) == default, (path, option)
    for flag in ("train-samples", "val-samples", "test-samples", "epochs", "teacher-epochs", "pretrain-epochs",
                 "few-label-epochs", "few-label-seeds", "few-label-fraction", "batch-size"):
        default = ReportConfig.__dataclass_fields__[flag.replace("-", "_")].default
        assert float(documented(("report",), f"--{flag}")) == default, flag


def test_every_example_is_a_command_the_parser_accepts():
    parser = build_parser()
    paths = {" ".join(path) for path, _ in walk_parsers(parser)}
    assert set(EXAMPLES) <= paths, f"examples for verbs that do not exist: {set(EXAMPLES) - paths}"
    for _, p in walk_parsers(parser):
        for action in p._actions:
            action.required = False  # an example with --config gives the required options in its file
    for lines in EXAMPLES.values():
        for line in lines:
            argv = shlex.split(line.split(" > ")[0])
            assert argv[0] == "fusionedge", line
            try:
                parser.parse_args(argv[1:])
            except SystemExit as e:
                raise AssertionError(f"example does not parse: {line}") from e


def test_a_grouping_verb_without_its_sub_verb_names_the_choices():
    for argv, message in ((("data",), "fusionedge data: error: choose a sub-verb: synth"),
                          (("engine",), "fusionedge engine: error: choose a sub-verb: build, check"),
                          ((), "fusionedge: error: choose a verb: data, train,")):
        proc = _cli(*argv)
        assert proc.returncode == 2
        assert message in proc.stderr and "_verb" not in proc.stderr, proc.stderr
    proc = _cli("fleet")
    assert proc.returncode == 2 and "choose a sub-verb: init, publish, rollout" in proc.stderr


def test_verbose_and_json_on_either_side_of_the_verb():
    parser = build_parser()
    assert parse_args(parser, ["fleet", "status", "r", "-v"]).verbose is True
    assert parse_args(parser, ["-v", "fleet", "status", "r"]).verbose is True
    assert parse_args(parser, ["fleet", "status", "r"]).verbose is False
    assert parse_args(parser, ["eval", "--bundle", "b", "--data", "d", "--verbose"]).verbose is True
    assert parse_args(parser, ["--json", "fleet", "status", "r"]).json is True
    assert parse_args(parser, ["fleet", "status", "r", "--json"]).json is True
    assert parse_args(parser, ["fleet", "status", "r"]).json is False
    with pytest.raises(SystemExit) as e:
        parse_args(parser, ["--json", "completion", "bash"])
    assert e.value.code == 2


def test_verbose_after_the_verb_turns_on_debug_logging(tmp_path):
    """A user error with -v after the verb: the debug log line appears (it did only before the verb)."""
    proc = _cli("data", "synth", "--out", "/proc/x", "--samples", "2", "-v")
    assert proc.returncode == 2
    assert "DEBUG fusionedge.cli.main" in proc.stderr, proc.stderr


def test_bash_completion_completes_verbs_sub_verbs_and_options(tmp_path):
    proc = _cli("completion", "bash")
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / "fusionedge.bash"
    script.write_text(proc.stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        bash = (f"source {shlex.quote(str(script))}\n"
                f"func=$(complete -p fusionedge | sed -E 's/.* -F ([^ ]+) .*/\\1/')\n"
                f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMP_LINE={shlex.quote(line)}; "
                f"COMP_POINT=${{#COMP_LINE}}\n"
                f"$func fusionedge {shlex.quote(words[-1])} {shlex.quote(words[-2])}\n"
                "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
        out = subprocess.run(["bash", "-c", bash], capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.split()

    assert "quickstart" in complete("fusionedge", "qu")
    assert "agent" in complete("fusionedge", "fleet", "ag")
    assert "--device-class" in complete("fusionedge", "fleet", "agent", "--device-c")
    assert "--backends" in complete("fusionedge", "eval", "--back")


def test_zsh_completion_is_a_zsh_completion_function():
    proc = _cli("completion", "zsh")
    assert proc.returncode == 0 and proc.stdout.startswith("#compdef fusionedge")
    assert "fleet" in proc.stdout and "--device-class" in proc.stdout


def test_help_and_version_reach_no_heavy_import():
    script = ("import sys\nfrom fusionedge.cli.main import build_parser\nbuild_parser()\n"
              "print(sorted(m for m in ('numpy', 'cv2', 'onnxruntime', 'torch', 'shtab', 'prometheus_client')"
              " if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]"


def test_the_namespace_has_one_module_of_its_own_and_the_wheel_maps_it():
    assert sorted(p.name for p in (ROOT / "fusionedge").iterdir() if p.name != "__pycache__") == ["__main__.py"]
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["scikit-build"]["wheel"]["packages"]
    assert packages["fusionedge"] == "fusionedge", "a wheel without fusionedge/__main__.py: python -m fails"
    assert isinstance(build_parser(), argparse.ArgumentParser)
