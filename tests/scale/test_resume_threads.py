"""A resumed run keeps the thread count of the graphs it keeps (graphs record the count torch computed with, and
torch's CPU kernels round differently with one thread and with several): ``ssa analyse --out-dir`` and ``ssa study``
re-runs take the kept graphs' count when the user chose none, warn when the outputs mix counts, and record the
counts in the study summary; ``--threads`` for ``ssa analyse`` and ``ssa study``; Python callers are left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import torch

import ssa
import ssa.core.threads as T
from ssa.cli import main
from tests.scale.synthetic import write_folder, write_model
from tests.scale.test_study import _study

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    d = tmp_path_factory.mktemp("threads")
    return write_model(d), write_folder(d / "imgs", per_class=6)


@pytest.fixture
def one_thread(monkeypatch):
    """This process computes with one thread, as the test session does, and the user chose no count (no
    OMP_NUM_THREADS); torch's count is put back afterwards."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _argv(spec, images, out, targets, *extra):
    return ["analyse", spec, "--images", str(images), "--channels", "1", "--targets", targets, "--out-dir", str(out),
            "--max-per-class", "4", *extra]


def _threads(out: Path) -> dict[str, int]:
    return {p.name: ssa.read_graph(p).graph["threads"] for p in sorted(out.glob("class-*.json"))}


