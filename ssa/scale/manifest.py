"""Running jobs into output folders: what is done, what to skip, one progress bar, rates per phase.

Every graphs folder is an ``--out-dir`` folder of ``ssa analyse`` (:class:`ssa.io.outdir.OutputDir`, command
``analyse``): its manifest ``.ssa-outputs.json`` lists the class graphs with their keys. :func:`execute`

1. keeps each output whose manifest key is the job's and whose file is intact (it parses and has the content hash
   recorded when it was written; a damaged one is removed and computed again, with a one-line notice) and
   sends only the rest;
2. announces the names it may write (a run killed half-way leaves them known as its own);
3. records each graph in its folder's manifest as soon as its job returns, and advances one progress bar
   over classes (rate and time left; only on a terminal);
4. at the end, removes the folder's graphs of earlier runs that this run did not produce (as ``--out-dir``
   always did), and says how many images per second each phase handled.

Before it sends the jobs, the kept graphs' thread counts (their ``threads`` attribute) go to
:func:`ssa.core.threads.resume_threads`: a command-line run whose count is the default computes the rest with the
kept graphs' count, so the outputs are those of an uninterrupted run; the counts are in :attr:`RunReport.threads`.

A re-run therefore skips finished classes, and a run stopped by a crash, SIGKILL or Ctrl-C goes on where it
stopped, with the same files as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ssa.core.threads import RunThreads, resume_threads
from ssa.errors import InvalidInputError
from ssa.io.outdir import ANALYSE_OUTPUTS, OutputDir
from ssa.io.progress import progress as stage
from ssa.scale.jobs import KEY_ATTR, ClassJob, JobResult, landed_attrs

__all__ = ["GraphFolders", "RunReport", "execute"]


class GraphFolders(contextlib.ExitStack):
    """The graphs folders of a run, each entered as an ``analyse`` :class:`OutputDir` (checked before any work)."""

    def __init__(self, folders: Iterable[str | Path], flag: str = "--out-dir") -> None:
        super().__init__()
        self.paths = [Path(f) for f in dict.fromkeys(str(f) for f in folders)]
        self.flag = flag
        self.dirs: dict[Path, OutputDir] = {}

    def __enter__(self) -> GraphFolders:
        super().__enter__()
        for p in self.paths:
            self.dirs[p.resolve()] = self.enter_context(OutputDir(p, "analyse", ANALYSE_OUTPUTS, flag=self.flag))
        return self

    def of(self, path: str | Path) -> OutputDir:
        return self.dirs[Path(path).parent.resolve()]


@dataclass
class RunReport:
    """A run's results and rates (images per second per worker, for each phase)."""

    results: list[JobResult] = field(default_factory=list)
    kept: int = 0  # outputs already there (recorded by an earlier run)
    jobs: int = 0
    seconds: float = 0.0
    runner: str = "local"
    workers: int = 1
    threads: RunThreads = field(default_factory=RunThreads)  # the thread counts of the kept and computed graphs

    @property
    def written(self) -> list[str]:
        return [p for r in self.results for p in r.written]

    def totals(self) -> dict[str, float]:
        t = {"decoded": 0, "decode_s": 0.0, "scored": 0, "select_s": 0.0, "analysed": 0, "analyse_s": 0.0}
        for r in self.results:
            t["decoded"] += r.n_decoded
            t["decode_s"] += r.decode_s
            t["scored"] += r.n_scored
            t["select_s"] += r.select_s
            t["analysed"] += r.n_images
            t["analyse_s"] += r.analyse_s
        return t

    def rates(self) -> dict[str, float | None]:
        """Images per second of decoding, selection (scoring for --min-confidence) and analysis, per worker;
        classes per second of the whole run (wall clock)."""
        t = self.totals()

        def rate(n: float, s: float) -> float | None:
            return n / s if s > 0 and n else None

        computed = sum(1 for r in self.results if r.written)
        return {"decode_images_per_s": rate(t["decoded"], t["decode_s"]),
                "select_images_per_s": rate(t["scored"], t["select_s"]),
                "analyse_images_per_s": rate(t["analysed"], t["analyse_s"]),
                "classes_per_s": rate(computed, self.seconds)}

    def rates_line(self) -> str:
        r = self.rates()
        computed = sum(1 for x in self.results if x.written)

        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.3g}"

        who = f"{self.workers} Ray worker{'s' if self.workers != 1 else ''}" if self.runner == "ray" else "this process"
        return (f"{computed} class job(s) in {self.seconds:.1f} s on {who} ({fmt(r['classes_per_s'])} classes/s); "
                f"images/s per worker: decoding {fmt(r['decode_images_per_s'])}, selection "
                f"{fmt(r['select_images_per_s'])}, analysis {fmt(r['analyse_images_per_s'])}")

    def as_dict(self) -> dict:
        return {"jobs": self.jobs, "computed": sum(1 for r in self.results if r.written), "kept_outputs": self.kept,
                "seconds": round(self.seconds, 3), "runner": self.runner, "workers": self.workers,
                **{k: (None if v is None else round(v, 3)) for k, v in self.rates().items()}, **self.totals(),
                "threads": self.threads.as_dict()}


