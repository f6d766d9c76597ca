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
    monkeypatch.setenv("SSA_PARITY_CACHE", "1")
    monkeypatch.setenv("SSA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "parity.json"


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
