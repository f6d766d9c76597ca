"""--out-dir runs own their folder (issue 9, item 2): stale outputs of an earlier run are removed, files ssa
did not record writing are refused before any computation and never deleted."""

from __future__ import annotations

import errno
import json

import ssa
from ssa.cli import main
from ssa.io.atomic import atomic_write_bytes
from ssa.io.outdir import ANALYSE_OUTPUTS, COMPARE_OUTPUTS, MANIFEST, OutputDir


def _names(d):
    return sorted(p.name for p in d.iterdir())


def _analyse(out, targets, *extra):
    return main(["analyse", "digits", "--images", "digits", "--targets", targets, "-q", "--out-dir", str(out),
                 "--max-per-class", "30", *extra])


def test_rerun_with_fewer_targets_leaves_no_stale_graph(tmp_path, capsys):
    out = tmp_path / "graphs"
    assert _analyse(out, "1,2,3") == 0
    (out / "notes.txt").write_text("mine")
    assert _names(out) == [MANIFEST, "class-1.json", "class-2.json", "class-3.json", "notes.txt"]
    assert _analyse(out, "1,2") == 0
    assert _names(out) == [MANIFEST, "class-1.json", "class-2.json", "notes.txt"]
    assert json.loads((out / MANIFEST).read_text())["commands"]["analyse"] == ["class-1.json", "class-2.json"]
    assert (out / "notes.txt").read_text() == "mine"
    # the README's glob now picks up exactly this run's graphs
    capsys.readouterr()
    assert main(["compare", *sorted(str(p) for p in out.glob("class-*.json"))]) == 0
    assert capsys.readouterr().out.startswith("2 graphs of digits")


