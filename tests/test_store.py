"""The statistics store: resumable, atomic per batch, identical after an interruption."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import ssa
from ssa.api import load_model
from ssa.cli import main
from ssa.engines.statistics import collect
from ssa.io.images import load_images
from ssa.session import open_store, store_meta


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def digits_subset():
    images, labels = load_images("digits")
    return images[:150], labels[:150]


def test_interrupted_collect_resumes_to_an_identical_store(tmp_path, digits_subset):
    images, _ = digits_subset
    net = load_model("digits")
    net.prepare(images)
    whole = open_store(net, images, tmp_path / "a")
    whole.init(store_meta(net, images, 16))
    collect(net, images, ["gradient", "gradient_x_activation"], 16, store=whole)

    part = open_store(net, images, tmp_path / "b")
    part.init(store_meta(net, images, 16))
    collect(net, images, ["gradient", "gradient_x_activation"], 16, store=part, stop_after=4)
    assert not part.is_complete("gradient")
    # a crash in the middle of writing a batch leaves a temporary folder, never a half batch
    (part.path / "gradient" / ".tmp-batch-00004-999").mkdir()
    (part.path / "gradient" / ".tmp-batch-00004-999" / "junk.npy").write_bytes(b"half")
    collect(net, images, ["gradient", "gradient_x_activation"], 16, store=part)
    assert part.is_complete("gradient") and part.is_complete("gradient_x_activation")
    assert _tree(whole.path) == _tree(part.path)


def test_collect_cli_then_analyse_reads_only_the_store(tmp_path, digits_subset, monkeypatch, capsys):
    images, labels = digits_subset
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", labels)
    store = tmp_path / "store"
    assert main(["collect", "digits", "--images", str(tmp_path / "x.npy"), "--store", str(store), "-q",
                 "--batch-size", "32", "--rule", "gradient"]) == 0
    direct = ssa.analyse("digits", images, 3, labels=labels, engine="autograd", preset="paper")

    from ssa_torch.network import TorchNetwork

    def boom(*a, **k):
        raise AssertionError("the network ran although the store is complete")

    monkeypatch.setattr(TorchNetwork, "collect", boom)
    monkeypatch.setattr(TorchNetwork, "step_relevance", boom)
    from_store = ssa.analyse("digits", images, 3, labels=labels, store=store, preset="paper")
    assert sorted(from_store.graph.edges) == sorted(direct.graph.edges)
    out = tmp_path / "g.json"
    assert main(["analyse", "digits", "--images", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                 "-t", "3", "--store", str(store), "-q", "--preset", "paper", "-o", str(out)]) == 0
    assert ssa.read_graph(out).number_of_edges() == from_store.graph.number_of_edges()


def test_store_with_other_batch_size_is_refused(tmp_path, digits_subset, capsys):
    images, _ = digits_subset
    np.save(tmp_path / "x.npy", images)
    store = str(tmp_path / "s")
    assert main(["collect", "digits", "--images", str(tmp_path / "x.npy"), "--store", store, "-q",
                 "--batch-size", "32", "--rule", "gradient"]) == 0
    assert main(["collect", "digits", "--images", str(tmp_path / "x.npy"), "--store", store, "-q",
                 "--batch-size", "16", "--rule", "gradient"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch_size" in err[0]


def test_corrupt_store_file_is_reported(tmp_path, digits_subset, capsys):
    images, _ = digits_subset
    np.save(tmp_path / "x.npy", images)
    store = tmp_path / "s"
    assert main(["collect", "digits", "--images", str(tmp_path / "x.npy"), "--store", str(store), "-q",
                 "--rule", "gradient"]) == 0
    victim = next(store.rglob("batch-00000")) / "scalars__logits.npy"
    victim.write_bytes(b"not numpy")
    assert main(["analyse", "digits", "--images", str(tmp_path / "x.npy"), "-t", "1", "--store", str(store),
                 "-q", "--preset", "paper"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt" in err[0]


@pytest.mark.slow
def test_killed_collect_process_resumes_to_an_identical_store(tmp_path):
    """SIGKILL a real `ssa collect` mid-run, start it again: the store equals an uninterrupted one."""
    import signal
    import subprocess
    import sys
    import time

    images, _ = load_images("digits")
    np.save(tmp_path / "x.npy", images)
    argv = [sys.executable, "-m", "ssa.cli", "collect", "digits", "--images", str(tmp_path / "x.npy"),
            "--batch-size", "4", "-q", "--rule", "gradient"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(argv + ["--store", str(killed)])
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            done = list(killed.glob("*/*/gradient/batch-*"))
            if len(done) >= 5:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = list(killed.glob("*/*/gradient/batch-*"))
    assert 5 <= len(partial) < 450, "the collection finished before it could be killed"
    assert not list(killed.glob("*/*/gradient/complete.json"))
    assert subprocess.run(argv + ["--store", str(killed)]).returncode == 0

    whole = tmp_path / "whole"
    assert subprocess.run(argv + ["--store", str(whole)]).returncode == 0
    (a,) = [p for p in killed.glob("*/*") if p.is_dir()]
    (b,) = [p for p in whole.glob("*/*") if p.is_dir()]
    assert a.relative_to(killed) == b.relative_to(whole)
    assert _tree(a) == _tree(b)


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory):
    """A store of all 1797 digits (both forms), filled by `ssa collect`."""
    root = tmp_path_factory.mktemp("digits-store")
    store = root / "store"
    for rule in ("gradient", "gradient_x_activation"):
        assert main(["collect", "digits", "--images", "digits", "--store", str(store), "-q", "--rule", rule]) == 0
    return store


def _edges(g):
    return sorted(g.edges(data="frequency"))


def test_target_with_a_store_selects_the_class_images_by_label(digits_store, tmp_path, monkeypatch, capsys):
    """Issue 9, item 1: with a store, --target used to analyse all 1797 images as class 3."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SSA_STORE", raising=False)
    images, labels = load_images("digits")
    plain = ssa.analyse("digits", images, 3, labels=labels, rule="gradient", selector="tukey")
    assert plain.n_images == int((labels == 3).sum()) == 183
    # the API with an explicit store
    api = ssa.analyse("digits", images, 3, labels=labels, store=digits_store, rule="gradient", selector="tukey")
    assert api.n_images == 183 and _edges(api.graph) == _edges(plain.graph)
    assert api.engines and set(api.engines.values()) == {"fast"}
    # a Session restricted to one class (what ssa.analyse builds), read-only store
    sess = ssa.Session("digits", images, labels=labels, store=digits_store, store_mode="read", only_target=3,
                       rule="gradient")
    res = sess.analyse(3, selector="tukey")
    assert res.n_images == 183 and _edges(res.graph) == _edges(plain.graph)

    def cli(*extra, env_store=None):
        if env_store is not None:
            monkeypatch.setenv("SSA_STORE", str(env_store))
        else:
            monkeypatch.delenv("SSA_STORE", raising=False)
        out = tmp_path / "g.json"
        assert main(["analyse", "digits", "--images", "digits", "--target", "3", "--rule", "gradient",
                     "--selector", "tukey", "-o", str(out), *extra]) == 0
        text = capsys.readouterr().out
        assert re.search(r"^class 3 of \S+: 183 images", text, re.M), text
        return ssa.read_graph(out)

    reference = cli()  # no store anywhere
    assert _edges(reference) == _edges(plain.graph)
    assert _edges(cli("--store", str(digits_store))) == _edges(reference)
    assert _edges(cli(env_store=digits_store)) == _edges(reference)
    # the default .ssa-store in the working folder
    import shutil

    shutil.copytree(digits_store, tmp_path / ".ssa-store")
    assert _edges(cli()) == _edges(reference)


