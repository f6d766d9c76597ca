"""The canonical module's parity check made on the statistics pass's own outputs (issue 19, item 6).

A first analysis of an ONNX file checks the canonical module against onnxruntime on the outputs the statistics pass
computes anyway: no forward pass of its own; onnx2torch's conversion is checked (a forward pass of the parity
images) only where the canonical module disagrees, the preparation or the pass fails, or ``parity_converted`` is
read (issue 20). These tests count the forward passes, compare the statistics pass's outputs with the reference (a
forward pass of the parity images), check that a canonical module or a conversion that disagrees is still refused in
one line (exit 2) with the message of a check made up front, before any result exists, and that the parity cache
never records the conversion's check as passed where it did not run.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import ssa_onnx.network as onnx_network
import ssa_torch.network as torch_network
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ssa
from ssa.cli import main
from ssa.errors import SSAError, UnsupportedModelError

from . import onnx_models as om


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    root = tmp_path_factory.mktemp("deferred_parity")
    model = om.vgg_style()
    x = om.images((3, 8, 8), 16, seed=3)
    np.save(root / "x.npy", x)
    return x, om.export(model, x, root / "vgg.onnx"), root / "x.npy"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    return om.parity_cache_on(tmp_path, monkeypatch)


@pytest.fixture
def forwards(monkeypatch):
    """Which modules ``OnnxNetwork._module_outputs`` ran (the parity check's own forward passes): "converted" for
    onnx2torch's module, "canonical" for any other."""
    calls: list[str] = []
    real = onnx_network.OnnxNetwork._module_outputs

    def counted(self, module, x):
        calls.append("converted" if module is self._converted else "canonical")
        return real(self, module, x)

    monkeypatch.setattr(onnx_network.OnnxNetwork, "_module_outputs", counted)
    return calls


class _ImagesIntoTheFirstConv(TorchDispatchMode):
    """Counts the images that go through the model's first convolution (its input has the images' 3 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.images = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default and args[0].shape[1] == 3:
            self.images += int(args[0].shape[0])
        return func(*args, **(kwargs or {}))


def _analysed(path, x):
    session = ssa.Session(str(path), x)
    with _ImagesIntoTheFirstConv() as counter:
        result = session.analyse(0, 2)
    return session, result, counter.images


def test_a_first_run_checks_the_canonical_module_on_the_statistics_pass(vgg, cache, forwards, monkeypatch):
    """A first analysis runs no torch module for parity: the canonical module's parity comes from the statistics
    pass, and the conversion, whose module the canonical one is made from, is not checked on its own when the
    canonical module agrees. Counted through the first convolution, a first run costs exactly the batch-of-2 trial
    more than a run that recalls the parity; the canonical check is made, remembered (the conversion's as not
    checked, never as passed), and recalled by the next run, with the same graph. Reading ``parity_converted`` runs
    the conversion's check then (one forward pass) and adds it to the cache."""
    x, path, _ = vgg
    trials: list[int] = []
    real = torch_network._check_batches
    monkeypatch.setattr(torch_network, "_check_batches", lambda gm, t: trials.append(len(t)) or real(gm, t))
    first, graph1, images1 = _analysed(path, x)
    net = first.network
    assert forwards == [] and trials == [1]
    assert net.parity.ok and not net.parity.remembered and net.parity.n_images == 8
    assert net.parity.relative < 1e-5 and forwards == []  # reading it ran nothing more
    (entry,) = json.loads(cache.read_text()).values()  # the canonical check passed: remembered
    assert entry["converted"] is None and entry["canonical"]["ok"]
    second, graph2, images2 = _analysed(path, x)
    assert second.network.parity.remembered and forwards == [] and trials == [1]
    assert second.network.parity_converted is None and forwards == []  # recalled: not checked, and said so
    assert replace(second.network.parity, remembered=False) == net.parity
    # first run: the trial (2 images, of the traced copy) on top of a recalled run's passes; neither check adds one
    assert images1 - images2 == 2
    assert list(graph1.graph.edges(data=True)) == list(graph2.graph.edges(data=True))
    assert net.parity_converted.ok and not net.parity_converted.remembered and forwards == ["converted"]
    (entry,) = json.loads(cache.read_text()).values()  # now both
    assert entry["converted"]["relative"] == net.parity_converted.relative and entry["canonical"]["ok"]
    assert net.parity_converted.ok and forwards == ["converted"]  # once


def test_the_statistics_pass_outputs_equal_the_forward_pass_of_the_check(vgg, monkeypatch):
    """The statistics pass's outputs on the parity images equal the canonical module's forward pass (the reference
    the check used to run), and so does the parity result made from them."""
    x, path, _ = vgg
    monkeypatch.setenv("SSA_PARITY_CACHE", "0")
    seen: list[np.ndarray] = []
    real = onnx_network.OnnxNetwork._statistics_outputs
    monkeypatch.setattr(onnx_network.OnnxNetwork, "_statistics_outputs",
                        lambda self, batch, out: seen.append(onnx_network._first_output(out)) or real(self, batch, out))
    deferred = ssa.load_model(str(path))
    deferred.prepare_deferred(x)
    assert deferred._parity_pending is not None
    deferred.collect(x, ["gradient_x_activation"])
    assert deferred._parity_pending is None and len(seen) == 1
    reference = ssa.load_model(str(path))
    reference.prepare(x)  # checks the canonical module by a forward pass of the parity images
    np.testing.assert_allclose(seen[0][:8], reference._module_outputs(reference.graph_module, x[:8]),
                               rtol=1e-6, atol=1e-7)
    p, q = deferred.parity, reference.parity
    assert (p.n_images, p.ok, p.output, p.tolerance, p.top1_agreement) == (q.n_images, q.ok, q.output, q.tolerance,
                                                                           q.top1_agreement)
    assert abs(p.relative - q.relative) < 1e-6 and p.scale == q.scale


@pytest.mark.parametrize("use", ["other images", "autograd", "parity read", "maps"])
def test_any_other_first_use_checks_the_canonical_module_first(vgg, monkeypatch, forwards, use):
    """A statistics batch that does not start with the parity images, an autograd step, an input map, or reading
    ``parity`` check the canonical module by its forward pass first: never a use of an unchecked module."""
    x, path, _ = vgg
    monkeypatch.setenv("SSA_PARITY_CACHE", "0")
    net = ssa.load_model(str(path))
    net.prepare_deferred(x)
    assert forwards == [] and net._parity_pending is not None
    if use == "other images":
        net.collect(x[1:], ["gradient_x_activation"])
    elif use == "autograd":
        ssa.Session.of_network(net, x, engine="autograd").analyse(0, 1)
    elif use == "parity read":
        assert net.parity is not None and net.parity.ok
    else:
        net.saliency(x[:2], net.taps[-2].name, [0])
    assert forwards == ["canonical"] and net._parity_pending is None and net.parity.ok


def _break_the_canonical_form(monkeypatch):
    """A canonicalisation that changes what the module computes (its first weight), after the conversion's check."""
    real = torch_network.TorchNetwork._canonicalize

    def broken(self, gm, x, values=None):
        gm = real(self, gm, x, values)
        with torch.no_grad():
            next(gm.parameters()).add_(0.5)
        return gm

    monkeypatch.setattr(torch_network.TorchNetwork, "_canonicalize", broken)


def test_a_canonical_module_that_disagrees_is_refused_by_the_statistics_pass(vgg, cache, forwards, monkeypatch,
                                                                              tmp_path, capsys):
    """``ssa analyse``: the canonical module's outputs in the statistics pass disagree with onnxruntime's: one line,
    exit 2, no graph file, nothing remembered; no forward pass of the canonical module was spent on it."""
    x, path, images = vgg
    _break_the_canonical_form(monkeypatch)
    out = tmp_path / "graph.json"
    code = main(["analyse", str(path), "--images", str(images), "-t", "0", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ssa: error:") and err.count("\n") == 1, err
    assert "the canonical form of" in err and "disagrees with onnxruntime" in err and "bug in ssa" in err
    assert "although onnx2torch's conversion agrees" in err and "on 8 image(s)" in err
    # refused on the statistics pass's outputs; the conversion then checked, to name the culprit
    assert forwards == ["converted"]
    assert not out.exists() and not cache.exists()


def test_a_canonical_module_that_disagrees_is_refused_everywhere(vgg, cache, forwards, monkeypatch, capsys):
    """Through the API the refusal is the same error, from ``prepare`` (which checks at once), from reading
    ``parity`` or from the first use after ``prepare_deferred``; a refused network is no longer prepared.
    ``ssa check`` says it in one line too."""
    x, path, _ = vgg
    _break_the_canonical_form(monkeypatch)
    with pytest.raises(UnsupportedModelError) as exc:
        ssa.load_model(str(path)).prepare(x)
    assert "the canonical form of" in str(exc.value) and "\n" not in str(exc.value)
    net = ssa.load_model(str(path))
    net.prepare_deferred(x)
    with pytest.raises(UnsupportedModelError, match="the canonical form of"):
        net.collect(x, ["gradient_x_activation"])
    assert not net.parity.ok
    with pytest.raises(RuntimeError, match="call prepare"):
        net.graph_module  # noqa: B018 - refused: not prepared any more
    net = ssa.load_model(str(path))
    net.prepare_deferred(x)
    with pytest.raises(SSAError, match="the canonical form of"):
        net.parity  # noqa: B018
    assert not cache.exists()
    capsys.readouterr()
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssa: error:") and err.count("\n") == 1 and "the canonical form of" in err


def _break_the_conversion(monkeypatch):
    """onnx2torch's conversion changes what the module computes (its first weight); so does the canonical module,
    which is made from it."""
    import ssa_onnx.convert as onnx_convert

    real = onnx_convert.convert_model

    def broken(model):
        gm = real(model)
        with torch.no_grad():
            next(gm.parameters()).add_(0.5)
        return gm

    monkeypatch.setattr(onnx_convert, "convert_model", broken)


def test_a_conversion_that_disagrees_is_refused_as_the_conversion(vgg, cache, forwards, monkeypatch, tmp_path, capsys):
    """``ssa analyse``: the statistics pass finds the canonical module off; the conversion is then checked (one
    forward pass) and named as the culprit, with the message of the check made up front: one line, exit 2, no graph
    file, nothing remembered."""
    x, path, images = vgg
    _break_the_conversion(monkeypatch)
    out = tmp_path / "graph.json"
    code = main(["analyse", str(path), "--images", str(images), "-t", "0", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ssa: error:") and err.count("\n") == 1, err
    assert "the onnx2torch conversion of" in err and "disagrees with onnxruntime" in err and "on 8 image(s)" in err
    assert "parity_tolerance=" in err and "canonical form" not in err
    assert forwards == ["converted"]
    assert not out.exists() and not cache.exists()
    with pytest.raises(UnsupportedModelError) as up_front:  # the same line as prepare's check up front
        ssa.load_model(str(path)).prepare(x)
    assert str(up_front.value) in err


@pytest.mark.parametrize("conversion", ["agrees", "disagrees"])
def test_a_preparation_that_fails_refuses_a_conversion_that_disagrees_first(vgg, forwards, monkeypatch, conversion):
    """Where the preparation fails (here the batch-of-2 trial) while the conversion's check waits, the conversion is
    checked first: its refusal where it disagrees (as when it was checked before the preparation), else the
    preparation's own error."""
    x, path, _ = vgg
    monkeypatch.setenv("SSA_PARITY_CACHE", "0")
    if conversion == "disagrees":
        _break_the_conversion(monkeypatch)

    def trial_fails(gm, t):
        raise UnsupportedModelError("the trial failed")

    monkeypatch.setattr(torch_network, "_check_batches", trial_fails)
    net = ssa.load_model(str(path))
    with pytest.raises(UnsupportedModelError) as exc:
        net.prepare_deferred(x)
    assert forwards == ["converted"]
    if conversion == "agrees":
        assert str(exc.value) == "the trial failed" and net.parity_converted.ok
    else:
        assert "the onnx2torch conversion of" in str(exc.value) and not net.parity_converted.ok


def test_ssa_check_after_an_analysis_checks_the_conversion(vgg, cache, forwards):
    """An analysis remembered the canonical check without the conversion's: ``prepare`` (what ``ssa check`` runs,
    which checks both) does not recall that entry but checks both again, and remembers both."""
    x, path, _ = vgg
    _analysed(path, x)
    assert forwards == [] and json.loads(cache.read_text()).popitem()[1]["converted"] is None
    net = ssa.load_model(str(path))
    net.prepare(x)
    assert forwards == ["converted", "canonical"] and net.parity_converted.ok and not net.parity_converted.remembered
    assert not net.parity.remembered
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["converted"]["ok"] and entry["canonical"]["ok"]
    again = ssa.load_model(str(path))
    again.prepare(x)
    assert again.parity_converted.remembered and again.parity.remembered and forwards == ["converted", "canonical"]


def test_a_canonical_forward_pass_that_fails_refuses_a_conversion_that_disagrees_first(vgg, monkeypatch):
    """The canonical module's check by its own forward pass (a statistics batch without the parity images first)
    fails while the conversion's check waits: the conversion is checked first, and refused where it disagrees."""
    x, path, _ = vgg
    monkeypatch.setenv("SSA_PARITY_CACHE", "0")
    _break_the_conversion(monkeypatch)
    real = onnx_network.OnnxNetwork._module_outputs

    def canonical_fails(self, module, images):
        if module is not self._converted:
            raise UnsupportedModelError("the canonical module failed")
        return real(self, module, images)

    monkeypatch.setattr(onnx_network.OnnxNetwork, "_module_outputs", canonical_fails)
    net = ssa.load_model(str(path))
    net.prepare_deferred(x)
    with pytest.raises(UnsupportedModelError, match="the onnx2torch conversion of .* disagrees with onnxruntime"):
        net.collect(x[1:], ["gradient_x_activation"])
    assert not net.parity_converted.ok
