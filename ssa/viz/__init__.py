"""The views: the paper's figures (:mod:`ssa.viz.figures`), the HTML report (:mod:`ssa.viz.report`) and the
interactive explorer (:mod:`ssa.viz.explorer`). They read graphs through :class:`ssa.core.graph.DependencyGraph`
and reach a network only through :class:`ssa.core.capabilities.SupportsInputMaps`; see docs/viz.md."""
