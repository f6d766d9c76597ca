"""The example third-party plugin (plugins/ssa_example_selector): installed into a temporary folder with
pip, found through the ``ssa`` entry-point group by ``ssa plugins`` and usable by ``ssa analyse``; and
ssa's own wheel does not ship it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "plugins" / "ssa_example_selector"


def _ssa_command() -> list[str]:
    script = Path(sys.executable).with_name("ssa")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ssa.cli"]


def _env(target: Path | None, autoload: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SSA_DISABLE_PLUGIN_AUTOLOAD", None)
    if not autoload:
        env["SSA_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    if target is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(target), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    return env


pytestmark = pytest.mark.slow  # installs the example distribution with pip and runs the installed `ssa`


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    proc = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                 "--disable-pip-version-check", "-q", "--target", str(target), str(EXAMPLE)],
                _env(None), tmp_path_factory.getbasetemp())
    assert proc.returncode == 0, proc.stderr
    assert (target / "ssa_example_selector" / "__init__.py").exists()
    return target


def test_installed_distribution_declares_the_entry_point(installed: Path) -> None:
    (dist,) = installed.glob("ssa_example_selector-*.dist-info")
    text = (dist / "entry_points.txt").read_text()
    assert "[ssa]" in text and "example_selector = ssa_example_selector" in text


def test_ssa_plugins_lists_the_example_selector(installed: Path, tmp_path: Path) -> None:
    proc = _run(_ssa_command() + ["plugins"], _env(installed), tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("gap "))
    assert "[ssa-example-selector 0.1.0]" in line
    assert "max_k=8" in proc.stdout and "factor=1.0" in proc.stdout
    # without the install, or with autoloading off, it is not there
    for env in (_env(None), _env(installed, autoload=False)):
        other = _run(_ssa_command() + ["plugins"], env, tmp_path)
        assert other.returncode == 0 and not any(ln.strip().startswith("gap ") for ln in other.stdout.splitlines())


def test_ssa_analyse_with_the_example_selector(installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "graph.json"
    proc = _run(_ssa_command() + ["analyse", "digits", "--images", "digits", "--target", "3", "--rule",
                                  "gradient_x_activation", "--selector", "gap", "--selector-param", "max_k=4",
                                  "--out", str(out)], _env(installed), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "selector=gap {'max_k': 4, 'factor': 1.0, 'two_sided': False}" in proc.stdout
    data = json.loads(out.read_text())
    graph = data.get("graph", data)
    assert graph["selector"] == "gap" and graph["selector_params"]["max_k"] == 4
    nodes = data["nodes"]
    assert len(nodes) > 2
    # without autoloading the selector is unknown: one line, exit code 2
    off = _run(_ssa_command() + ["analyse", "digits", "--images", "digits", "--target", "3", "--selector", "gap"],
               _env(installed, autoload=False), tmp_path)
    assert off.returncode == 2 and "unknown selector 'gap'" in off.stderr and off.stderr.count("\n") == 1


def test_installed_example_passes_the_conformance_checks(installed: Path, tmp_path: Path) -> None:
    code = ("from ssa.conformance import check_selector\n"
            "from ssa.plugins import registry\n"
            "cls = registry().get('selector', 'gap')\n"
            "print(cls.__module__, check_selector(cls), check_selector(cls, two_sided=True, max_k=2))\n")
    proc = _run([sys.executable, "-c", code], _env(installed), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ssa_example_selector", "[]", "[]"]


def test_ssas_own_wheel_does_not_ship_the_example(tmp_path: Path) -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert sorted(packages) == sorted(["ssa", "backends/ssa_torch", "backends/ssa_onnx", "plugins/ssa_rules",
                                       "plugins/ssa_selectors"])
    assert "example_selector" not in config["project"]["entry-points"]["ssa"]
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "--disable-pip-version-check", "-q", "-w", str(tmp_path), str(ROOT)], _env(None), tmp_path)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("stepwise_sa-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"ssa", "ssa_torch", "ssa_onnx", "ssa_rules", "ssa_selectors", "stepwise_sa-0.1.0.dist-info"}
    assert not any("example" in n for n in names)