def test_unrecorded_lookalikes_are_refused_before_computing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "graphs"
    out.mkdir()
    (out / "class-7.json").write_text("from somewhere else")
    import ssa.api

    def boom(*a, **k):
        raise AssertionError("computed although the folder is refused")

    monkeypatch.setattr(ssa.session.Session, "prepare", boom)
    assert _analyse(out, "1,2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds class-7.json, which no earlier `ssa analyse` run there recorded" in err[0]
    assert _names(out) == ["class-7.json"] and (out / "class-7.json").read_text() == "from somewhere else"


def test_compare_svg_after_png_leaves_no_png(tmp_path, capsys):
    graphs = tmp_path / "graphs"
    assert _analyse(graphs, "1,2,3") == 0
    files = sorted(str(p) for p in graphs.glob("class-*.json"))
    out = tmp_path / "cmp"
    assert main(["compare", *files, "--out-dir", str(out)]) == 0
    assert "clustermap.png" in _names(out)
    (out / "my-plot.png").write_bytes(b"user's")
    assert main(["compare", *files, "--out-dir", str(out), "--format", "svg"]) == 0
    names = _names(out)
    assert [n for n in names if n.endswith(".png")] == ["my-plot.png"]
    assert {"clustermap.svg", "dendrogram.svg", "clustermap-nodes.svg", "jaccard.csv"} <= set(names)
    assert (out / "my-plot.png").read_bytes() == b"user's"


def test_a_failed_run_records_what_it_wrote(tmp_path):
    """A run whose outputs do not belong together (``analyse``'s graphs): what a failed run wrote is recorded, so
    the next run does not refuse it as foreign and removes it if it does not write it again."""
    out = tmp_path / "graphs"
    try:
        with OutputDir(out, "analyse", ANALYSE_OUTPUTS):
            atomic_write_bytes(out / "class-1.json", b"{}")
            raise ssa.InvalidInputError("failed after one graph")
    except ssa.InvalidInputError:
        pass
    assert _names(out) == [MANIFEST, "class-1.json"]  # written before the failure, and recorded
    assert json.loads((out / MANIFEST).read_text())["commands"]["analyse"] == ["class-1.json"]
    with OutputDir(out, "analyse", ANALYSE_OUTPUTS):  # not refused: it is ours; not written again: removed
        pass
    assert _names(out) == [MANIFEST]


def _tree(d):
    return {p.name: p.read_bytes() for p in d.iterdir()}


def test_a_failed_or_interrupted_compare_leaves_the_earlier_outputs(tmp_path, capsys, monkeypatch):
    """compare's figures and tables belong together: a run that fails or is interrupted half-way (Ctrl-C, a full
    disk) puts the earlier run's files back and removes its own; before, the folder mixed new figures with the
    earlier run's tables."""
    graphs = tmp_path / "graphs"
    assert _analyse(graphs, "1,2,3") == 0
    files = sorted(str(p) for p in graphs.glob("class-*.json"))
    out = tmp_path / "cmp"
    import ssa.viz.figures

    def broken(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ssa.viz.figures, "plot_dendrogram", broken)  # after both clustermaps are written
    assert main(["compare", *files, "--out-dir", str(out)]) == 130
    assert not out.exists()  # a failed first run: nothing
    monkeypatch.undo()
    assert main(["compare", *files[:2], "--out-dir", str(out)]) == 0
    before = _tree(out)
    monkeypatch.setattr(ssa.viz.figures, "plot_dendrogram", broken)
    assert main(["compare", *files, "--out-dir", str(out), "--format", "svg"]) == 130
    assert _tree(out) == before  # the two-class run's files, none of the three-class run's, nothing left over
    monkeypatch.undo()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("ssa.analysis.compare.Comparison.write_tables", full)
    assert main(["compare", *files, "--out-dir", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert _tree(out) == before


def test_an_earlier_run_killed_with_its_kept_files_is_cleaned_up(tmp_path):
    out = tmp_path / "cmp"
    with OutputDir(out, "compare", COMPARE_OUTPUTS, all_or_nothing=True):
        atomic_write_bytes(out / "jaccard.csv", b"1")
    (out / ".ssa-previous.abc123").mkdir()  # a run killed with SIGKILL while it replaced the files
    (out / ".ssa-previous.abc123" / "jaccard.csv").write_bytes(b"0")
    with OutputDir(out, "compare", COMPARE_OUTPUTS, all_or_nothing=True):
        atomic_write_bytes(out / "jaccard.csv", b"2")
    assert _names(out) == [MANIFEST, "jaccard.csv"] and (out / "jaccard.csv").read_bytes() == b"2"


def test_figures_rerun_replaces_its_figures(tmp_path, capsys):
    graphs = tmp_path / "graphs"
    assert _analyse(graphs, "3", "--rule", "gradient_x_activation") == 0
    g = ssa.read_graph(graphs / "class-3.json")
    out = tmp_path / "fig"
    base = ["figures", "digits", "--images", "digits", "--graph", str(graphs / "class-3.json"), "--out-dir", str(out),
            "--n-images", "2"]
    assert main(base) == 0
    first = set(_names(out))
    node = sorted(n for n, d in g.nodes(data=True) if d["tap"] == "features.3")[0]
    assert main(base + ["--neuron", node, "--format", "svg"]) == 0
    second = set(_names(out))
    assert not any(n.endswith(".png") for n in second) and first != second


# --- issue 18: a damaged output is computed again; two processes on one folder ------------------------------
def test_a_class_graph_cut_short_is_computed_again_with_a_notice(tmp_path, capsys):
    out = tmp_path / "graphs"
    assert _analyse(out, "1,2") == 0
    whole = (out / "class-2.json").read_bytes()
    kept = (out / "class-1.json").read_bytes()
    (out / "class-2.json").write_bytes(whole[:100])
    capsys.readouterr()
    assert _analyse(out, "1,2") == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("ssa: warning: --out-dir ") and "class-2.json is damaged" in err[0]
    assert (out / "class-2.json").read_bytes() == whole and (out / "class-1.json").read_bytes() == kept
    # a flipped byte that still parses (a digit of a relevance) is found by the recorded content hash
    i = whole.index(b'"frequency": ') + len(b'"frequency": ')
    flipped = whole[:i] + (b"1" if whole[i:i + 1] != b"1" else b"2") + whole[i + 1:]
    (out / "class-2.json").write_bytes(flipped)
    json.loads(flipped)
    assert _analyse(out, "1,2") == 0
    assert "class-2.json is damaged" in capsys.readouterr().err
    assert (out / "class-2.json").read_bytes() == whole
    assert _analyse(out, "1,2") == 0  # intact now: kept, no notice
    assert capsys.readouterr().err == ""


def _subprocess(out, targets):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("SSA_DEBUG", "SSA_STORE")}
    return subprocess.Popen([str(Path(sys.executable).with_name("ssa")), "analyse", "digits", "--images", "digits",
                             "--targets", targets, "-q", "--out-dir", str(out), "--max-per-class", "30"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_on_one_out_dir_both_succeed(tmp_path, capsys):
    from ssa.io import locks

    out = tmp_path / "graphs"
    out.mkdir()
    # the first process holds the folder (as a running `ssa analyse` does): the others wait, then run in turn
    with locks.hold(out / ".ssa-outputs.lock", keep=False):
        a, b = _subprocess(out, "1,2"), _subprocess(out, "3")
        import time

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and a.poll() is None and b.poll() is None:
            time.sleep(0.5)
            if (out / ".ssa-outputs.json").exists():
                break
        assert a.poll() is None and b.poll() is None  # both wait: nothing written while the lock is held
        assert sorted(p.name for p in out.iterdir()) == [".ssa-outputs.lock"]
    results = [p.communicate(timeout=300) for p in (a, b)]
    assert (a.returncode, b.returncode) == (0, 0), results
    for _, err in results:
        assert "is writing --out-dir" in err and "waiting for it to finish" in err
    # the folder is valid: the one that ran last owns it, and a later run into it works
    names = sorted(p.name for p in out.iterdir())
    assert names in ([MANIFEST, "class-1.json", "class-2.json"], [MANIFEST, "class-3.json"]), names
    assert json.loads((out / MANIFEST).read_text())["commands"]["analyse"] == names[1:]
    assert _analyse(out, "1,3") == 0
    assert _names(out) == [MANIFEST, "class-1.json", "class-3.json"]


def test_two_processes_at_once_on_the_same_classes(tmp_path, capsys):
    out = tmp_path / "graphs"
    procs = [_subprocess(out, "1,2"), _subprocess(out, "1,2")]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert _names(out) == [MANIFEST, "class-1.json", "class-2.json"]
    capsys.readouterr()
    assert _analyse(out, "1,2") == 0
    assert capsys.readouterr().err == ""


def test_a_file_system_without_locks_goes_on_with_a_warning(tmp_path, monkeypatch):
    import errno
    import fcntl

    import pytest

    from ssa.io.atomic import atomic_write_bytes
    from ssa.io.outdir import ANALYSE_OUTPUTS, OutputDir

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "g"
    with pytest.warns(ssa.SSAWarning, match="on a file system without file locks"):
        with OutputDir(out, "analyse", ANALYSE_OUTPUTS) as od:
            atomic_write_bytes(out / "class-1.json", b"{}")
            od.record("class-1.json", "k1")
    assert _names(out) == [MANIFEST, "class-1.json"]