# -- stores that are files, locked, damaged or read-only (issue 9) ---------------------------------------
def _err(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err and "internal error" not in captured.err, captured.err
    return lines[0]


def test_a_store_that_is_a_file_is_refused(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "store"
    afile.write_text("not a store")
    for argv in (["collect", "digits", "--images", "digits", "--store", str(afile)],
                 ["analyse", "digits", "--images", "digits", "-t", "3", "--store", str(afile)]):
        assert main(argv) == 2
        assert "--store" in (line := _err(capsys)) and "is a file; a statistics store is a folder" in line
    monkeypatch.setenv("SSA_STORE", str(afile))
    assert main(["analyse", "digits", "--images", "digits", "-t", "3"]) == 2
    assert _err(capsys).startswith(f"ssa: error: SSA_STORE {str(afile)!r} is a file")
    monkeypatch.delenv("SSA_STORE")
    with pytest.raises(ssa.StoreError, match="is a file"):
        ssa.analyse("digits", "digits", 3, store=afile)
    assert afile.read_text() == "not a store"


def test_a_second_writer_is_refused(tmp_path, capsys):
    """Two `ssa collect` runs on one store: the second is refused while the first holds the lock."""
    import subprocess
    import sys

    images, _ = load_images("digits")
    root = tmp_path / "store"
    net = load_model("digits")
    net.prepare(images)
    path = open_store(net, images, root).path
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from ssa.session import load_model, open_store\nfrom ssa.io.images import load_images\n"
         "x, _ = load_images('digits'); n = load_model('digits'); n.prepare(x)\n"
         f"with open_store(n, x, {str(root)!r}).lock():\n"
         "    print('locked', flush=True); time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["collect", "digits", "--images", "digits", "--store", str(root), "-q"]) == 2
        line = _err(capsys)
        assert f"another ssa process (pid {holder.pid}) is writing the store {str(path)!r}" in line
        assert main(["analyse", "digits", "--images", "digits", "-t", "3", "--store", str(root), "-q"]) == 2
        assert "is writing the store" in _err(capsys)
    finally:
        holder.kill()
        holder.wait()
    assert main(["collect", "digits", "--images", "digits", "--store", str(root), "-q"]) == 0


@pytest.fixture(scope="module")
def gradient_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gradient-store") / "store"
    assert main(["collect", "digits", "--images", "digits", "--store", str(root), "-q", "--rule", "gradient"]) == 0
    return root


def _damage(store_root: Path, how: str) -> Path:
    images, labels = load_images("digits")
    (batch,) = [p for p in store_root.glob("*/*/gradient/batch-00002")]
    f = batch / "scalars__logits.npy"
    first3 = int(np.flatnonzero(labels[64:96] == 3)[0])  # a class-3 image in batch 2 (batch size 32)
    if how == "truncated":
        f.write_bytes(f.read_bytes()[:100])
    elif how == "shape":
        np.save(f, np.load(f)[:, :5])
    elif how == "rows":
        np.save(f, np.load(f)[:7])
    elif how == "nan":
        g = batch / "classifier.2__0__g.npy"
        a = np.load(g)
        a[first3] = np.nan
        np.save(g, a)
    elif how == "missing":
        (batch / "classifier.2__0__g.npy").unlink()
    return batch


@pytest.mark.parametrize("how, words, why", [
    ("truncated", "is corrupt (truncated or not a .npy array)", "scalars__logits.npy is unreadable"),
    ("shape", "has shape (32, 5), expected (32, 10)", "scalars__logits.npy has shape (32, 5), expected (32, 10)"),
    ("rows", "has shape (7, 10), expected (32, 10)", "scalars__logits.npy has shape (7, 10)"),
    ("nan", "holds NaN or infinite statistics", "classifier.2__0__g.npy holds NaN or infinite values"),
    ("missing", "lacks 'classifier.2__0__g.npy'; run `ssa collect --verify`", "classifier.2__0__g.npy is missing"),
])
def test_a_damaged_store_is_refused_at_use_and_repaired_by_verify(tmp_path, capsys, gradient_store, how, words, why):
    import shutil

    clean = gradient_store
    root = tmp_path / "store"
    shutil.copytree(clean, root)
    _damage(root, how)
    argv = ["analyse", "digits", "--images", "digits", "-t", "3", "--store", str(root), "-q", "--rule", "gradient",
            "--selector", "tukey"]
    assert main(argv) == 2
    line = _err(capsys)
    assert words in line and "ssa collect --verify" in line, line
    # a plain collect does not look inside complete batches, and says how to
    assert main(["collect", "digits", "--images", "digits", "--store", str(root), "--rule", "gradient"]) == 0
    assert "already complete; --verify re-reads every batch" in capsys.readouterr().out
    assert main(["collect", "digits", "--images", "digits", "--store", str(root), "--rule", "gradient", "--verify",
                 "-q"]) == 0
    out = capsys.readouterr().out
    assert f"1 broken, collected again: gradient batch 2: {why}" in out, out
    (a,) = [p for p in root.glob("*/*") if p.is_dir()]
    (b,) = [p for p in clean.glob("*/*") if p.is_dir()]
    assert {k: v for k, v in _tree(a).items() if k != ".lock"} == {k: v for k, v in _tree(b).items() if k != ".lock"}
    assert main(argv) == 0
    assert main(["collect", "digits", "--images", "digits", "--store", str(root), "--rule", "gradient", "--verify",
                 "-q"]) == 0
    assert "all sound" in capsys.readouterr().out


def test_a_read_only_store_folder_is_refused_before_collecting(tmp_path, capsys, monkeypatch):
    import os
    import subprocess

    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(d)]).returncode != 0:
        pytest.skip("root without the right to mount a read-only tmpfs")
    try:
        from ssa_torch.network import TorchNetwork

        def boom(*a, **k):
            raise AssertionError("collected although the store cannot be written")

        monkeypatch.setattr(TorchNetwork, "collect", boom)
        assert main(["collect", "digits", "--images", "digits", "--store", str(d / "s")]) == 2
        assert "--store" in (line := _err(capsys)) and ("read-only" in line or "permission denied" in line)
        assert main(["analyse", "digits", "--images", "digits", "-t", "3", "--store", str(d / "s")]) == 2
        line = _err(capsys)
        assert ("read-only" in line or "permission denied" in line) and "statistics store" in line
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(d)])
        else:
            d.chmod(0o755)


