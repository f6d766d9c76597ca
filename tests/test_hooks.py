"""The plugin seams: how every plugin (ssa's own included) is loaded, and the hooks that let a backend bring
its own sub-commands, command-line model options and hook specifications, so the core knows no backend."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ssa
import ssa.plugins as plugins
from ssa.cli import build_parser, main
from ssa.cli.commands.common import model_spec, preprocess_from
from ssa.core.options import ModelOption
from ssa.errors import SSAWarning

from . import onnx_models as om

ROOT = Path(__file__).resolve().parents[1]


class _Registered:
    """Register ``plugin`` with the process's plugin manager for a ``with`` block (unregistered after, also
    after an error), and rebuild what the hooks give."""

    def __init__(self, plugin: object, name: str) -> None:
        self.plugin, self.name = plugin, name

    def __enter__(self) -> object:
        plugins.get_plugin_manager().register(self.plugin, name=self.name)
        plugins.model_options(refresh=True)
        return self.plugin

    def __exit__(self, *exc: object) -> None:
        plugins.get_plugin_manager().unregister(self.plugin)
        plugins.model_options(refresh=True)


@pytest.mark.parametrize("part", ["cli", "core", "plugins.py", "hookspecs.py", "__init__.py"])
def test_the_core_names_no_backend(part):
    """The core, the command line and the plugin machinery reach backends only through interfaces, capability
    protocols and hooks: they never name a backend's package."""
    path = ROOT / "ssa" / part
    files = [path] if path.is_file() else sorted(path.rglob("*.py"))
    hits = [f"{f.relative_to(ROOT)}:{i}" for f in files for i, line in enumerate(f.read_text().splitlines(), 1)
            if re.search(r"ssa_onnx|ssa_torch", line)]
    assert not hits, hits
    probes = [f"{f.relative_to(ROOT)}:{i}" for f in files for i, line in enumerate(f.read_text().splitlines(), 1)
              if re.search(r"getattr\(network\b", line)]
    assert not probes, probes


# -- ssa_register_commands ----------------------------------------------------------------------------------------
class HelloCommand:
    @ssa.hookimpl
    def ssa_register_commands(self, commands):
        p = commands.add("hello", run=self.run, help="say hello to a model's logits")
        p.add_argument("--times", type=int, default=1)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        if args.times < 1:
            raise ssa.InvalidInputError(f"--times must be >= 1, got {args.times}.")
        print("hello " * args.times)
        return 0


def test_a_plugin_adds_a_sub_command(capsys):
    with _Registered(HelloCommand(), "hello-plugin"):
        assert main(["hello", "--times", "2"]) == 0
        assert capsys.readouterr().out.strip() == "hello hello"
        assert main(["hello", "--times", "0"]) == 2  # its bad input: one line, exit 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["ssa: error: --times must be >= 1, got 0."]
        assert main(["hello", "--times", "x"]) == 2  # the parser it got from the registry: one line, exit 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["ssa: error: ssa hello: argument --times: invalid int value: 'x' (see `ssa hello --help`)"]
        assert "hello" in build_parser().format_help()
        with pytest.raises(SystemExit):
            main(["hello", "--help"])
        assert "say hello to a model's logits" in capsys.readouterr().out  # the description defaults to the help
    assert main(["hello"]) == 2  # gone with its plugin
    assert "invalid choice: 'hello'" in capsys.readouterr().err


class TakesAnalyse:
    @ssa.hookimpl
    def ssa_register_commands(self, commands):
        commands.add("analyse", run=lambda args: 0, help="mine")


def test_a_plugin_command_cannot_take_a_builtin_name(capsys):
    with _Registered(TakesAnalyse(), "takes-analyse"):
        with pytest.warns(SSAWarning, match=r"plugin 'takes-analyse' \(\(not installed\)\) was skipped: "
                                            r"it registers the command 'analyse', which is one of ssa's own; fix"):
            parser = build_parser()
        args = parser.parse_args(["analyse", "digits", "--images", "digits", "-t", "3"])
        assert args.run.__module__ == "ssa.cli.commands.analyse"
    plugins._skipped[:] = [s for s in plugins._skipped if s.name != "takes-analyse"]


