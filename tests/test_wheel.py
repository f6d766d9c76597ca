"""The distribution a researcher installs: ``python -m build`` makes the sdist and the wheel (from that sdist),
the wheel installs into a fresh virtual environment, and its ``ssa`` command analyses the embedded digits model
and writes the explorer from a folder outside the checkout.

The fresh environment and its dependencies. A clean ``pip install stepwise-sa`` would download torch (several
GB with its CUDA libraries), so the test lends the new environment the dependencies this interpreter already
has, without lending it ssa:

* the environment is made with ``python -m venv`` from the base interpreter (``sys._base_executable``, which
  has no ssa and no torch) and *without* ``--system-site-packages``: ``--system-site-packages`` of the
  environment the tests run in is impossible (venv takes the base interpreter's site-packages, not this
  one's), and of a base that had ssa it would prove nothing;
* a ``.pth`` file in its site-packages names a folder of links to every entry of this interpreter's
  site-packages (and of the folders a ``.pth`` file or PYTHONPATH adds, the checkout's source roots left out)
  *except* ssa's own distribution (its ``.dist-info``, the files of its record, such as an
  editable install's import hook, and the packages ``ssa``, ``ssa_torch``, ...), so torch, numpy, ...
  import from there while ``ssa`` can only come from the wheel;
* ``pip install`` of the wheel (no ``--no-deps``, no index) then checks that every dependency the wheel
  declares is met, installs the five packages and the ``ssa`` console script, and the test asserts that
  ``ssa`` imports from the new environment and that the commands run with the checkout off ``sys.path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from importlib.metadata import distributions
from pathlib import Path

import pytest

from ssa.plugins import OWN_DISTRIBUTION

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ssa", "ssa_torch", "ssa_onnx", "ssa_rules", "ssa_selectors")
OLD_NAME = "ssa"  # the distribution's name before it was published as stepwise-sa (an old editable install)

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _clean_env(venv: Path) -> dict[str, str]:
    """The environment of a user's shell: the checkout is not on PYTHONPATH, no ssa switch is set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSA_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), "/usr/bin", "/bin"])
    env["OMP_NUM_THREADS"] = "1"
    env["MPLBACKEND"] = "Agg"
    return env


def _ssas_own_entries(site: Path) -> set[str]:
    """The top-level entries of ``site`` that belong to ssa's distribution (under its new or its old name)."""
    own = set(PACKAGES)
    for dist in distributions(path=[str(site)]):
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name in (OWN_DISTRIBUTION, OLD_NAME):
            own.add(Path(str(dist._path)).name)  # type: ignore[attr-defined]  # its .dist-info folder
            own.update(Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith(".."))
    return own


def _dependency_dirs() -> list[Path]:
    """The folders this interpreter imports installed packages from: every folder on ``sys.path`` but the standard
    library and the checkout's source roots (site-packages, and folders a ``.pth`` file or PYTHONPATH adds)."""
    stdlib = {Path(sysconfig.get_path("stdlib")).resolve()}  # the base interpreter's (platstdlib is the venv's lib/)
    sources = {ROOT.resolve(), (ROOT / "backends").resolve(), (ROOT / "plugins").resolve()}
    out: list[Path] = []
    for entry in sys.path:
        p = Path(entry or ".").resolve()
        if (p.is_dir() and p not in sources and p not in out and not any(p == s or s in p.parents for s in stdlib)):
            out.append(p)
    return out


