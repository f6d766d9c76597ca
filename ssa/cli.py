"""The ``ssa`` command line.

Each sub-command lives in ``ssa/commands/<name>.py`` with ``add_parser(subparsers)``
and ``run(args) -> int``. Errors from ssa (bad input) become one line on stderr
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from typing import Sequence

from .errors import SSAError

__all__ = ["main", "build_parser", "CliError"]

COMMANDS = ("analyse", "check", "collect", "compare", "report", "figures", "evaluate", "explore", "serve", "plugins")


class CliError(SSAError, ValueError):
    """Bad command-line usage."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise CliError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ssa", description="Step-wise sensitivity analysis of CNN classifiers.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    for name in COMMANDS:
        modname = f"ssa.commands.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        importlib.import_module(modname).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.version:
            from . import __version__

            print(f"ssa {__version__}")
            return 0
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        return int(args.run(args) or 0)
    except SSAError as exc:
        print(f"ssa: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssa: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("ssa: error: out of memory; lower --batch-size.", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: one line unless debugging
        if os.environ.get("SSA_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        print(f"ssa: internal error: {type(exc).__name__}: {msg} (set SSA_DEBUG=1 for a traceback and report it)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
