"""``ssa explore --out DIR/`` writes only its own files (issue 18, item 6): a manifest of what it wrote, a re-run
replaces only those, and a folder holding anything else is refused before any computation, with nothing deleted."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ssa
from ssa.cli import main
from ssa.errors import InvalidInputError
from ssa.viz.explorer import write_explorer
from ssa.viz.explorer.folder import MANIFEST

SCRIPT = Path(sys.executable).with_name("ssa")


@pytest.fixture(scope="module")
def graph_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("graphs")
    res = ssa.analyse_many("digits", "digits", [3, 5], max_per_class=20)
    paths = []
    for c, r in res.items():
        r.write(d / f"class-{c}.json")
        paths.append(str(d / f"class-{c}.json"))
    return paths


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.blake2b(p.read_bytes(), digest_size=8).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_manifest_lists_every_file_and_a_rerun_replaces_only_those(graph_files, tmp_path, capsys):
    site = tmp_path / "site"
    assert main(["explore", *graph_files, "--out", f"{site}/"]) == 0
    files = json.loads((site / MANIFEST).read_text())["files"]
    assert sorted(files) == sorted(f for f in _tree(site) if f != MANIFEST)
    assert "index.html" in files and "data/class-1.json" in files
    assert main(["explore", graph_files[0], "--out", f"{site}/"]) == 0  # fewer classes: the old class file goes
    assert "data/class-1.json" not in _tree(site)
    assert sorted(json.loads((site / MANIFEST).read_text())["files"]) == sorted(f for f in _tree(site) if f != MANIFEST)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary or old folder left


@pytest.mark.parametrize("foreign", ["notes.txt", "data/mine.csv", "mydir/"])
def test_a_foreign_file_makes_the_run_refuse_and_survives(graph_files, tmp_path, capsys, monkeypatch, foreign):
    site = tmp_path / "site"
    write_explorer(f"{site}/", [ssa.read_graph(f) for f in graph_files])
    target = site / foreign
    if foreign.endswith("/"):
        target.mkdir()
    else:
        target.write_text("the user's")
    before = _tree(site)
    import ssa.viz.explorer as explorer

    def boom(*a, **k):
        raise AssertionError("computed although the folder is refused")

    monkeypatch.setattr(explorer, "explorer_files", boom)
    assert main(["explore", *graph_files, "--out", f"{site}/"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("ssa: error: ") and "holds something else than an explorer (" in err[0]
    assert foreign.rstrip("/") in err[0]
    assert _tree(site) == before and target.exists()
    with pytest.raises(InvalidInputError, match="ssa replaces only its own files"):
        write_explorer(f"{site}/", [ssa.read_graph(f) for f in graph_files])
    assert _tree(site) == before


def test_a_folder_of_an_explorer_without_manifest_is_replaced(graph_files, tmp_path, capsys):
    """Folders written before manifests (index.html and data/*.json) are still explorer folders."""
    site = tmp_path / "site"
    write_explorer(f"{site}/", [ssa.read_graph(f) for f in graph_files])
    (site / MANIFEST).unlink()
    assert main(["explore", graph_files[0], "--out", f"{site}/"]) == 0
    assert "data/class-1.json" not in _tree(site) and (site / MANIFEST).is_file()


def test_refusal_in_a_real_process(graph_files, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "results.csv").write_text("keep me")
    proc = subprocess.run([str(SCRIPT), "explore", *graph_files, "--out", f"{site}/"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "results.csv, which no earlier `ssa explore` wrote there" in proc.stderr
    assert list(_tree(site)) == ["results.csv"] and (site / "results.csv").read_text() == "keep me"
