"""A first graph in seconds (issue 19, items 6 and 8): converters imported on demand, parity remembered by the
model file's content hash, and ``ssa check``'s stage times and ops by engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch.nn as nn
from ssa_onnx import parity_cache
from ssa_onnx.parity import ParityResult

import ssa
from ssa.core.capabilities import SupportsCheckDetails

from . import onnx_models as om


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    root = tmp_path_factory.mktemp("first_graph")
    model = om.vgg_style()
    x = om.images((3, 8, 8), 16, seed=3)
    return model, x, om.export(model, x, root / "vgg.onnx")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The parity cache on, in a folder of this test's own."""
    return om.parity_cache_on(tmp_path, monkeypatch)


def _prepared(path, x, **options):
    net = ssa.load_model(str(path), **options)
    net.prepare(x)
    return net


# -- converters imported on demand -------------------------------------------------------------------------


def _python(code: str) -> str:
    env = {**os.environ, "SSA_PARITY_CACHE": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_a_classifier_imports_no_detection_ops(vgg):
    """Loading, preparing and analysing an ONNX classifier imports neither torchvision nor torch._dynamo."""
    _, x, path = vgg
    np.save(path.with_suffix(".npy"), x)
    out = _python(
        "import sys, numpy as np, ssa\n"
        f"net = ssa.load_model({str(path)!r}); x = np.load({str(path.with_suffix('.npy'))!r})\n"
        "net.prepare(x); net.describe_steps()\n"
        "print('torchvision' in sys.modules, 'torch._dynamo' in sys.modules, net.parity.ok)")
    assert out == "False False True"


def test_deferred_converters_are_registered_when_a_model_needs_them():
    """NonMaxSuppression's converter module (deferred) is imported, and registered, for a model that has the op;
    the opset versions onnx2torch lacks are added for it too, as for any converter."""
    out = _python(
        "import sys\n"
        "from ssa_onnx.converters import require_converters, deferred_operators\n"
        "from ssa_onnx.compat import install\n"
        "install({'Conv'})\n"
        "from onnx2torch.node_converters import get_converter\n"
        "def has(op, v):\n"
        "    try: get_converter(operation_type=op, version=v); return True\n"
        "    except NotImplementedError: return False\n"
        "before = (has('NonMaxSuppression', 11), has('RoiAlign', 16), 'torchvision' in sys.modules)\n"
        "install({'NonMaxSuppression', 'Conv', 'RoiAlign'})\n"
        "after = (has('NonMaxSuppression', 11), has('RoiAlign', 10), has('RoiAlign', 16),\n"
        "         'torchvision' in sys.modules)\n"
        "print(before, after, sorted(deferred_operators()['nms']), sorted(require_converters({'RoiAlign'})))")
    assert out == "(False, False, False) (True, True, True, True) ['NonMaxSuppression'] []"


# -- the parity cache ---------------------------------------------------------------------------------------


def test_parity_is_remembered_and_recalled_without_onnxruntime(vgg, cache):
    _, x, path = vgg
    first = _prepared(path, x)
    assert not first.parity.remembered and first.parity.ok and cache.is_file()
    second = _prepared(path, x)
    assert second.parity.remembered and second.parity_converted.remembered
    assert second._session is None  # onnxruntime never ran: the comparison was recalled
    assert replace(second.parity, remembered=False) == first.parity
    assert replace(second.parity_converted, remembered=False) == first.parity_converted
    assert second.output_kind == first.output_kind == "softmax stripped"
    assert "remembered from an earlier check" in second.parity.text()
    np.testing.assert_array_equal(second.logits(x), first.logits(x))  # the same canonical module either way


def test_a_changed_file_is_checked_again(vgg, cache, tmp_path):
    model, x, path = vgg
    _prepared(path, x)
    other = tmp_path / "vgg.onnx"
    other.write_bytes(path.read_bytes())
    assert _prepared(other, x).parity.remembered  # the same content under another name: the same check
    changed = om.heavy_tail_(om.vgg_style(), 7)  # other weights, same architecture, written over the copy
    om.export(changed, x, other)
    net = _prepared(other, x)
    assert not net.parity.remembered and net.parity.ok
    assert _prepared(other, x).parity.remembered


def test_a_tolerance_change_checks_again(vgg, cache):
    _, x, path = vgg
    _prepared(path, x)
    net = _prepared(path, x, parity_tolerance=1e-2)
    assert not net.parity.remembered and net.parity.tolerance == 1e-2
    assert _prepared(path, x, parity_tolerance=1e-2).parity.remembered
    assert _prepared(path, x).parity.remembered and _prepared(path, x).parity.tolerance == 1e-3


def test_other_images_of_another_count_or_shape_are_checked_again(vgg, cache):
    _, x, path = vgg
    _prepared(path, x)
    assert not _prepared(path, x[:3]).parity.remembered  # 3 images compared, not 8: another key


def test_the_cache_can_be_turned_off_and_a_damaged_cache_is_ignored(vgg, cache, monkeypatch):
    _, x, path = vgg
    monkeypatch.setenv("SSA_PARITY_CACHE", "0")
    _prepared(path, x)
    assert not cache.exists()
    monkeypatch.setenv("SSA_PARITY_CACHE", "1")
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    net = _prepared(path, x)
    assert not net.parity.remembered
    assert len(json.loads(cache.read_text())) == 1  # rewritten with this model's entry
    assert _prepared(path, x).parity.remembered


def test_a_recalled_parity_skips_the_batch_trial(vgg, cache, monkeypatch):
    """The run that remembered the parity ran the traced copy on a batch of 2; a run that recalls it does not try
    again, and prepares the same canonical module."""
    import ssa_torch.network as torch_network

    _, x, path = vgg
    calls: list[int] = []
    real = torch_network._check_batches
    monkeypatch.setattr(torch_network, "_check_batches", lambda gm, x: calls.append(len(x)) or real(gm, x))
    first = _prepared(path, x)
    assert not first.parity.remembered and calls == [1]
    second = _prepared(path, x)
    assert second.parity.remembered and calls == [1]
    assert second.graph_module.code == first.graph_module.code
    monkeypatch.setenv("SSA_PARITY_CACHE", "0")
    assert not _prepared(path, x).parity.remembered and calls == [1, 1]


def test_canonical_form_from_the_traced_values_is_the_same(vgg, monkeypatch):
    """Canonicalisation starts from the values the preparation computed on the traced copy, and the shapes of the
    canonical graph come from the values its passes computed last: the same graph and taps as when canonicalisation
    computes its values itself and the shapes are found by running the canonical graph again."""
    import ssa_torch.network as torch_network

    _, x, path = vgg
    seeded = _prepared(path, x)
    real = torch_network.canonicalize_values
    monkeypatch.setattr(torch_network, "canonicalize_values", lambda *a, values=None, **k: (real(*a, **k)[0], None))
    own = _prepared(path, x)
    assert own.graph_module.code == seeded.graph_module.code and own.canon_report == seeded.canon_report
    assert [(t.name, t.parents, t.channel_axis) for t in own.taps] == \
        [(t.name, t.parents, t.channel_axis) for t in seeded.taps]


@pytest.mark.parametrize("kind", ["onnx", "module"])
def test_the_planner_reads_the_values_preparation_computed(kind, tmp_path, monkeypatch):
    """The closed-form planner reads the canonical graph's batch-1 values that canonicalisation computed last (no
    forward pass of its own): the same values, bit for bit, as a forward pass of the canonical graph, and the same
    plan as when the planner runs that pass itself (the reference)."""
    import torch
    from ssa_torch import closed_form_steps as cfs

    model = om.heavy_tail_(om.resnet_style(), 0)
    x = om.images((3, 8, 8), 8, seed=1)
    source = str(om.export(model, x, tmp_path / "resnet.onnx")) if kind == "onnx" else model
    real = cfs.graph_values_at_one
    calls: list[int] = []
    monkeypatch.setattr(cfs, "graph_values_at_one", lambda gm, ex: calls.append(len(ex)) or real(gm, ex))

    def plan_of(net):
        cf = net.closed_form
        return net.describe_steps(), {t: [(term.label, term.parent, term.head) for term in f.terms]
                                      for t, f in cf.taps.items()}, dict(cf.reasons)

    kept = ssa.load_model(source)
    kept.prepare(x)
    values = kept._plan_values
    assert values is not None
    fresh = real(kept.graph_module, kept._example)
    assert values.keys() == fresh.keys()
    for k, v in fresh.items():
        assert torch.equal(values[k], v) if isinstance(v, torch.Tensor) else values[k] == v, k
    seeded = plan_of(kept)
    assert calls == [] and kept._plan_values is None  # read once, then dropped
    reference = ssa.load_model(source)
    reference.prepare(x)
    reference._plan_values = None  # the planner runs its own forward pass
    assert plan_of(reference) == seeded and calls == [1]
    assert len(seeded[1]) > 3


def test_onnxruntime_runs_beside_the_converted_module_with_the_same_result(vgg, monkeypatch):
    """A first run builds and runs onnxruntime's session in a thread while torch runs the converted module: the
    parity numbers are those of the two computed one after the other, and onnxruntime's error comes first."""
    import threading

    from ssa_onnx.network import OnnxNetwork

    from ssa.errors import InvalidInputError, UnsupportedModelError

    monkeypatch.setenv("SSA_PARITY_CACHE", "0")
    _, x, path = vgg
    real = OnnxNetwork.ort_outputs
    where: list[str] = []
    monkeypatch.setattr(OnnxNetwork, "ort_outputs",
                        lambda self, b: where.append(threading.current_thread().name) or real(self, b))
    net = _prepared(path, x)
    assert len(where) == 1 and where[0].startswith("ssa-onnxruntime")
    ref, conv = real(net, x[:net.parity_images]), net._module_outputs(net._converted, x[:net.parity_images])
    assert net.parity_converted == net._parity(ref, conv) and net.parity_converted.ok

    def ort_fails(self, b):
        raise InvalidInputError("onnxruntime failed")

    def torch_fails(self, module, b):
        raise UnsupportedModelError("torch failed")

    monkeypatch.setattr(OnnxNetwork, "ort_outputs", ort_fails)
    monkeypatch.setattr(OnnxNetwork, "_module_outputs", torch_fails)
    with pytest.raises(InvalidInputError, match="onnxruntime failed"):
        _prepared(path, x)
    monkeypatch.setattr(OnnxNetwork, "ort_outputs", real)
    with pytest.raises(UnsupportedModelError, match="torch failed"):
        _prepared(path, x)


def test_a_failed_check_is_never_remembered(cache):
    ok = ParityResult(2, "logits", 0.0, 1.0, 0.0, 1e-3, 1.0, "CPUExecutionProvider", True)
    failed = replace(ok, max_abs_diff=0.5, relative=0.5, ok=False)
    assert not parity_cache.remember("k", ok, failed, "logits") and not cache.exists()
    assert parity_cache.remember("k", ok, ok, "logits")
    assert parity_cache.recall("k") == (replace(ok, remembered=True), replace(ok, remembered=True), "logits")
    data = json.loads(cache.read_text())
    data["k"]["canonical"]["ok"] = False  # a tampered entry that says it failed is not trusted
    cache.write_text(json.dumps(data))
    assert parity_cache.recall("k") is None


# -- ssa check: stage times and ops by engine ------------------------------------------------------------------


class _Attention(nn.Module):
    """A LayerNorm and a softmax attention over the 4 positions of a 2x2 map, then a dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 2, stride=2)
        self.norm = nn.LayerNorm(8)
        self.qkv = nn.Linear(8, 24)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        t = nn.functional.relu(self.conv(x)).flatten(2).transpose(1, 2)  # (B, 4, 8)
        q, k, v = self.qkv(self.norm(t)).chunk(3, dim=-1)
        a = (q @ k.transpose(1, 2) / 8 ** 0.5).softmax(-1) @ v
        return self.head(nn.functional.relu(a).mean(1))


def test_check_report_has_stage_times_and_ops_by_engine(vgg):
    _, x, path = vgg
    report = ssa_onnx_check(path, x)
    assert list(report.timings) == ["loading", "conversion", "parity", "tracing/canon", "planning", "statistics"]
    assert all(s >= 0 for s in report.timings.values()) and report.timings["parity"] > 0
    assert set(report.engines) == {"closed form"}  # every step of a VGG by the closed form
    fams = report.engines["closed form"]
    # the steps below 1/Relu (the lowest tap): conv + relu, maxpool + conv + relu, maxpool + linear + relu, linear
    assert fams == {"conv": 2, "relu": 3, "linear": 2, "maxpool": 2}
    text = report.render()
    assert "  ops by engine: closed form: relu x3, conv x2, linear x2, maxpool x2" in text
    assert "  time: loading " in text and ", statistics " in text
    assert json.loads(json.dumps(report.to_dict()))["engines"] == {"closed form": fams}


def ssa_onnx_check(path, x):
    from ssa_onnx import check_report

    return check_report(str(path), x)


def test_ops_by_engine_name_the_autograd_families():
    model = om.heavy_tail_(_Attention(), 0)
    x = om.images((3, 4, 4), 6, seed=1)
    net = ssa.load_model(model)
    net.prepare(x)
    assert isinstance(net, SupportsCheckDetails)
    lines = net.check_details(x)
    assert lines[0].startswith("ops by engine: ") and lines[1].startswith("time: tracing/canon ")
    autograd = lines[0].split("autograd: ")[1]
    assert "layernorm x1" in autograd and "softmax x1 (attention)" in autograd and "matmul x2" in autograd
    assert "planning" in lines[1]


def test_ssa_check_prints_the_new_lines(vgg, tmp_path):
    _, x, path = vgg
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([sys.executable, "-m", "ssa", "check", str(path), "--images", str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "ops by engine: closed form: relu x3, conv x2, linear x2, maxpool x2" in lines
    time_line = next(line for line in lines if line.startswith("time: "))
    for stage in ("loading", "conversion", "parity", "tracing/canon", "planning", "statistics"):
        assert f"{stage} " in time_line, stage


def test_an_unwritable_cache_folder_does_not_stop_the_run(vgg, tmp_path, monkeypatch):
    _, x, path = vgg
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("SSA_PARITY_CACHE", "1")
    monkeypatch.setenv("SSA_CACHE", str(blocker))
    net = _prepared(path, x)
    assert net.parity.ok and not net.parity.remembered and blocker.read_text().startswith("a file")
    assert not _prepared(path, x).parity.remembered  # nothing could be remembered: checked again
