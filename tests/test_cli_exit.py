"""The command line's process exits without the interpreter's final collections (a first graph in seconds,
issue 19, item 6): ``main()`` on the process's own arguments freezes the collector's objects when it is done;
``main(argv)`` called with arguments (tests, scripts, notebooks) leaves the caller's process as it was."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

from ssa.cli import main


def test_main_on_the_process_arguments_freezes_the_collector(monkeypatch, capsys):
    assert gc.get_freeze_count() == 0
    monkeypatch.setattr(sys, "argv", ["ssa", "--version"])
    try:
        assert main() == 0
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    assert main(["--version"]) == 0 and gc.get_freeze_count() == 0  # arguments given: the caller's process
    assert capsys.readouterr().out.startswith("ssa ")


def test_a_whole_process_writes_its_graph_and_exits_0(tmp_path):
    """``python -m ssa analyse``: the graph file is whole and the exit code 0 with the collector frozen at the end."""
    out = tmp_path / "graph.json"
    env = {**os.environ, "SSA_PARITY_CACHE": "0"}
    done = subprocess.run([sys.executable, "-m", "ssa", "analyse", "digits", "--images", "digits", "-t", "3",
                           "--out", str(out), "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    from ssa.io.graphs import read_graph

    assert read_graph(out).number_of_nodes() > 1
