"""The paper's figures (method doc, section 7), as matplotlib figures.

Every ``plot_*`` function returns a :class:`matplotlib.figure.Figure` on matplotlib's Agg canvas,
made without pyplot (no global state: safe in notebooks and threads). :func:`save_figure` writes
one atomically (PNG or SVG by the suffix); :func:`figure_bytes` renders one in memory (the report
embeds those bytes). The maps over the input image (saliency, activation maps) need a network with
the :class:`~ssa.core.capabilities.SupportsInputMaps` capability; nothing here runs a backend's
internals.

==========================  ====================  =============================================================
paper figure                module                function
==========================  ====================  =============================================================
Fig. 2a outlier frequency   :mod:`.frequency`     :func:`plot_frequency` (+ :func:`power_law_fit`)
Fig. 2b relevance rows      :mod:`.heatmap`       :func:`plot_relevance_heatmap` (rows: :func:`relevance_rows`)
Fig. 3  dependency graph    :mod:`.graph`         :func:`plot_graph`
Fig. 4a clustermap          :mod:`.clustermap`    :func:`plot_clustermap`, :func:`plot_dendrogram`
Fig. 4b,c saliency          :mod:`.saliency`      :func:`plot_saliency` (maps: :func:`saliency`)
Fig. 5  activation maps     :mod:`.activations`   :func:`plot_activation_grid` (maps: :func:`activation_maps`)
all figures of a class      :mod:`.classes`       :func:`class_figures`, :func:`write_class_figures` (ssa figures)
==========================  ====================  =============================================================

:mod:`.common` holds the canvas, the colours, :func:`save_figure` and the image helpers.
"""

from __future__ import annotations

from .activations import activation_maps, plot_activation_grid
from .classes import ClassFigure, class_figures, default_map_neuron, iter_class_figures, write_class_figures
from .clustermap import plot_clustermap, plot_dendrogram
from .common import FORMATS, figure_bytes, figure_format, parse_node, save_figure
from .frequency import plot_frequency, power_law_fit, step_counts
from .graph import plot_graph
from .heatmap import outlier_counts, plot_relevance_heatmap, relevance_rows
from .saliency import plot_saliency, saliency

__all__ = ["FORMATS", "figure_bytes", "figure_format", "save_figure", "parse_node", "power_law_fit", "step_counts",
           "plot_frequency", "relevance_rows", "outlier_counts", "plot_relevance_heatmap", "plot_graph",
           "saliency", "plot_saliency", "activation_maps", "plot_activation_grid", "plot_dendrogram",
           "plot_clustermap", "ClassFigure", "class_figures", "iter_class_figures", "write_class_figures",
           "default_map_neuron"]