#: the resumed process: ``ssa`` as a user runs it, on a machine whose default would be 2 threads (an idle 2-core
#: machine, as in CI), with neither --threads nor OMP_NUM_THREADS
CHILD = """
import sys
import ssa.core.threads as T
T.default_threads = lambda: 2
from ssa.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["SSA_PARITY_CACHE"] = "0"
    return env


def _ssa(*argv: str, child: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", child, *argv] if child else [sys.executable, "-m", "ssa", *argv]
    res = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res


@pytest.mark.slow
def test_a_resumed_process_computes_with_the_kept_graphs_count(synthetic, tmp_path):
    spec, images = synthetic
    out = tmp_path / "g"
    _ssa(*_argv(spec, images, out, "1", "--threads", "1", "-q"))  # the run that was stopped: one thread
    assert _threads(out) == {"class-1.json": 1}
    # resumed where the default is 2 threads: the rest is computed with the kept graphs' one
    res = _ssa(*_argv(spec, images, out, "1,2"), child=CHILD)
    assert _threads(out) == {"class-1.json": 1, "class-2.json": 1}, res.stdout
    lines = [ln for ln in res.stdout.splitlines() if "as the kept graphs were" in ln]
    assert lines == ["computing the other 1 graph(s) with 1 thread, as the kept graphs were (the default here is 2; "
                     "--threads N overrides)"]
    assert "warning" not in res.stderr
    before = torch.get_num_threads()
    try:  # the files of an uninterrupted run with that count, byte for byte
        assert main(_argv(spec, images, tmp_path / "ref", "1,2", "--threads", "1", "-q")) == 0
    finally:
        torch.set_num_threads(before)
    assert {p.name: p.read_bytes() for p in out.glob("class-*.json")} == {
        p.name: p.read_bytes() for p in (tmp_path / "ref").glob("class-*.json")}
    # the user's own count wins, with one warning that the outputs now mix counts
    res = _ssa(*_argv(spec, images, out, "1,2,3", "--threads", "2", "-q"))
    assert _threads(out) == {"class-1.json": 1, "class-2.json": 1, "class-3.json": 2}
    assert res.stderr.count("ssa: warning: the outputs mix thread counts: the kept graphs were computed with 1 "
                            "thread, the other 1 are computed with 2 threads (--threads 2);") == 1, res.stderr
    assert "run with --threads 1 for one count" in res.stderr


def test_kept_graphs_that_disagree_are_named_in_a_warning(synthetic, tmp_path, one_thread, monkeypatch, capsys):
    spec, images = synthetic
    out = tmp_path / "g"
    assert main(_argv(spec, images, out, "1", "--threads", "2", "-q")) == 0
    assert main(_argv(spec, images, out, "1,2", "--threads", "1", "-q")) == 0
    assert _threads(out) == {"class-1.json": 2, "class-2.json": 1}
    capsys.readouterr()
    assert main(_argv(spec, images, out, "1,2,3", "-q")) == 0  # the default: nothing to take over
    err = capsys.readouterr().err
    assert ("ssa: warning: the outputs mix thread counts: the kept graphs were computed with 1 and 2 threads, the "
            "other 1 are computed with 1 thread;") in err
    assert "remove the folder to compute them all again" in err
    assert _threads(out)["class-3.json"] == 1
    # the user's OMP_NUM_THREADS is the user's choice too
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(_argv(spec, images, tmp_path / "h", "1", "--threads", "2", "-q")) == 0
    capsys.readouterr()
    torch.set_num_threads(1)
    assert main(_argv(spec, images, tmp_path / "h", "1,2", "-q")) == 0
    assert "the other 1 are computed with 1 thread (OMP_NUM_THREADS);" in capsys.readouterr().err
    assert _threads(tmp_path / "h") == {"class-1.json": 2, "class-2.json": 1}


def test_a_resumed_study_takes_the_kept_count_and_records_it(synthetic, tmp_path, one_thread, capsys):
    spec, images = synthetic
    out = tmp_path / "out"
    study = _study(tmp_path / "s.toml", spec, images, targets="[1]", max_images=4, compare="false")
    assert main(["study", str(study), "--out-dir", str(out), "--threads", "2", "-q"]) == 0
    first = json.loads((out / "study.json").read_text())["run"]["threads"]
    assert first == {"kept": [], "computed": 2, "by": "--threads", "mixed": False}
    torch.set_num_threads(1)
    capsys.readouterr()
    _study(study, spec, images, targets="[1, 2]", max_images=4, compare="false")
    assert main(["study", str(study), "--out-dir", str(out)]) == 0
    assert ("computing the other 2 graph(s) with 2 threads, as the kept graphs were (the default here is 1; "
            "--threads N overrides)") in capsys.readouterr().out
    summary = json.loads((out / "study.json").read_text())
    assert summary["run"]["threads"] == {"kept": [2], "computed": 2, "by": "kept graphs", "mixed": False}
    graphs = sorted(out.rglob("class-*.json"))
    assert len(graphs) == 4 and {ssa.read_graph(g).graph["threads"] for g in graphs} == {2}
    # -q: the same, without the line
    torch.set_num_threads(1)
    _study(study, spec, images, targets="[1, 2, 3]", max_images=4, compare="false")
    assert main(["study", str(study), "--out-dir", str(out), "-q"]) == 0
    captured = capsys.readouterr()
    assert "as the kept graphs were" not in captured.out + captured.err
    assert {ssa.read_graph(g).graph["threads"] for g in out.rglob("class-*.json")} == {2}
    # nothing left to compute: the kept counts are recorded, none computed
    assert main(["study", str(study), "--out-dir", str(out), "-q"]) == 0
    assert json.loads((out / "study.json").read_text())["run"]["threads"] == {
        "kept": [2], "computed": None, "by": "default", "mixed": False}


def test_a_python_caller_keeps_its_own_count(tmp_path, one_thread):
    from ssa.scale import analyse_to_folder

    out = tmp_path / "g"
    assert main(["analyse", "digits", "--images", "digits", "--targets", "1", "--out-dir", str(out),
                 "--max-per-class", "4", "--threads", "2", "-q"]) == 0
    assert T.command_choice() is None  # only while a command runs
    torch.set_num_threads(1)
    report = analyse_to_folder("digits", "digits", [1, 2], out, max_per_class=4)
    assert report.kept == 1 and torch.get_num_threads() == 1
    assert _threads(out) == {"class-1.json": 2, "class-2.json": 1}
    assert report.threads == T.RunThreads((2,), 1, "caller")


@pytest.mark.parametrize("command", ["analyse", "study"])
def test_threads_is_an_option_of_analyse_and_study(synthetic, tmp_path, command, capsys):
    spec, images = synthetic
    study = _study(tmp_path / "s.toml", spec, images, targets="[1]", max_images=4, compare="false")
    head = _argv(spec, images, tmp_path / "g", "1") if command == "analyse" else ["study", str(study)]
    from ssa.cli import build_parser

    assert build_parser().parse_args([*head, "--threads", "3"]).threads == 3
    assert build_parser().parse_args(head).threads is None
    assert main([*head, "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "ssa: error: --threads must be >= 1, got 0."
    assert main([*head, "--threads", "two"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ssa: error: ssa {command}: argument --threads: invalid int value: 'two'")
    assert "\n" not in err
    assert not (tmp_path / "g").exists() and not (tmp_path / "out").exists()


def test_resume_threads_rules(monkeypatch, one_thread):
    """The rule itself: nothing outside a command; the kept count taken only for the default; Ray workers keep
    theirs."""
    assert T.resume_threads([2], computing=3) == T.RunThreads((2,), 1, "caller")
    monkeypatch.setattr(T, "_CHOICE", T.ThreadChoice("default"))
    said: list[str] = []
    assert T.resume_threads([None, 2, 2], computing=3, say=said.append) == T.RunThreads((2,), 2, "kept graphs")
    assert torch.get_num_threads() == 2 and len(said) == 1
    assert T.resume_threads([2], computing=0) == T.RunThreads((2,), None, "default")
    assert T.resume_threads([None], computing=1) == T.RunThreads((), 2, "default")  # older graphs: no count
    with pytest.warns(ssa.errors.SSAWarning, match="finish without Ray, with --threads 2, for one count"):
        assert T.resume_threads([2], computing=1, workers=1) == T.RunThreads((2,), 1, "ray workers")
    assert torch.get_num_threads() == 2
    monkeypatch.setattr(T, "_CHOICE", T.ThreadChoice("--threads"))
    with pytest.warns(ssa.errors.SSAWarning, match=r"computed with 1 thread, the other 4 are computed with 2 "
                                                   r"threads \(--threads 2\)"):
        assert T.resume_threads([1], computing=4).mixed


def test_a_graph_that_landed_but_was_not_recorded_counts_as_kept(synthetic, tmp_path, one_thread, capsys):
    """A run killed between writing a graph and recording it in the manifest: the job keeps the graph (its file
    holds the key), so its count is the kept one."""
    from ssa.io.outdir import MANIFEST

    spec, images = synthetic
    out = tmp_path / "g"
    assert main(_argv(spec, images, out, "1", "--threads", "2", "-q")) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["keys"]["analyse"]["class-1.json"], manifest["hashes"]["analyse"]["class-1.json"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    torch.set_num_threads(1)
    capsys.readouterr()
    assert main(_argv(spec, images, out, "1,2")) == 0
    assert "computing the other 1 graph(s) with 2 threads, as the kept graphs were" in capsys.readouterr().out
    assert _threads(out) == {"class-1.json": 2, "class-2.json": 2}


def test_a_kept_graph_is_read_once(synthetic, tmp_path, one_thread, monkeypatch):
    """A re-run keeps every graph: each kept file is read once (its integrity check, which also gives its thread
    count), not once more for its attributes."""
    spec, images = synthetic
    out = tmp_path / "g"
    assert main(_argv(spec, images, out, "1,2", "-q")) == 0
    reads: list[str] = []
    read_bytes = Path.read_bytes

    def counting(self):
        if self.name.startswith("class-"):
            reads.append(self.name)
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    assert main(_argv(spec, images, out, "1,2", "-q")) == 0
    assert sorted(reads) == ["class-1.json", "class-2.json"], reads


@pytest.mark.parametrize("suffix", [".json", ".graphml"])
def test_landed_attrs_reads_a_whole_graph_of_either_format(tmp_path, suffix):
    """The one check of a landed graph (worker and driver): both formats, and nothing from a file that is not a
    whole graph."""
    from ssa.scale.jobs import KEY_ATTR, landed_attrs

    g = nx.DiGraph()
    g.add_node("fc:1", tap="fc", neuron=1)
    g.graph.update({KEY_ATTR: "k", "threads": 2})
    path = ssa.write_graph(g, tmp_path / f"class-1{suffix}")
    assert landed_attrs(path)[KEY_ATTR] == "k" and landed_attrs(path)["threads"] == 2
    path.write_bytes(path.read_bytes()[:-20])  # cut short
    assert landed_attrs(path) == {}
    assert landed_attrs(tmp_path / "missing.json") == {}


@pytest.mark.slow
def test_threads_above_what_torch_takes_are_warned_about(tmp_path):
    """torch caps OMP_NUM_THREADS at the cores it finds: `--threads` above that is said in one warning before the
    work, with the count the graphs record; before, only the graph's `threads` attribute said so."""
    asked = 4 * (os.cpu_count() or 1)
    res = subprocess.run([sys.executable, "-m", "ssa", "analyse", "digits", "--images", "digits", "-t", "3",
                          "--max-per-class", "5", "--threads", str(asked), "-o", str(tmp_path / "g.json"), "-q"],
                         env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    used = ssa.read_graph(tmp_path / "g.json").graph["threads"]
    assert used < asked
    said = [ln for ln in res.stderr.splitlines() if "--threads" in ln]
    assert said == [f"ssa: warning: --threads {asked}: torch computes with {used} thread(s) (no more than the cores it "
                    f"finds); the outputs record {used}."], res.stderr
    res = subprocess.run([sys.executable, "-m", "ssa", "analyse", "digits", "--images", "digits", "-t", "3",
                          "--max-per-class", "5", "--threads", "1", "-o", str(tmp_path / "g.json"), "-q"],
                         env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "--threads" not in res.stderr, res.stderr