def test_verify_finds_a_flipped_byte_by_the_hashes_recorded_at_write_time(tmp_path, capsys, gradient_store):
    """Issue 18, item 5: a changed byte that leaves a finite number of the right shape is found by --verify."""
    import shutil

    root = tmp_path / "store"
    shutil.copytree(gradient_store, root)
    (batch,) = [p for p in root.glob("*/*/gradient/batch-00002")]
    recorded = json.loads((batch / "hashes.json").read_text())
    assert sorted(recorded) == sorted(p.name for p in batch.glob("*.npy"))
    f = batch / "classifier.2__0__g.npy"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01  # a low mantissa bit of the last float32: still finite, same shape
    f.write_bytes(bytes(data))
    assert np.isfinite(np.load(f)).all()
    assert main(["collect", "digits", "--images", "digits", "--store", str(root), "--rule", "gradient", "--verify",
                 "-q"]) == 0
    out = capsys.readouterr().out
    assert ("1 broken, collected again: gradient batch 2: classifier.2__0__g.npy is not what was written (its "
            "content hash differs") in out, out
    (a,) = [p for p in root.glob("*/*") if p.is_dir()]
    (b,) = [p for p in gradient_store.glob("*/*") if p.is_dir()]
    assert _tree(a) == _tree(b)  # repaired: byte-identical to the clean store, hashes included
