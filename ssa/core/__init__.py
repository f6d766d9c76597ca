"""The core of ssa: interfaces, parameters, the traversal and the graph schema.

Framework-agnostic: numpy and the Python array API only (torch is never imported here).
"""
