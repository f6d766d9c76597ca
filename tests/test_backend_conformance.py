"""The backend conformance kit (ssa.testing.backends) on the torch, ONNX and numpy backends; the kit catches broken
backends; the numpy backend's graphs equal the torch backend's on the same weights; and the core's traversal runs
with torch blocked."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from ssa_onnx.backend import OnnxBackend
from ssa_torch.backend import TorchBackend

import ssa
import ssa.testing.numpy_backend as numpy_backend
from ssa.plugins import get_plugin_manager, registry
from ssa.testing import BackendCase, TorchReference, check_backend
from ssa.testing.models import ModelCase, RefTap, channels_last_cnn, plain_cnn, residual_cnn
from ssa.testing.numpy_backend import NumpyBackend, NumpyNetwork, TwoLayerModel

NUMPY_TAPS = (RefTap("input", None), RefTap("relu", "relu", parents=("input",)),
              RefTap("logits", "fc", parents=("relu",)))


@pytest.fixture
def numpy_plugin():
    """The numpy backend registered the way a third-party plugin is: its module, with the plugin manager."""
    pm = get_plugin_manager()
    pm.register(numpy_backend, name="numpy_example")
    try:
        yield registry(refresh=True)
    finally:
        pm.unregister(numpy_backend)
        registry(refresh=True)


def torch_twin(model: TwoLayerModel) -> nn.Module:
    """The numpy backend's two-layer network as a torch module with the same weights (tap names: relu, logits)."""
    a = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in model.arrays().items()}
    c1, c0 = a["conv_w"].shape[:2]
    net = nn.Sequential(OrderedDict(conv=nn.Conv2d(c0, c1, 3), relu=nn.ReLU(), flatten=nn.Flatten(),
                                    fc=nn.Linear(a["fc_w"].shape[1], a["fc_w"].shape[0])))
    with torch.no_grad():
        for p, key in ((net.conv.weight, "conv_w"), (net.conv.bias, "conv_b"), (net.fc.weight, "fc_w"),
                       (net.fc.bias, "fc_b")):
            p.copy_(a[key])
    return net.eval()


def _torch_case(mc: ModelCase, tmp_path: Path) -> BackendCase:
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(b"not a torch.export archive")
    return BackendCase(mc.name, TorchBackend, mc.build, tuple(mc.images(1).shape[1:]), taps=mc.taps,
                       reference=TorchReference(mc.build(), mc.taps),
                       bad_sources=(str(tmp_path / "missing.pt2"), str(corrupt), "no_such_package.module:model"))


@pytest.mark.parametrize("mc", [plain_cnn, residual_cnn, channels_last_cnn], ids=lambda mc: mc.name)
def test_torch_backend_conforms(mc: ModelCase, tmp_path: Path) -> None:
    assert check_backend(_torch_case(mc, tmp_path)) == []


def test_onnx_backend_conforms(tmp_path: Path) -> None:
    from tests.onnx_models import export

    module = plain_cnn.build()
    path = export(module, plain_cnn.images(4), tmp_path / "plain.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx")
    case = BackendCase("plain.onnx", OnnxBackend, lambda: str(path), (1, 12, 12), taps=plain_cnn.taps,
                       reference=TorchReference(module, plain_cnn.taps),
                       bad_sources=(str(tmp_path / "missing.onnx"), str(garbage)))
    assert check_backend(case) == []


def _numpy_case(model: TwoLayerModel, tmp_path: Path, backend: type = NumpyBackend, **kw) -> BackendCase:
    broken = tmp_path / "broken.npz"
    np.savez(broken, conv_w=model.conv_w)  # three arrays missing
    return BackendCase("two-layer", backend, lambda: model, (8, 6, 6), taps=NUMPY_TAPS,
                       reference=TorchReference(torch_twin(model), NUMPY_TAPS), load_options={"include_input": True},
                       bad_sources=(str(tmp_path / "missing.npz"), str(broken), 42), devices=("cpu",), **kw)


def test_numpy_backend_conforms(tmp_path: Path) -> None:
    assert check_backend(_numpy_case(TwoLayerModel.random(0), tmp_path)) == []


# -- the kit fails a backend that breaks the contract --------------------------------------------------------
class _ScaledRelevance(NumpyNetwork):
    def step_relevance(self, batch, upper, neurons, rule):
        rel, scalars = super().step_relevance(batch, upper, neurons, rule)
        return {p: v * (1.0 + 1e-2 * (upper == "relu")) for p, v in rel.items()}, scalars


