"""The parts import each other in one direction only, and only ``cli/`` imports the command line.

FusionEdge is layered ``sdk <- training <- export <- cli``, with ``benchmarks`` beside ``export``:

* ``sdk`` (the device runtime) imports none of ``training``, ``export``, ``benchmarks``, ``cli``;
* ``training`` imports ``sdk`` only;
* ``export`` imports ``sdk`` and ``training``;
* ``benchmarks`` imports ``sdk``, ``training`` and ``export``: the eager baseline loads a training
  checkpoint, and the pytest-benchmark suites (``benchmarks/conftest.py``) export the bundle they
  time with ``fusionedge.export.export_model``;
* ``scripts`` may use any part but ``cli``; only ``cli`` defines verbs, and nothing outside it
  imports ``fusionedge.cli``.

The scan reads every ``.py`` file's syntax tree, so an import inside a function (the lazy imports
that keep torch out of the runtime) counts as much as one at the top; relative imports are resolved,
and a string naming a module exactly (``"fusionedge.export.quantize"`` in a lazy-import table) counts
too. A failure names ``file:line``.

An import that breaks the order would be listed in :data:`KNOWN` with its reason, so that it cannot
spread and the test says when it is gone.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("sdk", "training", "export", "benchmarks", "cli")
SCANNED = ("sdk", "training", "export", "benchmarks", "scripts")

#: part -> the other parts it may import.
ALLOWED: dict[str, frozenset[str]] = {
    "sdk": frozenset(),
    "training": frozenset({"sdk"}),
    "export": frozenset({"sdk", "training"}),
    "benchmarks": frozenset({"sdk", "training", "export"}),
    "scripts": frozenset({"sdk", "training", "export", "benchmarks"}),
}

#: Imports that break the order today: (file, imported part) -> why it is tolerated.
KNOWN: dict[tuple[str, str], str] = {}

_MODULE_NAME = re.compile(r"fusionedge(\.[A-Za-z_][A-Za-z0-9_]*)+")


def _module_of(path: Path) -> list[str]:
    """``sdk/fleet/agent.py`` -> ``["fusionedge", "sdk", "fleet", "agent"]``."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ["fusionedge", *parts]


def imports(path: Path) -> list[tuple[int, str]]:
    """Every ``fusionedge`` module a file imports (anywhere in it), as ``(line, dotted name)``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module[:-1]
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            if name == "fusionedge":  # from fusionedge import cli
                found += [(node.lineno, f"fusionedge.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, name))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
              and _MODULE_NAME.fullmatch(node.value)):
            found.append((node.lineno, node.value))
    return [(line, name) for line, name in found if name.split(".")[0] == "fusionedge"]


def _files(part: str) -> list[Path]:
    return sorted(p for p in (ROOT / part).rglob("*.py") if "__pycache__" not in p.parts)


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_the_scan_sees_imports_inside_functions_relative_ones_and_module_names(tmp_path, monkeypatch):
    pkg = tmp_path / "training" / "sub"
    pkg.mkdir(parents=True)
    f = pkg / "mod.py"
    f.write_text('"""fusionedge.cli is named here, in a docstring, and ignored."""\n'
                 "def f():\n    from fusionedge.cli.main import main\n"
                 "from .. import other\n"
                 "from fusionedge import cli\n"
                 "LAZY = {'x': 'fusionedge.export.quantize'}\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert sorted(imports(f)) == [(3, "fusionedge.cli.main"), (4, "fusionedge.training"),
                                  (5, "fusionedge.cli"), (6, "fusionedge.export.quantize")]


@pytest.mark.parametrize("part", SCANNED)
def test_nothing_outside_cli_imports_the_command_line(part):
    bad = [f"{_where(path, line)} imports {name}" for path in _files(part)
           for line, name in imports(path) if name == "fusionedge.cli" or name.startswith("fusionedge.cli.")]
    assert not bad, "only cli/ may import fusionedge.cli:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("part", SCANNED)
def test_parts_import_only_the_parts_below_them(part):
    bad, used_known = [], set()
    for path in _files(part):
        rel = str(path.relative_to(ROOT))
        for line, name in imports(path):
            target = name.split(".")[1] if name.count(".") else None
            if target not in PARTS or target == part or target in ALLOWED[part]:
                continue
            if (rel, target) in KNOWN:
                used_known.add((rel, target))
                continue
            bad.append(f"{_where(path, line)} imports {name} ({part} may import: "
                       f"{', '.join(sorted(ALLOWED[part])) or 'no other part'})")
    assert not bad, "layering broken:\n  " + "\n  ".join(bad)
    stale = [k for k in KNOWN if k[0].startswith(part + "/") and k not in used_known]
    assert not stale, f"these imports are gone; remove them from KNOWN: {stale}"
