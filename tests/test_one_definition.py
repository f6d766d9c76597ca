"""Each option has one definition (issue 22, item 1): the fields of ModelSpec and RunOptions.

The keywords of the API functions, of ``Session`` and the options of the command line are collected here and
checked against the fields (same names, same defaults, the CLI's help texts from the fields); the constants and
checks that used to be written several times are looked for in the source tree, which must hold each once.
"""

from __future__ import annotations

import argparse
import inspect
import re
from dataclasses import MISSING
from pathlib import Path

import pytest

import ssa
from ssa.cli import build_parser
from ssa.core.options import ModelSpec, RunOptions, option_defaults, option_fields, option_flag
from ssa.errors import InvalidInputError
from ssa.plugins import model_options
from ssa.scale import analyse_to_folder

ROOT = Path(__file__).resolve().parents[1]

#: keywords that are not options of a run: the data, the choice of classes and images, where outputs go
NOT_OPTIONS = {"self", "model", "images", "target", "targets", "labels", "preprocess", "by_prediction",
               "min_confidence", "max_per_class", "only_target", "out_dir", "runner", "decode_workers"}
#: ``ssa analyse`` flags that are not options of a run (images, classes, outputs, scale-out, the process's torch
#: threads: the command line's alone, ssa.core.threads)
CLI_NOT_OPTIONS = {"--help", "--images", "--labels", "--class-map", "--preprocess", "--resize", "--scale", "--mean",
                   "--std", "--layout", "--channels", "--bgr", "--target", "--targets", "--by-prediction",
                   "--min-confidence", "--max-per-class", "--max-images", "--out-dir", "--ray", "--ray-address",
                   "--workers", "--decode-workers", "--out", "--quiet", "--threads"}
#: fields the keywords do not spell out: the model (``model``) and a backend's own options (loaded first)
NOT_KEYWORDS = {"source", "options"}

FIELDS = {**option_fields(ModelSpec), **option_fields(RunOptions)}
DEFAULTS = {**option_defaults(ModelSpec), **option_defaults(RunOptions)}
API = {"ssa.analyse": ssa.analyse, "ssa.analyse_many": ssa.analyse_many, "ssa.Session": ssa.Session.__init__,
       "ssa.scale.analyse_to_folder": analyse_to_folder}


def _option_keywords(fn) -> dict[str, object]:
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params
            if p.name not in NOT_OPTIONS and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


@pytest.mark.parametrize("name", sorted(API))
def test_every_option_keyword_is_a_field_with_its_default(name):
    keywords = _option_keywords(API[name])
    assert keywords, name
    for kw, default in keywords.items():
        assert kw in FIELDS, f"{name}({kw}=...) is not a field of ModelSpec or RunOptions"
        assert default == DEFAULTS[kw], f"{name}({kw}={default!r}) but the field's default is {DEFAULTS[kw]!r}"


@pytest.mark.parametrize("name", ["ssa.analyse", "ssa.analyse_many"])
def test_the_api_takes_every_field(name):
    keywords = _option_keywords(API[name])
    missing = sorted(set(FIELDS) - NOT_KEYWORDS - set(keywords))
    assert not missing, f"{name} has no keyword for the fields {missing}"


def test_the_session_takes_the_fields_of_the_model_and_the_engine():
    # the method's selector, branching and stop_at are per analyse() (or the defaults of from_options)
    keywords = set(_option_keywords(ssa.Session.__init__))
    assert set(FIELDS) - NOT_KEYWORDS - keywords == {"selector", "selector_params", "branching", "stop_at"}
    sig = inspect.signature(ssa.Session.analyse).parameters
    assert {"selector", "selector_params", "branching", "stop_at"} <= set(sig)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _flags(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings if s.startswith("--")}


FIELD_OF_FLAG = {option_flag(f): name for name, f in FIELDS.items() if option_flag(f)}


