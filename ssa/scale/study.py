"""``ssa study study.toml``: models x classes x (rules x selectors x branching factors), resumable, on Ray or not.

A study file (TOML; relative paths are relative to the file) says::

    out = "study-out"                 # the output folder (--out-dir overrides)
    targets = "all"                   # or [0, 3, 5]
    device = "cpu"                    # cuda: Ray workers declare a GPU each
    batch_size = 32                   # default: 32 on the CPU, 128 with cuda (as for `ssa analyse`)
    engine = "auto"

    [[model]]                         # one table per model
    name = "vgg16"                    # folder name (default: the file stem)
    spec = "vgg16.onnx"               # what `ssa analyse` accepts
    # backend, taps = [...], include_input, channel_axes = {tap = axis}, tokens, output_index, parity_tolerance

    [images]
    path = "imagenet/train"           # class sub-folders, a flat folder (+ labels), a .npy file, or "digits"
    labels = "labels.txt"             # flat folders and .npy files
    class_map = "imagenet"            # class sub-folders: which is which class (or a .json/.csv file)
    preprocess = "torchvision"        # a preset, a .json/.toml file, or an inline table (ssa/io/preprocess.py)
    decode_workers = 4                # image-decoding processes per worker
    decoder = "pil"                   # or "gpu" (torchvision's nvJPEG decoder on the job's CUDA device)

    [selection]                       # the paper: min_confidence = 0.99, max_images = 100
    grouping = "labels"               # or "prediction"
    min_confidence = 0.99
    max_images = 100

    [method]
    rules = ["gradient_x_activation", "gradient"]        # names, or {name = "...", <param> = value}
    selectors = ["mad", {name = "tukey", k = 1.5}]
    branching = [3, 5]
    # stop_at = "features.3"

    [outputs]
    compare = true                    # per (model, configuration): `ssa compare` figures and tables
    report = true                     # per (model, configuration): the `ssa report` HTML page

It writes ``OUT/<model>/<rule>-<selector>-b<B>[-<hash of non-default parameters>]/class-<c>.json`` (each such
folder is an ``ssa analyse --out-dir`` folder, with its manifest), ``.../compare/`` and ``.../report.html``, and
``OUT/study.json`` (the resolved study, the models' and image set's content hashes, every output, the rates and the
thread counts of the kept and computed graphs).
A re-run skips the graphs already written with the same key, and the comparisons and reports whose graphs did
not change; a run killed half-way (crash, SIGKILL, Ctrl-C) goes on where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssa.core.options import ModelSpec, RunOptions
from ssa.errors import InvalidInputError, OutputError, SSAError, SSAWarning
from ssa.io.atomic import atomic_write_bytes
from ssa.io.classmap import ClassMap, class_map
from ssa.io.datasets import DECODERS, FolderSource, open_source
from ssa.io.outdir import COMPARE_OUTPUTS, OutputDir
from ssa.io.preprocess import describe_preprocess, resolve_preprocess
from ssa.scale.jobs import Method, Selection
from ssa.scale.manifest import GraphFolders, RunReport, execute
from ssa.scale.plan import (
    build_jobs,
    check_selection,
    class_candidates,
    images_hash_of,
    load_driver_model,
    release_device_memory,
    resolve_classes,
)
from ssa.scale.runners import LocalRunner, RayRunner
from ssa.session import default_batch_size

__all__ = ["StudyModel", "Study", "read_study", "run_study", "StudyResult", "STUDY_OUTPUTS"]

#: what `ssa study` writes at the top of its folder (the rest is in per-model sub-folders)
STUDY_OUTPUTS = ("study.json",)

_TOP_KEYS = ("out", "targets", "device", "batch_size", "engine", "model", "images", "selection", "method", "outputs")


@dataclass(frozen=True)
class StudyModel:
    """One model of a study: its folder name, what :func:`ssa.load_model` is given, and the backend options."""

    name: str
    spec: Any
    backend: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """A parsed study file (see the module docstring)."""

    path: Path
    out: Path
    models: tuple[StudyModel, ...]
    images: Any
    labels: Any
    preprocess: Any
    selection: Selection
    targets: Any
    methods: tuple[Method, ...]
    device: str = "cpu"
    batch_size: int = 32
    engine: str = "auto"
    decode_workers: int = 0
    decoder: str = "pil"
    compare: bool = True
    report: bool = True

    def describe(self) -> dict[str, Any]:
        return {"file": str(self.path), "out": str(self.out), "targets": self.targets, "device": self.device,
                "batch_size": self.batch_size, "engine": self.engine,
                "models": [{"name": m.name, "spec": str(m.spec), "backend": m.backend, "options": dict(m.options)}
                           for m in self.models],
                "images": {"path": str(self.images), **_describe_labels(self.labels),
                           "preprocess": describe_preprocess(self.preprocess), "decoder": self.decoder,
                           "decode_workers": self.decode_workers},
                "selection": self.selection.as_dict(), "methods": [m.as_dict() | {"label": m.label()}
                                                                   for m in self.methods]}


def _err(path: Path, msg: str) -> InvalidInputError:
    return InvalidInputError(f"study file {path.name!r}: {msg}")


def _table(data: Mapping[str, Any], key: str, path: Path, allowed: Sequence[str]) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise _err(path, f"[{key}] must be a table, got {type(value).__name__}.")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise _err(path, f"unknown key {unknown[0]!r} in [{key}]; known keys: {', '.join(allowed)}.")
    return value


def _list(value: Any, what: str, path: Path) -> list:
    if value is None:
        return []
    out = value if isinstance(value, list) else [value]
    if not out:
        raise _err(path, f"{what} is empty; name at least one.")
    return out


def _named(item: Any, what: str, path: Path) -> tuple[str, dict[str, Any]]:
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and isinstance(item.get("name"), str):
        return item["name"], {k: v for k, v in item.items() if k != "name"}
    raise _err(path, f"each of {what} must be a name or a table with a name, got {item!r}.")


def _relative(base: Path, value: Any) -> Any:
    if not isinstance(value, str) or value in ("digits",):
        return value
    head, sep, attr = value.rpartition(":") if ".py:" in value else (value, "", "")
    p = Path(head).expanduser()
    if not p.is_absolute() and (base / p).exists():
        return str(base / p) + (sep + attr if sep else "")
    return value


def read_study(path: str | os.PathLike, *, out_dir: str | os.PathLike | None = None) -> Study:
    """Parse and check a study file (one-line errors naming the file and the key); nothing is loaded yet."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10: the tomli dependency
        import tomli as tomllib

    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"study file {str(p)!r} does not exist; pass a .toml file (docs/scale.md).")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _err(p, f"cannot parse it ({str(exc).splitlines()[0]}); fix its TOML syntax.") from None
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise _err(p, f"unknown key {unknown[0]!r}; known keys: {', '.join(_TOP_KEYS)}.")
    base = p.resolve().parent
    out = Path(out_dir) if out_dir is not None else data.get("out")
    if out is None:
        raise _err(p, "no output folder; set out = \"DIR\" in the file or pass --out-dir DIR.")
    if out_dir is None and not (isinstance(out, str) and out.strip()):
        raise _err(p, f"out must be a folder name in quotes (out = \"DIR\"), got {out!r}.")
    out = Path(out) if out_dir is not None else base / Path(out)

    models_raw = data.get("model")
    if isinstance(models_raw, dict):
        models_raw = [models_raw]
    if not models_raw or not isinstance(models_raw, list):
        raise _err(p, "no model; add a [[model]] table with spec = \"model.onnx\" (or any `ssa analyse` MODEL).")
    models = []
    model_keys = ("name", "spec", "backend", "taps", "include_input", "channel_axes", "tokens", "output_index",
                  "parity_tolerance")
    for m in models_raw:
        if not isinstance(m, dict) or "spec" not in m:
            raise _err(p, "each [[model]] needs spec = \"...\" (what `ssa analyse` takes as MODEL).")
        bad = sorted(set(m) - set(model_keys))
        if bad:
            raise _err(p, f"unknown key {bad[0]!r} in [[model]]; known keys: {', '.join(model_keys)}.")
        spec = _relative(base, m["spec"])
        name = str(m.get("name") or Path(str(m["spec"]).split(":")[0]).stem)
        if not name or any(ch in name for ch in "/\\") or name.startswith("."):
            raise _err(p, f"model name {name!r} must be a plain folder name; set name = \"...\".")
        options = {k: m[k] for k in model_keys[3:] if k in m}
        models.append(StudyModel(name, spec, m.get("backend"), options))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise _err(p, f"two models are named {next(n for n in names if names.count(n) > 1)!r}; give each a name.")

    im = _table(data, "images", p, ("path", "labels", "class_map", "preprocess", "decode_workers", "decoder"))
    if "path" not in im:
        raise _err(p, "[images] needs path = \"...\" (class sub-folders, a flat folder with labels, .npy or digits).")
    images = _relative(base, im["path"])
    labels = _relative(base, im.get("labels"))
    if "class_map" in im:
        if labels is not None:
            raise _err(p, "[images] labels and class_map cannot be combined: labels are for flat folders and .npy "
                          "files, class_map for class sub-folders; drop one.")
        cm = im["class_map"]
        labels = class_map(cm if not isinstance(cm, str) or cm == "imagenet" else _relative(base, cm))
    pre_spec = im.get("preprocess")
    pre = resolve_preprocess(_relative(base, pre_spec) if isinstance(pre_spec, str) else pre_spec)
    decode_workers = im.get("decode_workers", 0)
    decoder = str(im.get("decoder", "pil"))
    if decoder not in DECODERS:
        raise _err(p, f"[images] decoder must be one of {', '.join(DECODERS)}, got {decoder!r}.")
    if isinstance(decode_workers, bool) or not isinstance(decode_workers, int) or decode_workers < 0:
        raise _err(p, f"[images] decode_workers must be an integer >= 0, got {decode_workers!r}.")

    sel = _table(data, "selection", p, ("grouping", "min_confidence", "max_images"))
    selection = check_selection(Selection(str(sel.get("grouping", "labels")), sel.get("min_confidence"),
                                          sel.get("max_images")))

    meth = _table(data, "method", p, ("rules", "selectors", "branching", "stop_at"))
    from ssa.core.defaults import resolve_method

    d_rule, d_rule_params, d_sel, d_sel_params = resolve_method(None, None, None, None, None)
    rules = [_named(r, "rules", p) for r in _list(meth.get("rules"), "rules", p)] or [(d_rule, dict(d_rule_params))]
    selectors = ([_named(s, "selectors", p) for s in _list(meth.get("selectors"), "selectors", p)]
                 or [(d_sel, dict(d_sel_params))])
    branching = _list(meth.get("branching", 3), "branching", p)
    methods = []
    for rname, rparams in rules:
        for sname, sparams in selectors:
            for b in branching:
                if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                    raise _err(p, f"[method] branching must hold integers >= 1, got {b!r}.")
                methods.append(Method.resolved(rname, rparams, sname, sparams, b, meth.get("stop_at")))
    labels_ = [m.label() for m in methods]
    if len(set(labels_)) != len(labels_):
        raise _err(p, "[method] lists the same configuration twice; list each rule, selector and branching once.")

    outputs = _table(data, "outputs", p, ("compare", "report"))
    for key, value in outputs.items():
        if not isinstance(value, bool):  # compare = "no" would be true
            raise _err(p, f"[outputs] {key} must be true or false, got {value!r}.")
    targets = data.get("targets", "all")
    if not (targets == "all" or (isinstance(targets, list) and all(isinstance(t, int) for t in targets))):
        raise _err(p, f"targets must be \"all\" or a list of class indices, got {targets!r}.")
    try:  # checked as RunOptions checks them
        run = RunOptions(batch_size=data.get("batch_size"), engine=str(data.get("engine", "auto")))
    except InvalidInputError as exc:
        raise _err(p, str(exc).replace(" Pass --batch-size 1 or more.", "")) from None
    device = str(data.get("device", "cpu"))
    batch_size = default_batch_size(device) if run.batch_size is None else run.batch_size  # as for ssa analyse
    return Study(p, out, tuple(models), images, labels, pre, selection, targets, tuple(methods),
                 device, batch_size, run.engine, decode_workers, decoder,
                 bool(outputs.get("compare", True)), bool(outputs.get("report", True)))


