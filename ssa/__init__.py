"""ssa: step-wise sensitivity analysis of CNN classifiers.

>>> import ssa
>>> result = ssa.analyse("digits", "digits", target=3, branching=3)
>>> result.graph  # networkx.DiGraph of the neurons class 3 depends on
"""

from __future__ import annotations

from .api import Session, analyse, load_model
from .errors import (InvalidInputError, ModelLoadError, OutputError, PluginError, SSAError, SSAWarning, StoreError,
                     UnsupportedModelError)
from .graph import read_graph, write_graph
from .hookspecs import hookimpl
from .images import Preprocess, load_images
from .multi import analyse_many
from .interfaces import Backend, Network, Param, Rule, Selector, Tap
from .plugins import get_plugin_manager, make_rule, make_selector, registry
from .results import AnalysisResult, LayerSummary

__version__ = "0.1.0"

__all__ = [
    "analyse", "analyse_many", "Session", "load_model", "AnalysisResult", "LayerSummary", "read_graph", "write_graph", "Preprocess",
    "load_images", "Backend", "Network", "Rule", "Selector", "Param", "Tap", "hookimpl", "get_plugin_manager",
    "registry", "make_rule", "make_selector", "SSAError", "InvalidInputError", "ModelLoadError", "PluginError",
    "StoreError", "UnsupportedModelError", "OutputError", "SSAWarning", "__version__",
]