class _NoCuts(NumpyNetwork):
    def prepare(self, example):
        taps = super().prepare(example)
        self._taps = tuple(t if t.name != "logits" else type(t)(t.name, t.order, t.kind, t.shape, t.channel_axis,
                                                                  ("relu", "input"), t.op) for t in taps)
        return self._taps


class _Traceback(NumpyNetwork):
    def prepare(self, example):
        if np.asarray(example).ndim != 4:
            raise ValueError("bad\nshape")
        return super().prepare(example)


class _IgnoresAblation(NumpyNetwork):
    def ablator(self, batch_size=256):
        ablator = super().ablator(batch_size)
        ablator.logits = lambda images, ablate, mode="zero": self.logits(images)  # ablates nothing, refuses nothing
        return ablator


class _ShiftedAblation(NumpyNetwork):
    def ablator(self, batch_size=256):
        ablator = super().ablator(batch_size)
        plain = ablator.logits

        def shifted(images, ablate, mode="zero"):  # ablates the neuron next to each one asked for
            return plain(images, {t: (np.asarray(v) + 1) % self.tap(t).n_neurons for t, v in ablate.items()}, mode)

        ablator.logits = shifted
        return ablator


class _WrongDevice(NumpyNetwork):
    device = "cuda:0"  # says so, but computes on the host


def _backend_of(network_cls: type) -> type:
    class Broken(NumpyBackend):
        name = "broken_numpy"

        def load(self, source, **options):
            net = super().load(source, **options)
            return network_cls(net.model, name=net.name, include_input=net.include_input)

    return Broken


@pytest.mark.parametrize(("network_cls", "check", "expected"), [
    (_ScaledRelevance, "relevance", "step relu -> input against the reference: differs"),
    (_ScaledRelevance, "closed_form", None),  # no closed form claimed: nothing to compare
    (_NoCuts, "cut_semantics", "tap 'logits' (expected 'logits') has parents ['input', 'relu'], expected ['relu']"),
    (_Traceback, "errors", "prepare() on images with an extra axis: raised ValueError"),
    (_IgnoresAblation, "ablation", "zeroing every neuron of the logits' parents: logits of every image"),
    (_IgnoresAblation, "ablation", "ablating an unknown tap: was accepted"),
    (_ShiftedAblation, "ablation", "against the reference: differs"),
    (_WrongDevice, "devices", "lives on cpu, expected the network's device cuda:0"),
])
def test_the_kit_fails_a_broken_backend(network_cls, check, expected, tmp_path: Path) -> None:
    case = _numpy_case(TwoLayerModel.random(0), tmp_path, backend=_backend_of(network_cls))
    failures = check_backend(case, [check])
    if expected is None:
        assert failures == []
    else:
        assert failures and all(f.startswith(f"{check} [two-layer]: ") for f in failures)
        assert any(expected in f for f in failures), failures


def test_the_kit_fails_a_wrong_reference(tmp_path: Path) -> None:
    """The relevance check compares against the reference: another model's weights must fail it."""
    model = TwoLayerModel.random(0)
    case = _numpy_case(model, tmp_path)
    other = BackendCase(case.name, case.backend, case.source, case.input_shape, taps=case.taps,
                        reference=TorchReference(torch_twin(TwoLayerModel.random(1)), NUMPY_TAPS),
                        load_options=case.load_options, devices=case.devices)
    failures = check_backend(other, ["logits", "relevance"])
    assert any("logits against the reference" in f for f in failures)
    assert any("step logits -> relu against the reference" in f for f in failures)


# -- the numpy backend through the plugin manager: the same graphs as the torch backend ----------------------
def _edges(result) -> dict:
    return {(u, v): (d["frequency"], d["sign"]) for u, v, d in result.graph.edges(data=True)}


def _relevance(result) -> dict:
    return {(u, v): d["relevance"] for u, v, d in result.graph.edges(data=True)}