def _threads(attrs: dict) -> int | None:
    """The thread count a graph records (its ``threads`` attribute), None when it records none."""
    value = attrs.get("threads")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def execute(jobs: Sequence[ClassJob], runner, folders: GraphFolders, *, progress: bool = True,
            desc: str = "classes", say: Callable[[str], None] | None = None) -> RunReport:
    """Run the jobs that are not done yet (see the module docstring); raise one line if some failed. ``say``: where
    an information line goes (the thread count a resumed command-line run takes over), None: nowhere."""
    report = RunReport(jobs=len(jobs), runner=getattr(runner, "name", "local"))
    todo: list[ClassJob] = []
    kept: set[Path] = set()
    threads: list[int | None] = []  # of the kept graphs, read when their integrity was checked
    for job in jobs:
        done = True
        for o in job.outputs:
            od = folders.of(o.path)
            if od.recorded(o.path.name) == o.key:
                od.keep(o.path.name)
                report.kept += 1
                kept.add(o.path)
                threads.append(_threads(od.graph_attrs(o.path.name)))
            else:
                od.drop_damaged(o.path.name)
                done = False
        if not done:
            todo.append(job)
    computing = 0
    for job in todo:
        for o in job.outputs:
            if o.path in kept:
                continue
            attrs = landed_attrs(o.path)
            if attrs.get(KEY_ATTR) == o.key:  # landed but not recorded (a run killed in between): the job keeps it
                threads.append(_threads(attrs))
            else:
                computing += 1
    report.threads = resume_threads(threads, computing=computing, workers=getattr(runner, "threads", None), say=say)
    planned: dict[Path, list[str]] = {}
    for job in todo:
        for o in job.outputs:
            planned.setdefault(o.path.parent.resolve(), []).append(o.path.name)
    for folder, names in planned.items():  # one manifest write per folder
        folders.dirs[folder].plan(names)
    failures: list[str] = []
    start = time.perf_counter()
    bar = stage(len(jobs), desc, "class", initial=len(jobs) - len(todo), show=progress)
    try:
        for result in runner.run(todo):
            for path in (*result.written, *result.skipped):
                folders.of(path).record(Path(path).name, result.keys[path])
            if result.error is not None:
                failures.append(f"class {result.target}: {result.error}")
            report.results.append(result)
            bar.update(1)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - start
        report.workers = len(getattr(runner, "actors", ())) or 1
    if failures:
        raise InvalidInputError(
            f"{len(failures)} of {len(jobs)} class job(s) failed (the others are written and kept; fix the cause and "
            f"run again to finish): {failures[0].rstrip('.')}" + (f"; and {len(failures) - 1} more" if len(failures) > 1
                                                                  else "") + ".")
    return report
