"""What dependency graphs say together, and how good they are (``ssa compare``, ``ssa evaluate``).

* :mod:`ssa.analysis.compare`: clustering and comparison of class graphs (bag-of-nodes, Ward, Jaccard per layer,
  shared sub-graph, tables);
* :mod:`ssa.analysis.grouping`: grouping images by class (labels, predictions, confidence thresholds);
* :mod:`ssa.analysis.faithfulness`: ablating a graph's neurons against random sets and keep-only;
* :mod:`ssa.analysis.stability`: bootstrap resamples of a class's images;
* :mod:`ssa.analysis.strategies`: the rules x selectors comparison table of ``ssa evaluate``.

Functions that need the model take a :class:`ssa.Session` (the single owner of model loading and statistics);
graphs are read through :class:`ssa.core.graph.DependencyGraph`. See ``docs/analysis.md``.
"""
