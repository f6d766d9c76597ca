"""`ssa study` (issue 13): an interrupted study (SIGKILL of the real process) resumes to the same outputs as an
uninterrupted one; peak host memory does not grow with the number of classes; study-file errors are one line."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssa.cli import main
from ssa.scale.jobs import read_write_log
from tests.scale.synthetic import write_folder, write_jpeg_folder, write_model, write_rgb_model

ROOT = Path(__file__).resolve().parents[2]

STUDY = '''
targets = {targets}

[[model]]
name = "d24"
spec = "{spec}"

[images]
path = "{images}"
preprocess = {{preset = "0-1", channels = {channels}}}

[selection]
max_images = {max_images}

[method]
rules = ["gradient_x_activation"]
selectors = ["mad", {{name = "tukey", k = 1.5}}]
branching = [3]

[outputs]
compare = {compare}
report = false
'''


def _study(path: Path, spec: str, images: Path, *, targets="\"all\"", channels=1, max_images=30, compare="true"):
    path.write_text(STUDY.format(spec=spec, images=images, targets=targets, channels=channels, max_images=max_images,
                                 compare=compare))
    return path


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("study.json", ".ssa-outputs.json") and not p.name.endswith(".png")}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    return write_model(d), write_folder(d / "imgs", per_class=40)


@pytest.mark.slow
def test_a_killed_study_resumes_to_the_outputs_of_an_uninterrupted_one(synthetic, tmp_path, capsys):
    spec, images = synthetic
    study = _study(tmp_path / "study.toml", spec, images)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert main(["study", str(study), "--out-dir", str(full), "-q"]) == 0
    reference = _files(full)
    graphs = [k for k in reference if Path(k).name.startswith("class-")]
    assert len(graphs) == 48 and any(k.startswith("d24/gradient_x_activation-mad-b3/compare/") for k in reference)

    log = tmp_path / "writes.log"
    # the killed process computes with this process's thread count (graphs record it; the CPU kernels' rounding
    # depends on it): left to itself it would take the idle cores, and its graphs would differ from the reference
    env = {**os.environ, "SSA_WRITE_LOG": str(log), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "ssa", "study", str(study), "--out-dir", str(resumed), "-q"],
                            env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while len(read_write_log(log)) < 6 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)  # the real process, mid-run
    proc.communicate()
    landed = len(read_write_log(log))
    assert 6 <= landed < 48, landed  # killed half-way
    assert not (resumed / "study.json").exists()

    os.environ["SSA_WRITE_LOG"] = str(log)
    try:
        assert main(["study", str(study), "--out-dir", str(resumed), "-q"]) == 0
    finally:
        del os.environ["SSA_WRITE_LOG"]
    assert _files(resumed) == reference  # byte-identical graphs, tables and shared sub-graphs
    assert sorted(p.name for p in resumed.rglob("*.png")) == sorted(p.name for p in full.rglob("*.png"))
    counts = collections.Counter(x["file"] for x in read_write_log(log))
    assert len(counts) == 48 and set(counts.values()) == {1}  # each graph landed once over the two runs
    summary = json.loads((resumed / "study.json").read_text())
    assert summary["run"]["computed"] == 24 - summary["run"]["kept_outputs"] // 2 or summary["run"]["computed"] > 0
    assert {o["method"] for o in summary["outputs"]} == {"gradient_x_activation-mad-b3",
                                                         "gradient_x_activation-tukey-b3"}
    capsys.readouterr()
    # and once more: nothing left to do
    assert main(["study", str(study), "--out-dir", str(resumed)]) == 0
    assert "0 computed, 48 graph(s) kept" in capsys.readouterr().out
    assert _files(resumed) == reference


PEAK = '''
import json, sys
from ssa.cli import main
from ssa.testing.memory import peak_rss_kib
code = main(["study", sys.argv[1], "--out-dir", sys.argv[2], "-q"])
print(json.dumps({"code": code, "maxrss_kib": peak_rss_kib()}))
'''


def peak_of_study(study: Path, out: Path) -> int:
    """Peak resident memory (KiB) of a process that runs the study."""
    res = subprocess.run([sys.executable, "-c", PEAK, str(study), str(out)], capture_output=True, text=True,
                         cwd=ROOT, timeout=900)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert data["code"] == 0, res.stderr
    return int(data["maxrss_kib"])


@pytest.mark.slow
def test_peak_memory_of_50_classes_is_that_of_5(tmp_path):
    spec = write_rgb_model(tmp_path, 50)
    images = write_jpeg_folder(tmp_path / "imgs", 50, 40)  # 2000 images of 3x112x112: 300 MB as float32
    small = _study(tmp_path / "five.toml", spec, images, targets="[0, 1, 2, 3, 4]", channels=3, max_images=40,
                   compare="false")
    large = _study(tmp_path / "fifty.toml", spec, images, targets="\"all\"", channels=3, max_images=40,
                   compare="false")
    five = peak_of_study(small, tmp_path / "out5")
    fifty = peak_of_study(large, tmp_path / "out50")
    ratio = fifty / five
    print(f"\npeak host memory: 5 classes {five / 1024:.0f} MiB, 50 classes {fifty / 1024:.0f} MiB, ratio {ratio:.3f}")
    assert ratio <= 1.2, (five, fifty)


@pytest.mark.parametrize("text,needle", [
    ("out = 'x'\n", "no model"),
    ("[[model]]\nspec = 'digits'\n[images]\npath = 'digits'\n", "no output folder"),
    ("out = 'x'\nbogus = 1\n", "unknown key 'bogus'"),
    ("out = 'x'\n[[model]]\nspec = 'digits'\n[images]\n", "[images] needs path"),
    ("out = 'x'\n[[model]]\nspec = 'digits'\n[images]\npath = 'digits'\n[method]\nbranching = [0]\n",
     "branching must hold integers >= 1"),
    ("out = 'x'\n[[model]]\nspec = 'digits'\n[images]\npath = 'digits'\n[method]\nselectors = ['nope']\n",
     "nope"),
    ("out = 'x'\n[[model]]\nspec = 'digits'\n[images]\npath = 'digits'\n[selection]\nmin_confidence = 2\n",
     "min_confidence must be in [0, 1]"),
    ("out = [\n", "cannot parse it"),
    # values of the wrong type (before: internal errors)
    ("out = 5\n[[model]]\nspec = 'digits'\n[images]\npath = 'digits'\n",
     "out must be a folder name in quotes (out = \"DIR\"), got 5."),
    ("out = 'x'\n[[model]]\nspec = 'digits'\n[images]\npath = 'digits'\ndecode_workers = 'abc'\n",
     "[images] decode_workers must be an integer >= 0, got 'abc'."),
    ("out = 'x'\n[[model]]\nspec = 'digits'\n[images]\npath = 'digits'\n[selection]\nmin_confidence = 'high'\n",
     "min_confidence must be a number in [0, 1], got 'high'."),
    ("out = 'x'\n[[model]]\nspec = 'digits'\n[images]\npath = 'digits'\n[outputs]\ncompare = 'no'\n",
     "[outputs] compare must be true or false, got 'no'."),  # before, 'no' was true
])
def test_study_file_errors_are_one_line(tmp_path, capsys, text, needle):
    f = tmp_path / "s.toml"
    f.write_text(text)
    assert main(["study", str(f)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()


def test_a_small_study_on_digits(tmp_path, capsys):
    f = tmp_path / "s.toml"
    f.write_text("out = 'out'\ntargets = [1, 2, 3]\n[[model]]\nspec = 'digits'\n[images]\npath = 'digits'\n"
                 "[selection]\nmin_confidence = 0.99\nmax_images = 20\n[outputs]\nreport = false\n")
    assert main(["study", str(f)]) == 0
    out = capsys.readouterr().out
    assert "3 class job(s): 3 computed" in out and "images/s per worker: decoding" in out
    summary = json.loads((tmp_path / "out" / "study.json").read_text())
    assert summary["outputs"][0]["classes"] == 3 and summary["run"]["analysed"] == 60
    assert (tmp_path / "out" / "digits" / "gradient_x_activation-mad-b3" / "compare" / "jaccard.csv").is_file()


def _report_only_study(tmp_path):
    """A study file of two digits classes, 10 images each, with a report and no comparison."""
    f = tmp_path / "s.toml"
    f.write_text("out = 'out'\ntargets = [1, 2]\n[[model]]\nspec = 'digits'\n[images]\npath = 'digits'\n"
                 "[selection]\nmax_images = 10\n[outputs]\ncompare = false\n")
    return f


def test_a_report_that_cannot_be_written_ends_the_study(tmp_path, capsys, monkeypatch):
    """A full disk while a study writes a report (or a comparison) is the environment, not these graphs: the study
    ends with the one error line and exit 2, its graphs kept for the re-run; before, it said two warnings and
    exited 0 with the report missing."""
    import errno

    import ssa.io.atomic as atomic

    write = atomic._atomic_write

    def full(path, data):
        if path.name == "report.html":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(path, data)

    monkeypatch.setattr(atomic, "_atomic_write", full)
    f = _report_only_study(tmp_path)
    assert main(["study", str(f), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ssa: error: cannot write ") and "report.html" in err[0], err
    assert "No space left on device (ENOSPC)" in err[0]
    folder = tmp_path / "out" / "digits" / "gradient_x_activation-mad-b3"
    assert sorted(p.name for p in folder.glob("class-*.json")) == ["class-1.json", "class-2.json"]
    monkeypatch.undo()
    assert main(["study", str(f), "-q"]) == 0  # space freed: the re-run keeps the graphs and writes the report
    assert (folder / "report.html").is_file()
    assert "2 graph(s) kept" in capsys.readouterr().out


def test_a_report_refused_for_its_graphs_is_one_warning(tmp_path, capsys, monkeypatch):
    """A report (or comparison) refused for its graphs is skipped with one warning line; before, the command line
    said it a second time."""
    import ssa.scale.study as S
    from ssa.errors import InvalidInputError

    def refused(*a, **k):
        raise InvalidInputError("these graphs cannot be reported.")

    monkeypatch.setattr(S, "_report", refused)
    f = _report_only_study(tmp_path)
    assert main(["study", str(f), "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ssa: warning: digits, gradient_x_activation-mad-b3: no report (these graphs cannot be reported)"]
