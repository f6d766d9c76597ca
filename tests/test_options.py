"""``ModelSpec`` and ``RunOptions`` (ssa.core.options): checked once, frozen, ``replace()`` checks again; and the
command line's two builders (``model_spec``, ``run_options``) agree with what the flags say."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import re

import pytest

import ssa
from ssa.cli import build_parser
from ssa.cli.commands.common import api_options, model_spec, run_options
from ssa.core.defaults import DEFAULT_RULE, DEFAULT_SELECTOR, PRESETS
from ssa.core.options import ENGINES, Method, ModelSpec, RunOptions
from ssa.errors import InvalidInputError


def test_model_spec_defaults_and_load_options():
    spec = ModelSpec("digits")
    assert (spec.backend, spec.device, spec.taps, spec.include_input, spec.channel_axes, spec.output_index,
            spec.name, dict(spec.options)) == (None, "cpu", None, False, None, None, None, {})
    assert spec.load_options() == {"taps": None, "include_input": False, "channel_axes": None, "output_index": None}
    full = ModelSpec("m.onnx", backend="onnx", device="cuda:1", taps=["a", "b"], include_input=True,
                     channel_axes={"a": 1}, output_index=0, name="vgg", options={"parity_tolerance": 0.01})
    assert full.taps == ("a", "b")  # any sequence, kept as a tuple
    assert full.load_options() == {"taps": ["a", "b"], "include_input": True, "channel_axes": {"a": 1},
                                   "output_index": 0, "name": "vgg", "parity_tolerance": 0.01}
    # tokens: handed to the backend only when not the default (a backend without token taps need not know it)
    assert spec.tokens == "all" and ModelSpec("vit.onnx", tokens="cls").load_options()["tokens"] == "cls"


def test_model_spec_is_frozen_and_replace_checks_again():
    spec = ModelSpec("digits", taps=("a",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.device = "cuda"  # type: ignore[misc]
    assert dataclasses.replace(spec, device="cuda").device == "cuda"
    with pytest.raises(InvalidInputError, match="device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        dataclasses.replace(spec, device="gpu")
    assert pickle.loads(pickle.dumps(spec)) == spec  # options travel to worker processes


@pytest.mark.parametrize("kwargs, message", [
    (dict(source=None), "source must name a model"),
    (dict(backend=""), "backend must be a non-empty string or None, got ''"),
    (dict(device="tpu"), "device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    (dict(taps="conv1,fc1"), "taps must be a sequence of tap names"),
    (dict(taps=[]), "taps must name at least one tap"),
    (dict(taps=["a", 3]), "taps must name at least one tap, each a non-empty string"),
    (dict(include_input=1), "include_input must be True or False, got 1"),
    (dict(channel_axes={"a": "1"}), "channel_axes['a'] must be an integer axis, got '1'"),
    (dict(channel_axes={"a": True}), "channel_axes['a'] must be an integer axis, got True"),
    (dict(channel_axes=[("a", 1)]), "channel_axes must be a mapping"),
    (dict(tokens="first"), "tokens must be one of all, cls, got 'first'"),
    (dict(output_index=-1), "output_index must be >= 0, got -1"),
    (dict(output_index=1.0), "output_index must be an integer >= 0, got 1.0"),
    (dict(name=""), "name must be a non-empty string or None"),
    (dict(options={"taps": ["a"]}), "'taps' is a field of ModelSpec: pass taps= instead"),
    (dict(options={3: 1}), "options must have non-empty string keys, got 3"),
])
def test_model_spec_refuses_bad_values_in_one_line(kwargs, message):
    kwargs = {"source": "digits", **kwargs}
    with pytest.raises(InvalidInputError, match=re.escape(message)) as info:
        ModelSpec(**kwargs)
    assert "\n" not in str(info.value)


def test_run_options_defaults_resolve_the_method():
    opts = RunOptions()
    assert opts.method == Method(DEFAULT_RULE, {}, DEFAULT_SELECTOR, {})
    assert (opts.branching, opts.stop_at, opts.engine, opts.batch_size, opts.store, opts.store_mode,
            opts.progress) == (3, None, "auto", None, None, "fill", False)  # batch size: by the device
    paper = RunOptions(preset="paper")
    p = PRESETS["paper"]
    assert paper.method == Method(p["rule"], p["rule_params"], p["selector"], p["selector_params"])
    assert paper.rule is None and paper.selector is None  # the fields keep what was given


def test_run_options_replace_resolves_again():
    paper = RunOptions(preset="paper", branching=2)
    mine = dataclasses.replace(paper, preset=None, selector="tukey", selector_params={"k": 3})
    assert mine.method == Method(DEFAULT_RULE, {}, "tukey", {"k": 3}) and mine.branching == 2
    with pytest.raises(InvalidInputError, match="preset 'paper' sets the rule, the selector and their parameters; "
                                                "drop selector"):
        dataclasses.replace(paper, selector="mad")
    with pytest.raises(ValueError, match="method"):  # derived: not given, not replaced
        dataclasses.replace(paper, method=paper.method)
    assert RunOptions(preset="paper") == RunOptions(preset="paper")
    assert pickle.loads(pickle.dumps(mine)) == mine


def test_run_options_take_configured_instances():
    rule = ssa.make_rule("gradient")
    selector = ssa.make_selector("tukey", k=2)
    opts = RunOptions(rule=rule, selector=selector)
    assert opts.method.rule is rule and opts.method.selector is selector


@pytest.mark.parametrize("kwargs, message", [
    (dict(rule=3), "rule must be a registered rule's name or an ssa.Rule, got 3"),
    (dict(selector=ssa.make_rule), "selector must be a registered selector's name or an ssa.Selector"),
    (dict(rule_params=[("a", 1)]), "rule_params must be a mapping"),
    (dict(preset="nope"), "preset must be one of paper, got 'nope'"),
    (dict(preset="paper", rule="gradient"), "preset 'paper' sets the rule"),
    (dict(branching=0), "branching must be >= 1, got 0. Pass --branching 1 or more."),
    (dict(branching=2.5), "branching must be an integer >= 1, got 2.5"),
    (dict(stop_at=""), "stop_at must be a non-empty string or None"),
    (dict(engine="fastest"), f"engine must be one of {', '.join(ENGINES)}, got 'fastest'"),
    (dict(batch_size=0), "batch_size must be >= 1, got 0. Pass --batch-size 1 or more."),
    (dict(store=3), "store must be a folder path or None, got 3"),
    (dict(store_mode="write"), "store_mode must be 'fill' or 'read', got 'write'"),
    (dict(progress="yes"), "progress must be True or False, got 'yes'"),
])
def test_run_options_refuse_bad_values_in_one_line(kwargs, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)) as info:
        RunOptions(**kwargs)
    assert "\n" not in str(info.value)


# -- the command line's builders ---------------------------------------------------------------------------------
def _args(*argv: str):
    return build_parser().parse_args(list(argv))


def test_model_spec_from_the_command_line():
    spec = model_spec(_args("analyse", "digits", "--images", "digits", "-t", "3", "--taps", "conv1,,fc1",
                            "--include-input", "--channel-axis", "conv1=1", "--channel-axis", "fc1=0",
                            "--output-index", "0", "--name", "mine", "--backend", "torch"))
    assert spec == ModelSpec("digits", backend="torch", taps=("conv1", "fc1"), include_input=True,
                             channel_axes={"conv1": 1, "fc1": 0}, output_index=0, name="mine")
    assert model_spec(_args("check", "digits")) == ModelSpec("digits")
    with pytest.raises(InvalidInputError, match="--channel-axis must look like TAP=AXIS with an integer axis"):
        model_spec(_args("check", "digits", "--channel-axis", "conv1=x"))


def test_run_options_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no .ssa-store here
    monkeypatch.delenv("SSA_STORE", raising=False)
    base = ["analyse", "digits", "--images", "digits", "-t", "3"]
    opts = run_options(_args(*base, "-b", "2", "--rule", "gradient", "--rule-param", "a=1", "--selector", "tukey",
                             "--selector-param", "k=3,two_sided=true", "--stop-at", "conv1", "--engine", "autograd",
                             "--batch-size", "8", "-q"))
    assert opts == RunOptions(rule="gradient", rule_params={"a": "1"}, selector="tukey",
                              selector_params={"k": "3", "two_sided": "true"}, branching=2, stop_at="conv1",
                              engine="autograd", batch_size=8, progress=False)
    assert run_options(_args(*base)) == RunOptions(progress=True, batch_size=32)  # the CPU default, resolved
    assert run_options(_args(*base, "--preset", "paper")).method == RunOptions(preset="paper").method
    with pytest.raises(InvalidInputError, match="preset 'paper' sets the rule"):
        run_options(_args(*base, "--preset", "paper", "--selector", "mad"))
    with pytest.raises(InvalidInputError, match="branching must be >= 1, got 0"):
        run_options(_args(*base, "-b", "0"))
    store = tmp_path / "st"
    assert run_options(_args(*base, "--store", str(store))).store_mode == "fill"
    (tmp_path / ".ssa-store").mkdir()  # filled by `ssa collect`: read when it holds this model and images
    got = run_options(_args(*base))
    assert (got.store, got.store_mode) == (".ssa-store", "read")


def test_api_options_are_the_keywords_of_analyse():
    spec = ModelSpec("digits", taps=("conv1",), name="d", options={"warm_up": 1})
    opts = RunOptions(preset="paper", branching=2)
    kw = api_options(spec, opts)
    params = inspect.signature(ssa.analyse).parameters
    assert set(kw) <= set(params) and set(kw) <= set(inspect.signature(ssa.analyse_many).parameters)
    assert kw["rule"] == "gradient" and kw["selector"] == "tukey" and kw["selector_params"] == {"k": 1.5,
                                                                                              "two_sided": False}
    assert kw["taps"] == ["conv1"] and kw["name"] == "d" and kw["branching"] == 2 and "warm_up" not in kw
    a = ssa.analyse("digits", "digits", 3, **api_options(ModelSpec("digits"), RunOptions(preset="paper")))
    b = ssa.analyse("digits", "digits", 3, preset="paper")
    assert a.graph.node_set() == b.graph.node_set() and a.selector == b.selector == "tukey"
