"""ssa: step-wise sensitivity analysis of CNN classifiers.

>>> import ssa
>>> result = ssa.analyse("digits", "digits", target=3, branching=3)
>>> result.graph  # networkx.DiGraph of the neurons class 3 depends on
"""

from __future__ import annotations

from ssa.core import threads as _threads  # noqa: F401  # first: other processes' CPU use is measured from here

# isort: split
from ssa.api import analyse, analyse_many, load_model
from ssa.core.interfaces import Backend, ClosedForm, Network, Rule, Selector, Tap
from ssa.core.options import ModelSpec, RunOptions
from ssa.core.params import Param
from ssa.errors import (
                     InvalidInputError,
                     ModelLoadError,
                     OutputError,
                     PluginError,
                     SSAError,
                     SSAWarning,
                     StoreError,
                     UnsupportedModelError,
)
from ssa.hookspecs import hookimpl
from ssa.io.classmap import ClassMap, class_map
from ssa.io.graphs import read_graph, write_graph
from ssa.io.images import Preprocess, load_images
from ssa.plugins import get_plugin_manager, make_rule, make_selector, registry
from ssa.results import AnalysisResult, LayerSummary
from ssa.session import Session
from ssa.viz import notebook as _notebook  # noqa: F401  # registers the notebook views (_repr_html_)

__version__ = "0.1.0"

__all__ = [
    "analyse", "analyse_many", "Session", "ModelSpec", "RunOptions", "load_model",
    "AnalysisResult", "LayerSummary", "read_graph", "write_graph",
    "Preprocess", "load_images", "ClassMap", "class_map", "Backend", "Network", "Rule", "Selector", "ClosedForm",
    "Param", "Tap", "hookimpl",
    "get_plugin_manager", "registry", "make_rule", "make_selector", "SSAError", "InvalidInputError", "ModelLoadError",
    "PluginError", "StoreError", "UnsupportedModelError", "OutputError", "SSAWarning", "__version__",
]
