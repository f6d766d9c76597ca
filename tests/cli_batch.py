"""Run many ``ssa`` command lines as real processes, fast: one Python process imports ssa once, then
forks one child per command line. Each child runs the installed console script (``.venv/bin/ssa``,
through ``runpy``) with its own argv, working folder and environment, with stdout and stderr
redirected at the file-descriptor level, and exits with the script's exit status; an exception that
escapes is printed by the interpreter's rules (traceback, exit status 1). So every case sees what a
user's shell would: the exit code, the bytes on stdout and stderr.

    python tests/cli_batch.py SCRIPT CASES.json RESULTS.json

CASES.json: ``[{"id", "argv", "cwd", "env" (added to the environment), "unset" (names removed from it),
"watch" (a folder)}]``. The parent runs the digits model once on one thread before forking (see
``_warm_up``), so a child costs about what the command itself costs.
RESULTS.json: ``[{"id", "code", "stdout", "stderr", "changed", "seconds"}]``, where ``changed`` lists the files
under ``watch`` that the command created, changed or removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np


def _tree(folder: str | None) -> dict[str, str]:
    if not folder:
        return {}
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(folder))] = hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
    return out


def _child(script: str, case: dict, out_path: str, err_path: str) -> None:
    code = 1
    try:
        os.chdir(case["cwd"])
        for name in case.get("unset", []):
            os.environ.pop(name, None)
        os.environ.update(case.get("env", {}))
        out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.argv = [script, *case["argv"]]
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - what the interpreter would do with an escaping exception
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _warm_up() -> None:
    """Import ssa and its plugins, and run the digits model once on one thread, so that every child starts with
    torch's kernels loaded (a fresh process pays that on its first op). One thread: no OpenMP worker threads
    exist when the process forks."""
    import torch

    torch.set_num_threads(1)
    import ssa.cli  # noqa: F401
    from ssa.api import load_model
    from ssa.io.images import load_images
    from ssa.plugins import registry

    registry()
    x, _ = load_images("digits")
    net = load_model("digits")
    net.prepare(x[:2])
    net.collect(x[:2], ["gradient", "gradient_x_activation"])
    from ssa.errors import InvalidInputError

    try:  # a model failing on its input imports much of torch (sympy, dynamo) on the way: once, here
        load_model("digits").prepare(x[:1, :, :4])
    except InvalidInputError:
        pass
    import PIL.Image  # noqa: F401
    import torch.export  # noqa: F401

    import ssa.analysis.compare  # noqa: F401
    import ssa.analysis.strategies  # noqa: F401
    import ssa.viz.figures  # noqa: F401
    import ssa.viz.report  # noqa: F401
    from ssa.analysis.compare import ward_linkage

    ward_linkage(np.eye(2))


def run(script: str, cases: list[dict]) -> list[dict]:
    _warm_up()
    results = []
    with tempfile.TemporaryDirectory(prefix="ssa-batch-") as tmp:
        for i, case in enumerate(cases):
            before = _tree(case.get("watch"))
            out_path, err_path = os.path.join(tmp, f"{i}.out"), os.path.join(tmp, f"{i}.err")
            sys.stdout.flush()
            sys.stderr.flush()
            start = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                _child(script, case, out_path, err_path)
            _, status = os.waitpid(pid, 0)
            seconds = time.perf_counter() - start
            code = os.waitstatus_to_exitcode(status)
            after = _tree(case.get("watch"))
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            results.append({"id": case["id"], "code": code, "changed": changed, "seconds": seconds,
                            "stdout": Path(out_path).read_text(errors="replace"),
                            "stderr": Path(err_path).read_text(errors="replace")})
    return results


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    script, cases_file, results_file = sys.argv[1:4]
    Path(results_file).write_text(json.dumps(run(script, json.loads(Path(cases_file).read_text())), indent=1))
