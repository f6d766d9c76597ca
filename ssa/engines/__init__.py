"""Where relevance comes from: exact autograd, the closed form from per-image statistics, and the
statistics store on disk. The traversal (:mod:`ssa.core.traversal`) reads any of them."""
