"""onnxruntime's session and the file's hash computed while torch is imported (issue 19, item 6;
:mod:`ssa_onnx.prefetch`): the network uses exactly the session and hash it would have built itself, builds its own
wherever the thread's would differ or was not built, and the parity check refuses and recalls as before."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import ssa_onnx.backend as onnx_backend
import ssa_onnx.network as onnx_network
import ssa_onnx.prefetch as prefetch
import ssa_onnx.runtime as runtime
from ssa_onnx import parity_cache

import ssa

from . import onnx_models as om


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefetch")
    model = om.vgg_style()
    x = om.images((3, 8, 8), 12, seed=5)
    return model, x, om.export(model, x, root / "vgg.onnx")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    return om.parity_cache_on(tmp_path, monkeypatch)


@pytest.fixture
def sessions(monkeypatch):
    """Who built each onnxruntime session ("prefetch": its thread; "network": the network, in any other thread), and
    from what (a path, or "bytes")."""
    calls: list[tuple[str, str]] = []
    real = runtime.make_session

    def counted(model, provider="auto", device="cpu"):
        who = "prefetch" if threading.current_thread().name == "ssa-onnx-prefetch" else "network"
        calls.append((who, model if isinstance(model, str) else "bytes"))
        return real(model, provider, device)

    monkeypatch.setattr(runtime, "make_session", counted)  # the prefetch thread's
    monkeypatch.setattr(onnx_network, "make_session", counted)  # the network's
    return calls


def _prepared(path, x, **options):
    net = ssa.load_model(str(path), **options)
    net.prepare(x)
    return net


def test_the_network_uses_the_session_built_beside_the_import(vgg, cache, sessions, monkeypatch):
    """The session comes from the prefetch thread, and every parity number equals that of a network that built its
    own session (the prefetch turned off)."""
    _, x, path = vgg
    net = _prepared(path, x)
    assert sessions == [("prefetch", str(path))]
    assert net.parity.ok and not net.parity.remembered
    assert net._file_hash == parity_cache.file_sha256(path)
    monkeypatch.setenv("SSA_PARITY_CACHE", "0")
    monkeypatch.setattr(onnx_backend, "wanted", lambda *a: False)  # no prefetch: the network builds its own
    own = _prepared(path, x)
    assert own.prefetch is None and sessions[1:] == [("network", str(path))]
    assert own.parity == net.parity and own.parity_converted == net.parity_converted
    np.testing.assert_array_equal(own.ort_outputs(x), net.ort_outputs(x))


def test_a_remembered_file_builds_no_session(vgg, cache, sessions):
    _, x, path = vgg
    _prepared(path, x)
    second = _prepared(path, x)
    second.prefetch._thread.join()
    assert second.parity.remembered and second._session is None
    assert sessions == [("prefetch", str(path))]  # the first run's only
    assert parity_cache.knows_file(parity_cache.file_sha256(path))


def test_a_proto_changed_on_reading_gets_a_session_of_its_own(vgg, tmp_path, sessions, monkeypatch):
    """A fixed batch made dynamic: onnxruntime must run the changed proto, not the file the thread loaded."""
    monkeypatch.setenv("SSA_PARITY_CACHE", "0")
    model, x, _ = vgg
    fixed = om.export(model, x[:1], tmp_path / "fixed.onnx", dynamic=False)
    net = _prepared(fixed, x)
    assert net.parity.ok
    assert sessions == [("prefetch", str(fixed)), ("network", "bytes")]


def test_weights_read_through_identity_nodes_keep_the_session_built_from_the_file(tmp_path, sessions, monkeypatch):
    """Identity nodes of weights (torch's exporter writes identical tensors once) are folded for onnx2torch, which
    changes nothing onnxruntime computes: the thread's session of the file is used, no second session of the
    serialized proto is built, and its outputs equal that session's bit for bit."""
    import onnx
    from ssa_onnx.model import read_onnx

    monkeypatch.setenv("SSA_PARITY_CACHE", "0")
    x = om.images((3, 8, 8), 12, seed=6)
    path = om.export(om.shared_bias(), x, tmp_path / "shared.onnx")
    assert "Identity" in {n.op_type for n in onnx.load(str(path)).graph.node}
    model = read_onnx(path)
    assert "Identity" not in {n.op_type for n in model.proto.graph.node}  # folded for onnx2torch
    assert model.as_file and model.session_source() == str(path)
    net = _prepared(path, x)
    assert sessions == [("prefetch", str(path))] and net.parity.ok and net.parity_converted.ok
    from_proto = runtime.make_session(model.proto.SerializeToString(), "cpu")
    np.testing.assert_array_equal(net.ort_outputs(x), onnx_network.run_session(from_proto, model.info, x))


def test_no_session_in_the_background_where_auto_may_choose_cuda(vgg, sessions, monkeypatch):
    monkeypatch.setenv("SSA_PARITY_CACHE", "0")
    monkeypatch.setattr(prefetch, "_gpu_possible", lambda: True)
    _, x, path = vgg
    assert _prepared(path, x).parity.ok
    assert sessions == [("network", str(path))]
    del sessions[:]
    assert _prepared(path, x, provider="cpu").parity.ok  # the CPU asked for: no GPU question
    assert sessions == [("prefetch", str(path))]
    assert not prefetch.wanted("cuda:0", "auto", True) and not prefetch.wanted("cpu", "cuda", True)
    assert not prefetch.wanted("cpu", "auto", False)


def test_a_failure_in_the_thread_leaves_the_session_to_the_network(vgg, sessions, monkeypatch):
    monkeypatch.setenv("SSA_PARITY_CACHE", "0")
    real = runtime.make_session

    def failing_in_the_thread(model, provider="auto", device="cpu"):
        if threading.current_thread().name == "ssa-onnx-prefetch":
            raise RuntimeError("no session here")
        return real(model, provider, device)

    monkeypatch.setattr(runtime, "make_session", failing_in_the_thread)
    monkeypatch.setattr(onnx_network, "make_session", failing_in_the_thread)
    _, x, path = vgg
    net = _prepared(path, x)
    assert net.parity.ok and net._session is not None


def test_loading_the_plugins_imports_neither_torch_nor_onnxruntime():
    """The registry of every ``ssa`` command registers the PyTorch backend without importing torch, so that an ONNX
    file's prefetch runs while torch is imported; the backend still recognises modules once torch is there."""
    code = ("import sys\nfrom ssa.plugins import registry\nreg = registry()\n"
            "print('torch' in sys.modules, 'onnxruntime' in sys.modules, sorted(reg.names('backend')))\n"
            "import torch\nprint(reg.backend_for(torch.nn.Linear(2, 2)).name, reg.backend_for('m.onnx').name)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SSA_PARITY_CACHE": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.split("\n")
    assert lines[0].startswith("False False") and "'onnx'" in lines[0] and "'torch'" in lines[0]
    assert lines[1] == "torch onnx"


@pytest.fixture
def runs(monkeypatch):
    """How many times the network ran onnxruntime itself (``run_session``), with how many images each."""
    calls: list[int] = []
    real = onnx_network.run_session

    def counted(session, info, batch):
        calls.append(len(batch))
        return real(session, info, batch)

    monkeypatch.setattr(onnx_network, "run_session", counted)
    return calls


@pytest.mark.parametrize("as_file", [False, True])
def test_a_session_runs_onnxruntime_on_the_parity_images_before_loading(vgg, tmp_path, sessions, runs, monkeypatch,
                                                                        as_file):
    """Images in memory or in a .npy file are read before the model: onnxruntime's parity pass runs in the thread,
    and the parity numbers and the graph are those of a run without it."""
    monkeypatch.setenv("SSA_PARITY_CACHE", "0")
    _, x, path = vgg
    images = x
    if as_file:
        np.save(tmp_path / "x.npy", x)
        images = str(tmp_path / "x.npy")
    session = ssa.Session(str(path), images)
    result = session.analyse(0, 2)
    net = session.network
    assert sessions == [("prefetch", str(path))] and runs == []  # onnxruntime ran in the thread only
    assert net.parity.ok and net.parity_converted.ok
    monkeypatch.setattr(onnx_backend, "wanted", lambda *a: False)  # no prefetch at all
    own = ssa.Session(str(path), images)
    mine = own.analyse(0, 2)
    assert runs == [8]  # the network ran the parity images itself
    assert own.network.parity == net.parity and own.network.parity_converted == net.parity_converted
    assert list(result.graph.nodes(data=True)) == list(mine.graph.nodes(data=True))
    assert list(result.graph.edges(data=True)) == list(mine.graph.edges(data=True))


def test_the_thread_s_outputs_are_those_of_the_session_on_the_same_images(vgg, monkeypatch):
    monkeypatch.setenv("SSA_PARITY_CACHE", "0")
    _, x, path = vgg
    from ssa_onnx.model import read_onnx
    from ssa_onnx.network import run_session

    p = prefetch.Prefetch(path, provider="cpu", images=x, parity_images=5)
    session = p.session(str(path))
    info = read_onnx(path).info
    assert p.reference(session, x[:4], info.output.name) is None  # other images: not answered
    assert p.reference(object(), x[:5], info.output.name) is None  # another session: not answered
    got = p.reference(session, x[:5], info.output.name)
    assert got is not None and got.dtype == np.float64
    np.testing.assert_array_equal(got, run_session(session, info, x[:5]))
    assert p.reference(session, x[:5], info.output.name) is None  # once


def test_only_images_that_cost_nothing_to_read_are_read_before_the_model(tmp_path):
    """An array or a .npy file is read before the model (its backend may start work on it); a folder of image files
    is decoded after the model loads, so a model that does not load is reported first."""
    import ssa.session as session_module

    assert session_module._cheap_images(np.zeros((1, 3, 8, 8), np.float32))
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    assert session_module._cheap_images(str(tmp_path / "x.npy"))
    assert not session_module._cheap_images(str(tmp_path))
    assert not session_module._cheap_images(str(tmp_path / "missing.npy"))
    assert not session_module._cheap_images("digits")