@dataclass
class StudyResult:
    """What a study run did: the run report, and per (model, configuration) its folder and extra outputs."""

    run: RunReport
    folders: list[dict[str, Any]] = field(default_factory=list)
    summary: Path | None = None


def _digest(values: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(values).encode()).hexdigest()


def _comparison(graph_files: list[Path], out: Path, title: str) -> list[Path]:
    """`ssa compare --out-dir out` on the graph files, through its Python functions."""
    from ssa.analysis.compare import compare, identical_graphs_quietly, load_graphs
    from ssa.io.graphs import write_graph
    from ssa.viz.figures import plot_clustermap, plot_dendrogram, plot_graph, save_figure

    graphs, names = load_graphs(graph_files)
    cmp = compare(graphs, names=[f.name for f in graph_files])
    shared = cmp.shared(None)
    with OutputDir(out, "compare", COMPARE_OUTPUTS, all_or_nothing=True):
        with identical_graphs_quietly():
            written = [save_figure(plot_clustermap(cmp), out / "clustermap.png"),
                       save_figure(plot_clustermap(cmp, kind="nodes"), out / "clustermap-nodes.png"),
                       save_figure(plot_dendrogram(cmp), out / "dendrogram.png")]
        written += cmp.write_tables(out)
        written.append(write_graph(shared, out / "shared.json"))
        if shared.number_of_nodes():
            fig = plot_graph(shared, title=f"shared sub-graph of {title}")
            written.append(save_figure(fig, out / "shared.png"))
    return written


