"""What dependency graphs say together, and how good they are (``ssa compare``, ``ssa evaluate``).

* :mod:`ssa.analysis.compare`: clustering and comparison of class graphs (bag-of-nodes, Ward, Jaccard per layer,
  shared sub-graph, tables);
* :mod:`ssa.analysis.grouping`: grouping images by class (labels, predictions, confidence thresholds);
* :mod:`ssa.analysis.ablation`: the zero, mean and resample ablations, their metrics and bootstrap intervals;
* :mod:`ssa.analysis.faithfulness`: necessity and sufficiency of a graph beside random sets of the same size;
* :mod:`ssa.analysis.split`: held-out images (build the graph on one part, score it on the other);
* :mod:`ssa.analysis.curves`: faithfulness over circuit size (b and selector parameter sweeps, CPR/CMD areas);
* :mod:`ssa.analysis.stability`: bootstrap resamples of a class's images;
* :mod:`ssa.analysis.strategies`: the rules x selectors x ablations comparison table of ``ssa evaluate``.

Functions that need the model take a :class:`ssa.Session` (the single owner of model loading and statistics);
graphs are read through :class:`ssa.core.graph.DependencyGraph`. See ``docs/analysis.md``.
"""
