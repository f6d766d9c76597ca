"""Sub-commands of the ``ssa`` CLI (one module each)."""
