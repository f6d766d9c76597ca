"""Errors of the environment (output paths, read-only folders, a full disk, a closed pipe): one line on
stderr and exit code 2, checked before any computation, earlier outputs untouched; real bugs stay
"internal error" and SSA_DEBUG=1 gives their traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssa.cli import main

SSA = [str(Path(sys.executable).with_name("ssa"))] if Path(sys.executable).with_name("ssa").exists() \
    else [sys.executable, "-m", "ssa.cli"]


def _one_line(capsys, *needles: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and "internal error" not in captured.err
    for n in needles:
        assert n in lines[0], lines[0]
    assert captured.out == ""
    return lines[0]


@pytest.fixture()
def unwritable_dir(tmp_path):
    """A folder nobody may create files in: permissions for a normal user, a read-only tmpfs for root."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d, "permission denied"
        d.chmod(0o755)
        return
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(d)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("root without the right to mount a read-only tmpfs: no unwritable folder can be made")
    try:
        yield d, "read-only file system"
    finally:
        subprocess.run(["umount", str(d)], check=False)


def test_output_checks_come_before_the_computation(tmp_path, capsys, monkeypatch):
    import ssa.api

    def boom(*a, **k):
        raise AssertionError("the analysis ran although the output cannot be written")

    monkeypatch.setattr(ssa.session.Session, "prepare", boom)
    (tmp_path / "afile").write_text("user data")
    (tmp_path / "adir.json").mkdir()
    cases = [
        (["analyse", "digits", "--images", "digits", "-t", "3", "-o", str(tmp_path / "adir.json")], "is a folder"),
        (["analyse", "digits", "--images", "digits", "-t", "3", "-o", str(tmp_path / "afile" / "g.json")],
         "is a file"),
        (["analyse", "digits", "--images", "digits", "--targets", "1,2", "--out-dir", str(tmp_path / "afile")],
         "--out-dir"),
        (["evaluate", "digits", "--images", "digits", "--targets", "3", "--out", str(tmp_path / "adir.json" / "x")],
         ".csv"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        _one_line(capsys, needle)
    assert (tmp_path / "afile").read_text() == "user data"


def test_read_only_output_folder(unwritable_dir, capsys):
    d, words = unwritable_dir
    assert main(["analyse", "digits", "--images", "digits", "-t", "3", "-q", "-o", str(d / "g.json")]) == 2
    _one_line(capsys, words, "--out")
    assert main(["compare", "a.json", "b.json", "--out-dir", str(d / "cmp")]) == 2
    _one_line(capsys, words, "--out-dir")


def test_disk_full_while_writing(tmp_path, capsys, monkeypatch):
    """ENOSPC at the end of an atomic write: one line, no temporary file left, the old file intact."""
    import ssa.io.atomic

    out = tmp_path / "g.json"
    out.write_text("previous result")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ssa.io.atomic.os, "fsync", full)
    assert main(["analyse", "digits", "--images", "digits", "-t", "3", "-q", "-o", str(out)]) == 2
    _one_line(capsys, "No space left on device", "ENOSPC", str(out))
    assert out.read_text() == "previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]


@pytest.mark.slow
def test_file_size_limit_in_a_real_process(tmp_path, capsys):
    """A real write error in a real process (RLIMIT_FSIZE: EFBIG): one line, exit 2, earlier outputs intact."""
    import resource

    import ssa

    graphs = ssa.analyse_many("digits", "digits", [1, 2], max_per_class=20)
    files = [str(graphs[c].write(tmp_path / f"class-{c}.json")) for c in graphs]
    out = tmp_path / "cmp"
    assert main(["compare", *files, "--out-dir", str(out)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))

    proc = subprocess.run(SSA + ["compare", *files, "--out-dir", str(out), "--format", "svg"], capture_output=True,
                          text=True, preexec_fn=limit, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "File too large (EFBIG)" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing replaced, nothing removed
    proc = subprocess.run(SSA + ["compare", *files, "--out-dir", str(tmp_path / "new")], capture_output=True,
                          text=True, preexec_fn=limit, timeout=300)
    assert proc.returncode == 2 and not (tmp_path / "new").exists()  # a failed first run leaves no empty folder


@pytest.mark.slow
def test_closed_pipe_is_quiet(tmp_path):
    """`ssa plugins | head -1` and a reader that is gone before ssa writes: no "internal error", no traceback."""
    cmd = " ".join(SSA)
    proc = subprocess.run(["bash", "-c", f"{cmd} plugins | head -1; echo \"status ${{PIPESTATUS[0]}}\""],
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.splitlines()[0] == "backends:"
    assert proc.stdout.splitlines()[-1] in ("status 0", "status 141")  # 0 when everything fit into the pipe
    assert proc.stderr == ""
    # `true` exits at once, long before ssa has imported torch: the write always meets a closed pipe
    proc = subprocess.run(["bash", "-c", f"{cmd} plugins | true; echo \"status ${{PIPESTATUS[0]}}\""],
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "status 141" and proc.stderr == ""


def test_closed_stdout_and_stderr_at_start(tmp_path):
    """`ssa ... >&-` (Python then sets sys.stdout to None): the command runs and writes its files, exit 0; before,
    an internal error at the end (exit 1). With stderr closed too, and a refusal still exits 2."""
    cmd = " ".join(SSA)
    out = tmp_path / "g.json"
    proc = subprocess.run(["bash", "-c", f"{cmd} analyse digits --images digits -t 3 -q -o {out} >&-"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "" and out.is_file(), proc.stderr
    proc = subprocess.run(["bash", "-c", f"{cmd} plugins >&- 2>&-; echo \"status $?\"; "
                                         f"{cmd} analyse digits --images digits -t 30 >&- 2>&-; echo \"status $?\""],
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["status", "0", "status", "2"], proc


def test_bugs_stay_internal_errors_and_debug_shows_the_traceback(capsys, monkeypatch):
    import ssa.cli.commands.plugins as cmd

    def bug(args):
        raise KeyError("a bug in ssa")

    monkeypatch.setattr(cmd, "run", bug)
    monkeypatch.delenv("SSA_DEBUG", raising=False)
    assert main(["plugins"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ssa: internal error: KeyError") and "SSA_DEBUG=1" in err and err.count("\n") == 1
    monkeypatch.setenv("SSA_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["plugins"])


@pytest.mark.slow
def test_a_write_error_in_an_explorer_folder_names_the_folder(tmp_path):
    """A folder explorer's files are written into a temporary folder; a write error there (EFBIG: ``ulimit -f``)
    names the --out folder (before: "ssa: error: File too large", which file not said) and leaves nothing."""
    import resource

    import ssa

    graphs = ssa.analyse_many("digits", "digits", [1, 2], max_per_class=20)
    files = [str(graphs[c].write(tmp_path / f"class-{c}.json")) for c in graphs]

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))

    out = tmp_path / "ex"
    proc = subprocess.run(SSA + ["explore", *files, "--out", f"{out}/"], capture_output=True, text=True,
                          preexec_fn=limit, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"ssa: error: cannot write the explorer --out '{out}/': File too large (EFBIG)"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class-1.json", "class-2.json"]  # no folder, no leftover