class TwoCommandsThenFails:
    """Adds "wave" and "nod", then fails on a name another plugin has."""

    @ssa.hookimpl
    def ssa_register_commands(self, commands):
        assert "analyse" in commands.names and "hello" in commands.names
        commands.add("wave", run=lambda args: 0, help="wave", aliases=["wink"])
        commands.add("nod", run=lambda args: 0, help="nod")
        commands.add("hello", run=lambda args: 0, help="mine")


class BadCommands:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

    @ssa.hookimpl
    def ssa_register_commands(self, commands):
        commands.add(**{"name": "fine-name", "run": lambda args: 0, "help": "fine", **self.kwargs})


def test_a_plugin_that_fails_leaves_no_command_behind(capsys):
    """A plugin whose hook fails is skipped with everything it added: the parsers and their lines in ssa --help."""
    with _Registered(HelloCommand(), "hello-plugin"), _Registered(TwoCommandsThenFails(), "two-then-fails"):
        with pytest.warns(SSAWarning, match=r"plugin 'two-then-fails' .* was skipped: it registers the command "
                                            r"'hello', which plugin 'hello-plugin' already has; fix"):
            parser = build_parser()
        text = parser.format_help()
        assert "hello" in text and not re.search(r"\b(wave|wink|nod)\b", text), text
        for name in ("wave", "wink", "nod"):
            with pytest.raises(ssa.SSAError, match=f"invalid choice: '{name}'"):
                parser.parse_args([name])
    plugins._skipped[:] = [s for s in plugins._skipped if s.name != "two-then-fails"]


@pytest.mark.parametrize("kwargs, words", [
    ({"name": "Hello"}, "a command named 'Hello'; a command name is lower-case letters, digits and '-'"),
    ({"aliases": ["plugins"]}, "the command 'plugins', which is one of ssa's own"),
    ({"aliases": ["fine-name"]}, "with a repeated alias (fine-name, fine-name)"),
    ({"run": "main"}, "with run='main', which is not callable"),
    ({"help": "two\nlines"}, "with help='two\\nlines'; give one line of text"),
])
def test_a_bad_command_is_refused_in_one_line(kwargs, words):
    with _Registered(BadCommands(**kwargs), "bad-commands"):
        with pytest.warns(SSAWarning) as record:
            parser = build_parser()
        (line,) = [str(w.message) for w in record if "bad-commands" in str(w.message)]
        assert words in line and len(line.splitlines()) == 1, line
        assert "fine-name" not in parser.format_help()
    plugins._skipped[:] = [s for s in plugins._skipped if s.name != "bad-commands"]


class OldCommands:
    """ssa_register_commands as ssa 0.1 specified it: argparse's sub-parsers."""

    @ssa.hookimpl
    def ssa_register_commands(self, subparsers):
        subparsers.add_parser("old", help="old")


OLD_COMMANDS = OldCommands()


def test_a_plugin_with_the_old_hook_arguments_is_told_what_changed():
    from importlib.metadata import EntryPoint

    import pluggy

    from ssa import hookspecs

    pm = pluggy.PluginManager("ssa")
    pm.add_hookspecs(hookspecs)
    own = [ep for ep in plugins.entry_points(group="ssa") if plugins._entry_point_dist(ep)[1]]
    old = EntryPoint("old-commands", f"{__name__}:OLD_COMMANDS", "ssa")
    with pytest.warns(SSAWarning, match=r"plugin 'old-commands' \(unknown distribution\) was skipped: its hook does "
                                        r"not match ssa's \(hookimpl definition: ssa_register_commands\(subparsers\); "
                                        r".*\); ssa_register_commands now receives `commands`, an "
                                        r"ssa.plugins.CommandRegistry \(docs/plugins.md\), not argparse's sub-parsers"):
        plugins._load_entry_points(pm, [*own, old], third_party=True)
    assert pm.get_plugin("old-commands") is None
    plugins._skipped[:] = [s for s in plugins._skipped if s.name != "old-commands"]


