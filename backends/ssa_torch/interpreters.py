"""The base of every fx interpreter that runs a model's own code: errors name the node in one line.

:class:`ModelCodeInterpreter` is shared by the cut-semantics run (:mod:`ssa_torch.network`), the
statistics pass (:mod:`ssa_torch.closed_form`) and ablation (:mod:`ssa_torch.ablation`); it lives in
its own module so that those import it without importing each other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from ssa.errors import InvalidInputError, SSAError

__all__ = ["ModelCodeInterpreter", "model_raised"]


def model_raised(n: fx.Node, exc: Exception, batch: int) -> InvalidInputError:
    """The one-line error for an exception raised by the model's code at node ``n`` on a batch of ``batch`` images."""
    text = str(exc).strip().splitlines()
    return InvalidInputError(
        f"the model raised {type(exc).__name__} at node {n.name!r} "
        f"({n.target if isinstance(n.target, str) else getattr(n.target, '__name__', n.op)}) on a batch of {batch} "
        f"image(s){': ' + text[0][:160] if text else ''}; fix the model code, or check the images it gets.")


class ModelCodeInterpreter(fx.Interpreter):
    """An interpreter whose errors inside the model's own modules and functions name the node (one line).

    Out-of-memory errors pass through unchanged (the command line says to lower --batch-size).
    Set ``args_batch`` to the batch size before :meth:`run` so that the message can say it.
    """

    args_batch: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_traceback = False  # fx would append the node and a stack trace to the message: keep it one line

    def run_node(self, n: fx.Node) -> Any:
        try:
            return super().run_node(n)
        except (SSAError, MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - the model's code
            if n.op not in ("call_module", "call_function", "call_method"):
                raise
            raise model_raised(n, exc, int(self.args_batch)) from exc


def node_values(gm: fx.GraphModule, x: Any, names: set[str] | None = None) -> dict[str, Any]:
    """The value of every node of ``gm`` on ``x`` (or of those in ``names``): one forward pass, no autograd."""
    env: dict[str, Any] = {}

    class _Values(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if names is None or n.name in names:
                env[n.name] = out
            return out

    with torch.no_grad():
        _Values(gm).run(x)
    return env
