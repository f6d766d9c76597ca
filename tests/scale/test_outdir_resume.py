"""The --out-dir manifest of resumable runs: keys per output, planned names, kept outputs, remembered values."""

from __future__ import annotations

import json

from ssa.io.atomic import atomic_write_bytes
from ssa.io.outdir import ANALYSE_OUTPUTS, MANIFEST, OutputDir


def test_keys_plan_keep_and_memo(tmp_path):
    out = tmp_path / "g"
    with OutputDir(out, "analyse", ANALYSE_OUTPUTS) as od:
        od.plan(["class-1.json", "class-2.json"])
        planned = json.loads((out / MANIFEST).read_text())
        assert planned["commands"]["analyse"] == ["class-1.json", "class-2.json"]  # known before any write
        atomic_write_bytes(out / "class-1.json", b"{}")
        od.record("class-1.json", "k1")
        assert json.loads((out / MANIFEST).read_text())["keys"]["analyse"] == {"class-1.json": "k1"}  # at once
        od.remember("images_hash:x", "abc")
        atomic_write_bytes(out / "class-2.json", b"{}")
        od.record("class-2.json", "k2")
    with OutputDir(out, "analyse", ANALYSE_OUTPUTS) as od:
        assert od.recorded("class-1.json") == "k1" and od.recorded("class-2.json") == "k2"
        assert od.memo("images_hash:x") == "abc"
        od.keep("class-1.json")  # class-2 neither kept nor written again: removed at the end, as --out-dir does
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "class-1.json"]
    data = json.loads((out / MANIFEST).read_text())
    assert data["keys"]["analyse"] == {"class-1.json": "k1"} and data["memo"]["analyse"] == {"images_hash:x": "abc"}


def test_a_killed_run_leaves_its_files_known(tmp_path):
    out = tmp_path / "g"
    od = OutputDir(out, "analyse", ANALYSE_OUTPUTS).__enter__()
    od.plan(["class-1.json"])
    atomic_write_bytes(out / "class-1.json", b"{}")  # landed, but the run dies before recording it
    # (no __exit__: the process was killed)
    from ssa.io.atomic import write_listeners

    write_listeners.clear()
    with OutputDir(out, "analyse", ANALYSE_OUTPUTS) as again:  # not refused as a foreign file
        assert again.recorded("class-1.json") is None  # no key: the job checks the file itself
        again.keep("class-1.json")


def test_a_plain_write_drops_an_earlier_key(tmp_path):
    out = tmp_path / "g"
    with OutputDir(out, "analyse", ANALYSE_OUTPUTS) as od:
        atomic_write_bytes(out / "class-1.json", b"{}")
        od.record("class-1.json", "k1")
    with OutputDir(out, "analyse", ANALYSE_OUTPUTS) as od:
        atomic_write_bytes(out / "class-1.json", b"{ }")  # rewritten by a run that records no key
    with OutputDir(out, "analyse", ANALYSE_OUTPUTS) as od:
        assert od.recorded("class-1.json") is None
        od.keep("class-1.json")


def test_leftover_temporary_files_of_a_killed_run_are_removed(tmp_path):
    out = tmp_path / "g"
    out.mkdir()
    (out / ".class-3.json.ab12cd.tmp").write_text("half")
    (out / f".{MANIFEST}.zz99.tmp").write_text("half")
    (out / ".notes.txt.ab12.tmp").write_text("the user's")
    with OutputDir(out, "analyse", ANALYSE_OUTPUTS):
        pass
    assert sorted(p.name for p in out.iterdir()) == [".notes.txt.ab12.tmp"]
