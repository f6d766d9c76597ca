"""The core of ssa: interfaces, parameters, the traversal, the graph schema and results.

Framework-agnostic: numpy and the Python array API only (torch is never imported here).
"""