def _lend_dependencies(deps: Path) -> None:
    """Links in ``deps`` to every top-level entry of the dependency folders (the first of a name wins, as on
    ``sys.path``) except ssa's own and ``.pth`` files."""
    deps.mkdir()
    for folder in _dependency_dirs():
        own = _ssas_own_entries(folder)
        for entry in folder.iterdir():
            name = entry.name
            if name in own or name.endswith(".pth") or name == "__pycache__" or (deps / name).exists():
                continue
            (deps / name).symlink_to(entry)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``python -m build`` (sdist, then the wheel from the unpacked sdist), without build isolation: the build
    backend (hatchling) is taken from this environment, so the test needs no network."""
    out = tmp_path_factory.mktemp("dist")
    proc = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)], ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("stepwise_sa-*-py3-none-any.whl")
    (sdist,) = out.glob("stepwise_sa-*.tar.gz")
    return wheel, sdist


@pytest.fixture(scope="module")
def venv(built: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheel, _ = built
    base = tmp_path_factory.mktemp("fresh")
    venv = base / "venv"
    proc = _run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], base)  # type: ignore[attr-defined]
    assert proc.returncode == 0, proc.stderr
    deps = base / "deps"
    _lend_dependencies(deps)
    (new_site,) = (venv / "lib").glob("python3*/site-packages")
    (new_site / "_lent_dependencies.pth").write_text(f"{deps}\n")
    env = _clean_env(venv)
    probe = _run([str(venv / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('ssa'))"],
                 base, env)
    assert probe.stdout.strip() == "None", f"ssa is importable before the wheel is installed: {probe.stdout}"
    proc = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", "--disable-pip-version-check",
                 "-q", str(wheel)], base, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return venv


def test_the_wheel_and_sdist_hold_the_five_packages_the_data_and_the_entry_points(built: tuple[Path, Path]) -> None:
    wheel, sdist = built
    names = zipfile.ZipFile(wheel).namelist()
    (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    assert {n.split("/")[0] for n in names} == {*PACKAGES, info}
    assert info.startswith("stepwise_sa-")
    for data in ("ssa/data/digits_cnn.pt", "ssa/data/digits.npz", "ssa/viz/explorer/static/explorer.min.js",
                 "ssa/py.typed"):
        assert data in names, data
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(f"{info}/METADATA").decode()
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert "\nName: stepwise-sa\n" in meta
    assert "[console_scripts]\nssa = ssa.cli:main" in entry_points
    assert "[ssa]" in entry_points and "torch = ssa_torch.plugin" in entry_points
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "ssa/__init__.py", "backends/ssa_torch/plugin.py"} <= members
    assert not any(m.startswith(("tests/", "frontend/explorer/node_modules")) for m in members)


def test_the_installed_ssa_comes_from_the_fresh_environment(venv: Path, tmp_path: Path) -> None:
    code = ("import importlib.metadata as m, ssa, ssa.plugins as p; "
            "print(ssa.__file__); print(m.version('stepwise-sa')); "
            "print(sorted(i.distribution for k in ('backend', 'rule') for i in ssa.registry().infos(k))[0])")
    proc = _run([str(venv / "bin" / "python"), "-c", code], tmp_path, _clean_env(venv))
    assert proc.returncode == 0, proc.stderr
    where, version, dist = proc.stdout.splitlines()
    assert Path(where).is_relative_to(venv), where  # not the checkout, not the environment the tests run in
    assert version == dist.split()[1]
    assert dist.split()[0] == OWN_DISTRIBUTION


def test_installed_ssa_analyses_and_explores_outside_the_checkout(venv: Path, tmp_path: Path) -> None:
    ssa = str(venv / "bin" / "ssa")
    env = _clean_env(venv)
    proc = _run([ssa, "analyse", "digits", "--images", "digits", "--target", "3", "--out", "graph.json"], tmp_path,
                env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("class 3 of digits: 183 images"), proc.stdout
    assert "graph:" in proc.stdout and "logits" in proc.stdout
    graph = json.loads((tmp_path / "graph.json").read_text())
    ids = {n["id"] for n in graph["nodes"]}
    assert "logits:3" in ids and len(ids) >= 4
    assert any(i.startswith("features.1:") for i in ids)  # the digits graph reaches the first layer (README)
    assert f"{len(ids)} nodes" in proc.stdout

    proc = _run([ssa, "explore", "graph.json", "--out", "explorer.html"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "explorer.html").read_text()
    assert '<script type="application/json" id="ssa-data">' in page
    data = json.loads(page.split('id="ssa-data">', 1)[1].split("</script>", 1)[0])
    assert {n["id"] for n in data["files"]["class-0.json"]["nodes"]} == ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explorer.html", "graph.json"]  # nothing else written
