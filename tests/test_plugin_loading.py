"""How plugins are loaded: ssa's own backends, rules and selectors are plugins named in the ``ssa``
entry-point group of ssa's own distribution (``stepwise-sa``) and load by the one code path every plugin takes."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import distributions, entry_points

import pluggy
import pytest

import ssa
import ssa.plugins as plugins
from ssa.errors import PluginError, SSAWarning


def test_own_plugins_come_from_the_entry_points_of_the_ssa_distribution():
    own = {ep.name: ep.value for ep in entry_points(group="ssa")
           if ep.dist and ep.dist.metadata["Name"] == plugins.OWN_DISTRIBUTION}
    assert own == {"torch": "ssa_torch.plugin", "onnx": "ssa_onnx.plugin", "rules": "ssa_rules.plugin",
                   "selectors": "ssa_selectors.plugin"}
    pm = plugins.get_plugin_manager()
    for name, module in own.items():
        assert pm.get_plugin(name) is sys.modules[module]  # registered under the entry point's name
    assert not hasattr(plugins, "BUILTIN_MODULES")
    infos = {i.name: i.distribution for kind in ("backend", "rule", "selector") for i in ssa.registry().infos(kind)}
    assert infos["torch"] == infos["onnx"] == infos["tukey"] == infos["gradient"] == f"stepwise-sa {ssa.__version__}"


def test_not_installed_is_one_clear_error(monkeypatch):
    third_party_only = [ep for ep in entry_points(group="ssa")
                        if ep.dist and ep.dist.metadata["Name"] != plugins.OWN_DISTRIBUTION]
    with pytest.raises(PluginError, match=r"ssa is not installed in it; install it \(`pip install -e \.`"):
        plugins._load_entry_points(pluggy.PluginManager("ssa"), third_party_only, third_party=True)


def test_an_entry_point_name_taken_by_another_distribution_is_named(tmp_path):
    info = tmp_path / "impostor-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: impostor\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ssa]\ntorch = impostor_plugin\n")
    fake = [ep for d in distributions(path=[str(tmp_path)]) for ep in d.entry_points if ep.group == "ssa"]
    own = [ep for ep in entry_points(group="ssa") if ep.dist and ep.dist.metadata["Name"] == plugins.OWN_DISTRIBUTION]
    pm = pluggy.PluginManager("ssa")
    with pytest.warns(SSAWarning, match=r"plugin 'torch' \(impostor 0.1\) was skipped: its entry-point name 'torch' "
                                        r"is taken by stepwise-sa 0\.1\.0"):
        plugins._load_entry_points(pm, [*fake, *own], third_party=True)
    assert pm.get_plugin("torch") is None  # impostor_plugin was never imported
    plugins._skipped[:] = [s for s in plugins._skipped if s.distribution != "impostor 0.1"]


def test_the_cli_and_every_plugin_module_import_no_torch():
    code = ("import sys, ssa, ssa.cli, ssa.plugins as p; ssa.cli.build_parser(); "
            "assert len(p.get_plugin_manager().get_plugins()) >= 4; "
            "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'onnx2torch', 'matplotlib') "
            "if m in sys.modules); print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_import_ssa_imports_no_torch():
    proc = subprocess.run([sys.executable, "-c", "import ssa, sys; assert 'torch' not in sys.modules, 'torch'"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# -- ssa_add_hookspecs: a backend's own hooks ---------------------------------------------------------------------
def test_a_backend_adds_its_own_hookspecs():
    pm = plugins.get_plugin_manager()
    assert not hasattr(ssa.hookspecs, "ssa_register_closed_forms")  # not the core's
    assert pm.hook.ssa_register_closed_forms.has_spec()  # added by the PyTorch backend's plugin
