"""Progress when stderr is not a terminal (issue 18, item 14): log lines at most every 30 s with the stage,
done / total, rate and time left; bars only on a terminal; the image-set hash remembered in the run's folder."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ssa
from ssa.io.outdir import ANALYSE_OUTPUTS, OutputDir
from ssa.io.progress import INTERVAL_ENV, LogProgress, progress

SCRIPT = Path(sys.executable).with_name("ssa")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_log_lines_at_most_every_interval_with_rate_and_time_left():
    clock, out = Clock(), io.StringIO()
    bar = LogProgress(100, "hashing images", "img", stream=out, interval=30, clock=clock)
    for _ in range(10):  # 10 images in 20 s: no line yet
        clock.t += 2
        bar.update(1)
    assert out.getvalue() == ""
    clock.t += 10
    bar.update(2)  # 12 images after 30 s: one line
    for _ in range(20):  # then 20 more within 29 s: nothing
        clock.t += 29 / 20
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines == ["ssa: hashing images: 12/100 img (0.4 img/s, about 3.7 min left)"]
    clock.t += 1.0
    bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[1].startswith("ssa: hashing images: 33/100 img (")
    assert re.fullmatch(r"ssa: hashing images: done, 33/100 img in 60 s \(0\.55 img/s\)", lines[2]), lines[2]


def test_a_short_stage_prints_nothing_and_a_resumed_one_counts_only_new_work():
    clock, out = Clock(), io.StringIO()
    bar = LogProgress(5, "statistics", "batch", stream=out, interval=30, clock=clock)
    clock.t += 3
    bar.update(5)
    bar.close()
    assert out.getvalue() == ""
    bar = LogProgress(10, "classes", "class", initial=6, stream=out, interval=30, clock=clock)
    clock.t += 40
    bar.update(2)
    assert out.getvalue() == "ssa: classes: 8/10 class (0.05 class/s, about 40 s left)\n"


def test_a_terminal_gets_a_bar_and_anything_else_log_lines(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    from tqdm import tqdm

    bar = progress(3, "statistics", "batch")
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress(3, "statistics", "batch"), LogProgress)
    assert not isinstance(progress(3, "statistics", "batch", show=False), LogProgress)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SSA_DEBUG", "SSA_STORE")}
    return {**env, **extra}


@pytest.mark.parametrize("argv, stages", [
    (["collect", "digits", "--images", "digits", "--store", "{d}/store"], ["statistics"]),
    (["analyse", "digits", "--images", "digits", "-t", "3", "-o", "{d}/g.json", "--engine", "autograd"],
     ["traversal of class 3"]),
    (["analyse", "digits", "--images", "{d}/imgs", "--channels", "1", "--targets", "1,2", "--out-dir", "{d}/g"],
     ["hashing images", "classes"]),
    (["analyse", "digits", "--images", "{d}/imgs/1", "--channels", "1", "-t", "1", "-o", "{d}/g1.json"],
     ["loading 1"]),
], ids=["statistics", "traversal", "hashing-and-classes", "loading"])
def test_a_real_process_without_a_terminal_logs_each_stage(tmp_path, argv, stages):
    x, y = ssa.load_images("digits")
    for c in (1, 2):
        (tmp_path / "imgs" / str(c)).mkdir(parents=True)
        for i, im in enumerate(x[y == c][:6]):
            Image.fromarray(np.uint8(np.round(im[0] * 255))).save(tmp_path / "imgs" / str(c) / f"{i}.png")
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    proc = subprocess.run([str(SCRIPT), *argv], env=_env(**{INTERVAL_ENV: "0"}), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    for stage in stages:
        lines = [s for s in proc.stderr.splitlines() if s.startswith(f"ssa: {stage}: ")]
        assert lines and lines[-1].startswith(f"ssa: {stage}: done, "), proc.stderr
        assert any(re.search(r": \d+(/\d+)? \w+ \([\d.e+-]+ \w+/s", s) for s in lines[:-1]), lines
    # the default interval (30 s): these short stages print no progress at all
    proc = subprocess.run([str(SCRIPT), *argv], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and not [s for s in proc.stderr.splitlines() if s.startswith("ssa: ")
                                         and "warning" not in s], proc.stderr


def test_the_image_set_hash_is_remembered_in_the_folder_keyed_by_the_listing(tmp_path, monkeypatch):
    from ssa.io.datasets import open_source
    from ssa.io.images import Preprocess
    from ssa.scale import plan

    x, y = ssa.load_images("digits")
    root = tmp_path / "imgs"
    (root / "0").mkdir(parents=True)
    for i, im in enumerate(x[y == 0][:5]):
        Image.fromarray(np.uint8(np.round(im[0] * 255))).save(root / "0" / f"{i}.png")
    pre = Preprocess(channels=1)
    with OutputDir(tmp_path / "g", "analyse", ANALYSE_OUTPUTS) as od:
        first = plan.images_hash_of(open_source(root, preprocess=pre), od)
    calls = []
    real = plan.content_hash
    monkeypatch.setattr(plan, "content_hash", lambda *a, **k: calls.append(1) or real(*a, **k))
    with OutputDir(tmp_path / "g", "analyse", ANALYSE_OUTPUTS) as od:  # an interrupted or repeated run
        assert plan.images_hash_of(open_source(root, preprocess=pre), od) == first and calls == []
    Image.fromarray(np.uint8(np.round(x[y == 0][7][0] * 255))).save(root / "0" / "3.png")  # same name, new image
    with OutputDir(tmp_path / "g", "analyse", ANALYSE_OUTPUTS) as od:
        changed = plan.images_hash_of(open_source(root, preprocess=pre), od)
    assert calls == [1] and changed != first


def test_a_stage_that_cannot_count_says_it_is_still_running(monkeypatch):
    import time

    from ssa.io.progress import busy

    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    with busy("quick", interval=30):
        pass
    assert out.getvalue() == ""
    with busy("preparing the model", interval=0.1):
        time.sleep(0.35)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and lines[0] == "ssa: preparing the model: still running after 0 s"
    assert lines[-1] == "ssa: preparing the model: done in 0 s"


def test_model_loading_and_preparation_are_stages(tmp_path):
    """Without a terminal, a model that is slow to build (or to check against onnxruntime) is not silent."""
    (tmp_path / "slow.py").write_text("import time\nfrom ssa.models import digits_cnn\n\n\ndef model():\n"
                                      "    time.sleep(1.0)\n    return digits_cnn()\n")
    proc = subprocess.run([str(SCRIPT), "check", f"{tmp_path}/slow.py:model", "--input-shape", "1,8,8"],
                          env=_env(**{INTERVAL_ENV: "0.3"}), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ssa: loading the model: still running after" in proc.stderr
    assert "ssa: loading the model: done in" in proc.stderr
