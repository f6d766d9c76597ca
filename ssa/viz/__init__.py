"""Interactive views of dependency graphs (``ssa explore``: :mod:`ssa.viz.explorer`)."""