def _report(graph_files: list[Path], path: Path, title: str) -> Path:
    from ssa.analysis.compare import load_graphs
    from ssa.viz.report import write_report

    graphs, names = load_graphs(graph_files)
    return write_report(path, graphs, names, title=title)


def _describe_labels(labels: Any) -> dict[str, Any]:
    if isinstance(labels, ClassMap):
        return {"labels": None, "class_map": labels.source}
    return {"labels": None if labels is None else str(labels)}


def run_study(study: Study, runner: LocalRunner | RayRunner | None = None, *, progress: bool = False,
              out=None) -> StudyResult:
    """Run a study (see the module docstring): plan every model's class jobs, run those not done, then the
    comparisons and reports that are missing or out of date, and ``study.json``. ``out``: a text stream for
    progress lines (default: none)."""
    runner = runner or LocalRunner()
    say = (lambda text: print(text, file=out)) if out is not None else (lambda text: None)
    with OutputDir(study.out, "study", STUDY_OUTPUTS) as top:
        source = open_source(study.images, labels=study.labels, preprocess=study.preprocess)
        if source.class_map:
            top.remember("class_map", dict(source.class_map))  # the labels the run used, in the manifest
        if study.decoder != "pil":
            if not isinstance(source, FolderSource):
                raise InvalidInputError(f"study file {study.path.name!r}: decoder {study.decoder!r} applies to "
                                        "folders of image files; drop it.")
            source = source.with_decoder(study.decoder, study.device)
        folders_of: dict[tuple[str, str], Path] = {}
        for m in study.models:
            for meth in study.methods:
                folders_of[(m.name, meth.label())] = study.out / m.name / meth.label()
        with GraphFolders(folders_of.values(), flag="--out-dir") as folders:
            jobs, hashes = [], {}
            images_hash = None
            for m in study.models:
                model = ModelSpec.from_keywords(m.spec, backend=m.backend, device=study.device, **m.options)
                spec, network = load_driver_model(model, source, images_spec=study.images,
                                                  preprocess=study.preprocess)
                hashes[m.name] = spec.model_hash
                classes = resolve_classes(network, study.targets, study.methods[0].stop_at, source, study.selection)
                candidates, pred_hash = class_candidates(network, source, classes, study.selection, memo=top,
                                                         model_hash=spec.model_hash, batch_size=study.batch_size,
                                                         workers=study.decode_workers, progress=progress)
                del network  # the driver keeps no model; workers load their own, once each
                release_device_memory(study.device)
                if pred_hash is not None:
                    images_hash = pred_hash
                elif images_hash is None:
                    images_hash = images_hash_of(source, top, workers=study.decode_workers, progress=progress)
                methods = [(meth, folders_of[(m.name, meth.label())]) for meth in study.methods]
                jobs += build_jobs(spec, candidates, methods, study.selection, images_hash,
                                   batch_size=study.batch_size, engine=study.engine,
                                   decode_workers=study.decode_workers)
            try:
                report = execute(jobs, runner, folders, progress=progress, desc="study", say=say)
            finally:
                runner.close()
            keys_of: dict[Path, dict[str, str]] = {}
            for job in jobs:
                for o in job.outputs:
                    keys_of.setdefault(o.path.parent, {})[o.path.name] = o.key
        result = StudyResult(report)
        for (mname, label), folder in folders_of.items():
            keys = keys_of.get(folder.resolve(), {})
            files = sorted((folder / n for n in keys), key=lambda f: int(f.stem.split("-")[1]))
            entry: dict[str, Any] = {"model": mname, "method": label, "folder": str(folder), "classes": len(files),
                                     "graphs_key": _digest([keys[f.name] for f in files])}
            title = f"{mname}, {label}"
            for what, enabled in (("compare", study.compare), ("report", study.report)):
                if not enabled:
                    continue
                target = folder / "compare" if what == "compare" else folder / "report.html"
                memo_key = f"{what}:{mname}/{label}"
                if top.memo(memo_key) == entry["graphs_key"] and target.exists():
                    entry[what] = str(target)
                    continue
                if len(files) < 2 and what == "compare":
                    entry[what] = "skipped: one class"
                    continue
                try:
                    if what == "compare":
                        _comparison(files, target, title)
                    else:
                        _report(files, target, f"SSA study: {title}")
                except OutputError:  # a full disk, a read-only folder: the environment, not these graphs
                    raise
                except SSAError as exc:
                    warnings.warn(f"{title}: no {what} ({str(exc).rstrip('.')})", SSAWarning, stacklevel=2)
                    entry[what] = f"skipped: {exc}"
                    continue
                top.remember(memo_key, entry["graphs_key"])
                entry[what] = str(target)
                say(f"wrote {target}")
            result.folders.append(entry)
        summary = {"version": 1, "study": study.describe(), "model_hashes": hashes, "images_hash": images_hash,
                   "outputs": result.folders, "run": report.as_dict()}
        result.summary = study.out / "study.json"
        atomic_write_bytes(result.summary, json.dumps(summary, indent=1, sort_keys=True, default=str).encode())
    return result