# -- ssa_register_model_options -----------------------------------------------------------------------------------
class TorchOption:
    @ssa.hookimpl
    def ssa_register_model_options(self, register):
        register(ModelOption("--warm-up", "warm_up", backend="torch", type=int, help="batches to run first"))


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_a_backend_model_option_reaches_the_model_spec_of_its_models_only(tmp_path):
    with _Registered(TorchOption(), "warm-up-plugin"):
        for command in (["analyse", "digits", "--images", "digits", "-t", "3"], ["check", "digits"],
                        ["collect", "digits", "--images", "digits"], ["report", "g.json", "--model", "digits"]):
            spec = model_spec(_parse([*command, "--warm-up", "2"]))
            assert spec.options == {"warm_up": 2}, command
            assert spec.load_options()["warm_up"] == 2
            assert model_spec(_parse(command)).options == {}
        onnx_file = tmp_path / "m.onnx"
        with pytest.raises(ssa.InvalidInputError, match=r"--warm-up applies to torch models only \(the torch "
                                                        r"backend\), and the onnx backend loads .*m\.onnx"):
            model_spec(_parse(["check", str(onnx_file), "--warm-up", "2"]))
    with pytest.raises(ssa.errors.SSAError, match="unrecognized arguments: --warm-up 2"):
        _parse(["check", "digits", "--warm-up", "2"])


class Duplicate:
    @ssa.hookimpl
    def ssa_register_model_options(self, register):
        register(ModelOption("--parity-tolerance", "tol", backend="mine", help="mine"))


class NotAnOption:
    @ssa.hookimpl
    def ssa_register_model_options(self, register):
        register("--parity")


@pytest.mark.parametrize("plugin, why", [
    (Duplicate(), "it registers the model option --parity-tolerance, which the onnx backend already registers"),
    (NotAnOption(), "it registered '--parity' as a model option, expected an ssa.core.options.ModelOption"),
])
def test_a_bad_model_option_skips_its_plugin(plugin, why):
    with pytest.warns(SSAWarning, match=re.escape(why)):
        with _Registered(plugin, "bad-option"):
            options = plugins.model_options()
    assert [(o.flag, o.backend) for o in options] == [("--parity-tolerance", "onnx"), ("--weights", "torch")]
    plugins._skipped[:] = [s for s in plugins._skipped if s.name != "bad-option"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(flag="parity", option="p", backend="onnx", help="h"), "flag must look like --lower-case-words"),
    (dict(flag="--p", option="taps", backend="onnx", help="h"), "option must be a Python identifier that is not"),
    (dict(flag="--p", option="p", backend="", help="h"), "backend must be a backend's registered name"),
    (dict(flag="--p", option="p", backend="onnx", help=""), "help must be a non-empty string"),
    (dict(flag="--p", option="p", backend="onnx", help="h", type=3), "type must be callable"),
])
def test_model_option_checks_its_fields(kwargs, message):
    with pytest.raises(ssa.InvalidInputError, match=re.escape(message)):
        ModelOption(**kwargs)


# -- the ONNX backend's own option and capabilities, end to end -------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_seams")
    x = om.images((3, 8, 8), 12, seed=5)
    np.save(root / "x.npy", x)
    return om.export(om.vgg_style(), x, root / "vgg.onnx"), root / "x.npy"


def test_parity_tolerance_reaches_the_onnx_backend_through_analyse(onnx_model, capsys, tmp_path):
    path, images = onnx_model
    out = tmp_path / "g.json"
    assert main(["analyse", str(path), "--images", str(images), "-t", "0", "--parity-tolerance", "0.5", "-q",
                 "-o", str(out)]) == 0, capsys.readouterr().err
    assert ssa.read_graph(out).graph["model"] == "vgg"
    assert main(["analyse", str(path), "--images", str(images), "-t", "0", "--parity-tolerance", "-1", "-q"]) == 2
    assert "parity_tolerance must be a number >= 0, got -1.0" in capsys.readouterr().err


def test_check_uses_the_onnx_capabilities(onnx_model, capsys):
    path, _ = onnx_model
    assert main(["check", str(path), "--parity-tolerance", "0.01"]) == 0  # no --input-shape: the file declares it
    out = capsys.readouterr().out
    assert "(onnx backend)" in out and "parity ok" in out and "tolerance 0.01" in out  # SupportsCheckReport
    assert re.search(r"\d+ of \d+ steps by the closed form", out)  # SupportsClosedFormSummary
    assert main(["check", "digits"]) == 2  # a torch model declares no input shape
    assert "pass --images or --input-shape C,H,W" in capsys.readouterr().err


def test_preprocess_reads_the_declared_input_through_the_backend(onnx_model, tmp_path):
    path, _ = onnx_model
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    args = _parse(["check", str(path), "--images", str(folder), "--preprocess", "0-1"])
    pre = preprocess_from(args)
    assert pre.resize == (8, 8) and pre.layout == "nchw" and pre.channels == 3  # from the file's (N, 3, 8, 8)

