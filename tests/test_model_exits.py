"""Model code that ends the process (issue 18, item 3): SystemExit or any BaseException but Ctrl-C is one line
and exit code 2 (the bad-input suite runs those cases in-process and in real processes); Ctrl-C stays Ctrl-C."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssa.cli import main
from ssa.models import digits_data

SCRIPT = Path(sys.executable).with_name("ssa")

MODELS = """
import os
import sys
from ssa.models import DigitsCNN

if os.environ.get("EXIT_AT_IMPORT"):
    sys.exit(0)
if os.environ.get("INTERRUPT_AT_IMPORT"):
    raise KeyboardInterrupt


class Interrupted(DigitsCNN):
    def forward(self, x):
        raise KeyboardInterrupt


class Exits(DigitsCNN):
    def forward(self, x):
        sys.exit(0)
"""


@pytest.fixture()
def work(tmp_path):
    x, _ = digits_data()
    np.save(tmp_path / "x.npy", x[:8])
    (tmp_path / "m.py").write_text(MODELS)
    return tmp_path


def test_ctrl_c_in_forward_or_at_import_stays_an_interruption(work, capsys, monkeypatch):
    argv = ["analyse", f"{work}/m.py:Interrupted", "--images", str(work / "x.npy"), "-t", "3"]
    assert main(argv) == 130
    assert capsys.readouterr().err == "ssa: interrupted\n"
    monkeypatch.setenv("INTERRUPT_AT_IMPORT", "1")
    assert main(argv) == 130
    assert capsys.readouterr().err == "ssa: interrupted\n"


@pytest.mark.parametrize("env, model, words", [
    ({"EXIT_AT_IMPORT": "1"}, "Exits", "raised SystemExit(0); model code must not end the process"),
    ({}, "Exits", "raised SystemExit(0), which ends the run"),
    ({"INTERRUPT_AT_IMPORT": "1"}, "Exits", None),
], ids=["exit-at-import", "exit-in-forward", "ctrl-c-at-import"])
def test_in_a_real_process(work, env, model, words):
    full = {k: v for k, v in os.environ.items() if k not in ("SSA_DEBUG", "SSA_STORE")}
    proc = subprocess.run([str(SCRIPT), "analyse", f"{work}/m.py:{model}", "--images", str(work / "x.npy"), "-t", "3",
                           "-o", str(work / "g.json")], env={**full, **env}, capture_output=True, text=True,
                          timeout=300)
    if words is None:
        assert (proc.returncode, proc.stderr) == (130, "ssa: interrupted\n")
    else:
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ssa: error: ") and words in lines[0], proc.stderr
    assert proc.stdout == "" and not (work / "g.json").exists()
