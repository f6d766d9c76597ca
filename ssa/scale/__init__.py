"""Studies at scale: per-class jobs, resumable output folders, scale-out on Ray (``docs/scale.md``).

* :mod:`ssa.scale.jobs`: a class job and :func:`~ssa.scale.jobs.run_class_job`, the one function that turns a
  job into graphs;
* :mod:`ssa.scale.plan`: the driver's checks and plan (model identity, image-set hash, candidates per class);
* :mod:`ssa.scale.manifest`: running jobs into ``--out-dir`` folders (skip what is done, one progress bar, rates);
* :mod:`ssa.scale.runners`: in this process, or on Ray (``pip install 'stepwise-sa[ray]'``);
* :mod:`ssa.scale.study`: ``ssa study study.toml``.

:func:`analyse_to_folder` is ``ssa analyse --targets ... --out-dir DIR`` as a function.
"""

from __future__ import annotations

from ssa.scale.api import analyse_to_folder
from ssa.scale.jobs import ClassJob, JobResult, Method, Selection, Worker, run_class_job
from ssa.scale.manifest import RunReport
from ssa.scale.runners import LocalRunner, RayRunner, make_runner

__all__ = ["analyse_to_folder", "ClassJob", "JobResult", "Method", "Selection", "Worker", "run_class_job", "RunReport",
           "LocalRunner", "RayRunner", "make_runner"]
