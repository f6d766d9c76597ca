"""A broken third-party plugin is named, skipped with a one-line warning that mentions
SSA_DISABLE_PLUGIN_AUTOLOAD, and the other plugins keep working (``ssa plugins`` included)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ssa
from ssa.errors import SSAWarning
from ssa.plugins import get_plugin_manager, registry

SSA = [str(Path(sys.executable).with_name("ssa"))] if Path(sys.executable).with_name("ssa").exists() \
    else [sys.executable, "-m", "ssa.cli"]

BROKEN = {
    # distribution: (entry-point name, module name, module source)
    "broken-import": ("bad_import", "ssa_bad_import", "import not_a_module_anywhere\n"),
    "misspelt-hook": ("misspelt", "ssa_misspelt", """
        from ssa.hookspecs import hookimpl

        @hookimpl
        def ssa_register_selector(register):
            pass
    """),
    "raising-hook": ("raising", "ssa_raising", """
        from ssa.hookspecs import hookimpl

        @hookimpl
        def ssa_register_rules(register):
            raise RuntimeError("boom in the hook")
    """),
    "not-a-class": ("notaclass", "ssa_notaclass", """
        from ssa.hookspecs import hookimpl

        @hookimpl
        def ssa_register_selectors(register):
            register(object)
    """),
    "takes-a-builtin-name": ("dupname", "ssa_dupname", """
        from ssa.hookspecs import hookimpl
        from ssa_selectors.selectors import TukeySelector

        class Mine(TukeySelector):
            pass

        @hookimpl
        def ssa_register_selectors(register):
            register(Mine)
    """),
    "a-good-one": ("good", "ssa_good", """
        import numpy as np
        import ssa

        class Everything(ssa.Selector):
            name = "everything"
            description = "every positive entry"
            parameters = {"two_sided": ssa.Param(False, "unused", bool)}

            def select(self, rows):
                return (np.nan_to_num(rows) > 0).astype(np.int8)

        @ssa.hookimpl
        def ssa_register_selectors(register):
            register(Everything)
    """),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Installed distributions (dist-info with an ``ssa`` entry point) of five broken plugins and a good one."""
    root = tmp_path_factory.mktemp("broken-site")
    for dist, (ep, module, source) in BROKEN.items():
        info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[ssa]\n{ep} = {module}\n")
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


def _run(args, site, autoload=True):
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    env.pop("SSA_DISABLE_PLUGIN_AUTOLOAD", None)
    if not autoload:
        env["SSA_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run(SSA + args, env=env, capture_output=True, text=True, timeout=300, cwd=site)


@pytest.mark.slow
def test_ssa_plugins_names_every_broken_plugin_and_lists_the_rest(site):
    proc = _run(["plugins"], site)
    assert proc.returncode == 0, proc.stderr
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 5, proc.stderr
    for line in warnings:
        assert line.startswith("ssa: warning: plugin ") and "SSA_DISABLE_PLUGIN_AUTOLOAD=1" in line
    for dist, (ep, _, _) in BROKEN.items():
        if dist != "a-good-one":
            assert any(f"plugin {ep!r} ({dist} 0.1) was skipped" in w for w in warnings), (dist, warnings)
    text = proc.stderr
    assert "No module named 'not_a_module_anywhere'" in text
    assert "'ssa_register_selector', which is not an ssa hook" in text
    assert "ssa_register_rules raised RuntimeError: boom in the hook" in text
    assert "expected a subclass of ssa.Selector" in text
    assert "selector named 'tukey', which stepwise-sa 0.1.0 already registers" in text
    # the built-ins and the good plugin are listed; the skipped ones in their own section
    out = proc.stdout
    for name in ("torch", "onnx", "gradient", "gradient_x_activation", "tukey", "mad", "everything"):
        assert f"  {name} " in out, name
    assert "[a-good-one 0.1]" in out
    skipped = out.split("skipped (broken plugins")[1]
    assert all(ep in skipped for ep in ("bad_import", "misspelt", "raising", "notaclass", "dupname"))


@pytest.mark.slow
def test_analyse_still_works_with_broken_plugins_installed(site):
    proc = _run(["analyse", "digits", "--images", "digits", "--target", "3", "--selector", "everything",
                 "--rule", "gradient", "-b", "1"], site)
    assert proc.returncode == 0, proc.stderr
    assert "selector=everything" in proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 5
    off = _run(["plugins"], site, autoload=False)
    assert off.returncode == 0 and off.stderr == "" and "everything" not in off.stdout


def test_inline_plugin_raising_in_its_hook_is_skipped_with_a_warning():
    class Raising:
        @ssa.hookimpl
        def ssa_register_selectors(self, register):
            raise ValueError("cannot register")

    pm = get_plugin_manager()
    plugin = Raising()
    pm.register(plugin, name="inline-raising")
    try:
        with pytest.warns(SSAWarning, match="plugin 'inline-raising' .* was skipped: ssa_register_selectors raised "
                                            "ValueError: cannot register.*SSA_DISABLE_PLUGIN_AUTOLOAD=1"):
            reg = registry(refresh=True)
        assert "tukey" in reg.names("selector")
        assert [s.name for s in reg.skipped] == ["inline-raising"]
    finally:
        pm.unregister(plugin)
        registry(refresh=True)


def test_inline_plugin_with_a_misspelt_hook_is_unregistered():
    from ssa.plugins import _drop_unknown_hooks

    class Misspelt:
        @ssa.hookimpl
        def ssa_register_selectr(self, register):
            pass

    pm = get_plugin_manager()
    plugin = Misspelt()
    pm.register(plugin, name="inline-misspelt")
    try:
        with pytest.warns(SSAWarning, match="'ssa_register_selectr', which is not an ssa hook"):
            _drop_unknown_hooks(pm)
        assert not pm.is_registered(plugin)
    finally:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