@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
@pytest.mark.parametrize("selector", ["tukey", "mad"])
def test_numpy_graphs_equal_torch_graphs(numpy_plugin, rule: str, selector: str) -> None:
    model = TwoLayerModel.random(0)
    images = np.random.default_rng(1).uniform(0, 1, (24, 8, 6, 6)).astype(np.float32)
    for target in (1, 3):
        ours = ssa.analyse(model, images, target, 3, rule=rule, selector=selector, include_input=True)
        ref = ssa.analyse(torch_twin(model), images, target, 3, rule=rule, selector=selector, include_input=True)
        assert ours.engines and set(ours.engines.values()) == {"autograd"}  # the numpy network's own relevance
        assert _edges(ours) == _edges(ref)
        assert sorted(ours.graph.nodes) == sorted(ref.graph.nodes)
        got, want = _relevance(ours), _relevance(ref)
        assert all(got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-9) for k in want)  # float32 vs float64
        if rule == "gradient_x_activation":
            assert {v.split(":")[0] for _, v in ours.graph.edges} == {"relu", "input"}  # both steps keep edges


def test_numpy_backend_is_chosen_by_the_registry_and_refuses_in_one_line(numpy_plugin, tmp_path: Path) -> None:
    model = TwoLayerModel.random(0)
    path = tmp_path / "two.npz"
    np.savez(path, **model.arrays())
    assert registry().backend_for(str(path)) is NumpyBackend and registry().backend_for(model) is NumpyBackend
    network = ssa.load_model(str(path))
    assert isinstance(network, NumpyNetwork) and network.model_hash() == NumpyNetwork(model).model_hash()
    with pytest.raises(ssa.SSAError, match="runs on the CPU only"):
        NumpyBackend().load(model, device="cuda")
    with pytest.raises(ssa.SSAError, match="takes no taps"):
        ssa.load_model(model, taps=["relu"])


def test_the_cli_analyses_the_numpy_backend(numpy_plugin, tmp_path: Path, monkeypatch, capsys) -> None:
    from ssa.cli import main

    monkeypatch.chdir(tmp_path)
    np.savez("two.npz", **TwoLayerModel.random(0).arrays())
    np.save("x.npy", np.random.default_rng(1).uniform(0, 1, (24, 8, 6, 6)).astype(np.float32))
    assert main(["analyse", "two.npz", "--images", "x.npy", "-t", "1", "--include-input", "-o", "g.json"]) == 0
    out = capsys.readouterr().out
    assert "autograd for logits -> relu, relu -> input" in out and (tmp_path / "g.json").exists()
    for argv, message in ((["two.npz", "--taps", "relu"], "has fixed taps and takes no taps; leave them out."),
                          (["missing.npz"], "model file 'missing.npz' does not exist; check the path.")):
        assert main(["analyse", *argv, "--images", "x.npy", "-t", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ssa: error: ") and err.count("\n") == 1 and message in err, err


# -- the core without torch ------------------------------------------------------------------------------------
_NO_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test (import of {name!r})")
            return None

    sys.meta_path.insert(0, NoTorch())
    import numpy as np
    import ssa
    import ssa.testing.numpy_backend as nb
    from ssa.plugins import get_plugin_manager, registry
    from ssa.testing import BackendCase, check_backend

    get_plugin_manager().register(nb, name="numpy_example")
    registry(refresh=True)
    model = nb.TwoLayerModel.random(0)
    images = np.random.default_rng(1).uniform(0, 1, (24, 8, 6, 6)).astype(np.float32)
    for rule in ("gradient", "gradient_x_activation"):
        result = ssa.analyse(model, images, 1, 3, rule=rule, selector="tukey", include_input=True)
        print(rule, result.graph.number_of_edges(), sorted(set(result.engines.values())))
    case = BackendCase("two-layer", nb.NumpyBackend, lambda: model, (8, 6, 6), load_options={"include_input": True},
                       bad_sources=("missing.npz",), devices=("cpu", "cuda"))
    print("failures", check_backend(case))
    print("torch imported", "torch" in sys.modules)
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        print("blocked:", exc)
""")


def test_the_core_traverses_the_numpy_backend_without_torch(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-3:] == ["failures []", "torch imported False", "blocked: torch is blocked in this test (import of "
                                                                  "'torch')"], proc.stdout
    for line in lines[:2]:
        rule, edges, engines = line.split(" ", 2)
        assert int(edges) > 0 and engines == "['autograd']", line


def test_the_plugin_guide_registers_and_runs_the_numpy_backend() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "pm.register(numpy_backend" in b]
    ns: dict = {"__name__": "plugin_guide_backend"}
    exec(compile(code, "docs/plugins.md", "exec"), ns)
    assert ns["result"].graph.number_of_edges() > 0
    assert "numpy_example" not in registry().names("backend")  # unregistered again
