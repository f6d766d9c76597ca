"""The layer contracts of pyproject.toml ([tool.importlinter]; docs/architecture.md): the tree keeps them, and
an import that breaks one (planted in a temporary copy of the tree) fails `lint-imports`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# what `lint-imports` runs, as a module of this interpreter (the script may not be on PATH)
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(no_cache=True, no_logo=True))")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the tree at ``root`` (its packages first on the path, so no other copy is analysed)."""
    paths = [str(root), str(root / "backends"), str(root / "plugins")]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def copy_tree(dest: Path) -> Path:
    """ssa/, backends/, plugins/ and pyproject.toml (the contracts) in ``dest``."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "data", "static", "templates")
    for name in ("ssa", "backends", "plugins"):
        shutil.copytree(ROOT / name, dest / name, ignore=skip)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def plant(path: Path, line: str) -> None:
    """Add ``line`` after the module's ``from __future__`` import (every module of the tree has one)."""
    text = path.read_text(encoding="utf-8")
    anchor = "from __future__ import annotations\n"
    assert anchor in text, path
    path.write_text(text.replace(anchor, anchor + line + "\n", 1), encoding="utf-8")


def test_the_tree_keeps_the_layer_contracts():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
    for contract in ("ssa's layers", "backends and plugins use only", "independent of each other",
                     "ssa names no backend or plugin", "ONNX backend builds on the torch backend",
                     "no other backend or plugin imports the ONNX"):
        assert contract in out.stdout  # each contract was checked


@pytest.mark.parametrize(("module", "line", "broken"), [
    # an upward import in the core
    ("ssa/core/graph.py", "import ssa.cli", "ssa.core.graph -> ssa.cli"),
    # one hidden in a function still counts (import-linter reads every import statement)
    ("ssa/io/locks.py", "def _later():\n    from ssa.viz import report  # noqa", "ssa.io.locks -> ssa.viz.report"),
    # the session must not reach up to the public API (the cycle the contracts removed)
    ("ssa/session.py", "from ssa.api import analyse", "ssa.session -> ssa.api"),
    # a plugin that reaches above the core interfaces
    ("plugins/ssa_selectors/selectors.py", "import ssa.session", "ssa_selectors.selectors -> ssa.session"),
    # plugins independent of each other
    ("plugins/ssa_rules/rules.py", "import ssa_selectors.selectors", "ssa_rules.rules -> ssa_selectors.selectors"),
    # ssa reaches a backend through the registry, never by name
    ("ssa/engines/autograd.py", "import ssa_torch.kinds", "ssa.engines.autograd -> ssa_torch.kinds"),
    # the torch backend does not import the ONNX one
    ("backends/ssa_torch/kinds.py", "import ssa_onnx", "ssa_torch.kinds -> ssa_onnx"),
])
def test_a_planted_import_breaks_the_contract(tmp_path, module, line, broken):
    root = copy_tree(tmp_path)
    clean = lint(root)
    assert clean.returncode == 0, clean.stdout + clean.stderr  # the copy alone keeps the contracts
    plant(root / module, line)
    out = lint(root)
    assert out.returncode != 0, out.stdout
    assert "1 broken" in out.stdout, out.stdout
    assert broken in out.stdout, out.stdout  # the report names the planted import