def test_every_option_of_ssa_analyse_is_a_field_with_its_default_and_help():
    backend_flags = {opt.flag for opt in model_options()}
    actions = _flags(_subparsers()["analyse"])
    for flag, action in actions.items():
        if flag in CLI_NOT_OPTIONS or flag in backend_flags:
            continue
        assert flag in FIELD_OF_FLAG, f"ssa analyse {flag} is not a field of ModelSpec or RunOptions"
        f = FIELDS[FIELD_OF_FLAG[flag]]
        assert action.default == f.default, f"ssa analyse {flag}: default {action.default!r} != {f.default!r}"
        assert action.help == f.metadata["help"], f"ssa analyse {flag}: the help text is not the field's"
    # and every field with a command-line spelling is an option of ssa analyse (the model is its positional)
    wanted = {flag for flag in FIELD_OF_FLAG if flag.startswith("--")}
    assert wanted <= set(actions), sorted(wanted - set(actions))


def test_a_field_has_the_same_default_in_every_command():
    for command, p in _subparsers().items():
        for flag, action in _flags(p).items():
            name = FIELD_OF_FLAG.get(flag)
            if name is None or FIELDS[name].default is MISSING:
                continue
            assert action.default == FIELDS[name].default, f"ssa {command} {flag}: default {action.default!r}"


def test_the_checks_are_the_fields_checks():
    # the same one line whichever way the option comes in
    for kw in ({"engine": "turbo"}, {"store_mode": "write"}, {"batch_size": 0}, {"device": "tpu"},
               {"taps": "conv1"}):
        with pytest.raises(InvalidInputError) as want:
            (ModelSpec("digits", **kw) if "device" in kw or "taps" in kw else RunOptions(**kw))
        with pytest.raises(InvalidInputError) as got:
            ssa.Session("digits", "digits", **kw)
        assert str(got.value) == str(want.value)
        with pytest.raises(InvalidInputError) as got:
            ssa.analyse("digits", "digits", 3, **kw)
        assert str(got.value) == str(want.value)


def _source() -> dict[str, str]:
    files = [p for d in ("ssa", "backends", "plugins") for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 50
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in files}


@pytest.mark.parametrize("what,pattern,home", [
    ("check_int", r"^\s*def check_int\b", "ssa/core/checks.py"),
    ("check_count (merged into check_int)", r"^\s*def check_count\b", None),
    ("the stop_at check", r"^\s*def check_stop_at\b", "ssa/core/checks.py"),
    ("the stop_at message", r"is not a tap; taps are", "ssa/core/checks.py"),
    ("ENGINES", r"^ENGINES\s*=", "ssa/core/options.py"),
    ("the engine names", r"[\"']auto[\"'],\s*[\"']fast[\"'],\s*[\"']autograd[\"']", "ssa/core/options.py"),
    ("STORE_MODES", r"^STORE_MODES\s*=", "ssa/core/options.py"),
    ("spatial_mean", r"^\s*def spatial_mean\b", "backends/ssa_torch/closed_form/collect.py"),
    ("the 256 MiB work budget", r"256\s*(<<\s*20|\*\s*2\s*\*\*\s*20|\*\s*1024\s*\*\s*1024)|268435456",
     "ssa/core/budget.py"),
    ("SSA_WORK_BYTES", r"environ[^\n]*SSA_WORK_BYTES", "ssa/core/budget.py"),
    ("work_bytes", r"^\s*def work_bytes\b", "ssa/core/budget.py"),
    ("ModelSpec", r"^class ModelSpec\b", "ssa/core/options.py"),
    ("RunOptions", r"^class RunOptions\b", "ssa/core/options.py"),
    ("the --threads option", r"add_argument\(\s*[\"']--threads\b", "ssa/cli/commands/common.py"),
])
def test_defined_once(what, pattern, home):
    rx = re.compile(pattern, re.M)
    found = sorted(path for path, text in _source().items() for _ in rx.finditer(text))
    assert found == ([home] if home else []), f"{what} is written in {found}"


def test_every_field_has_a_help_text():
    for name, f in FIELDS.items():
        assert isinstance(f.metadata.get("help"), str) and f.metadata["help"].strip(), name


def test_the_batch_size_default_is_the_devices_everywhere():
    # None in the fields and keywords: 32 on the CPU (128 on a GPU), the same for every way in
    assert RunOptions().batch_size is None
    assert ssa.Session("digits", "digits").batch_size == 32
    assert ssa.Session.from_options(ModelSpec("digits"), "digits").batch_size == 32
    assert ssa.Session.from_options(ModelSpec("digits"), "digits", RunOptions(batch_size=7)).batch_size == 7
