"""Exceptions raised by ssa.

Every error derives from :class:`SSAError` and from the matching built-in, so
callers can catch either. Messages name the parameter, what was expected, what
was received and how to fix it; the CLI prints them as one line on stderr and
exits with code 2.
"""

from __future__ import annotations

__all__ = [
    "SSAError",
    "InvalidInputError",
    "ModelLoadError",
    "UnsupportedModelError",
    "PluginError",
    "StoreError",
    "OutputError",
    "SSAWarning",
]


class SSAError(Exception):
    """Root of every error ssa raises on purpose."""


class InvalidInputError(SSAError, ValueError):
    """A parameter or an input (images, target, branching, ...) is not valid."""


class ModelLoadError(SSAError, OSError):
    """A model could not be found, read or built."""


class UnsupportedModelError(SSAError, TypeError):
    """A model was loaded but cannot be analysed as it is (unsupported op, several outputs, ...)."""


class PluginError(SSAError, LookupError):
    """An unknown or badly registered backend, rule or selector."""


class StoreError(SSAError, OSError):
    """A statistics store is missing, corrupt or does not match the model and images."""


class OutputError(SSAError, OSError):
    """An output file or folder cannot be written (it is a folder / a file, read-only, disk full, ...)."""


class SSAWarning(UserWarning):
    """Something the user should know, which does not stop the run (the CLI prints one line on stderr)."""
