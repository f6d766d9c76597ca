"""The ``ssa`` command line.

Each built-in sub-command lives in ``ssa/cli/commands/<name>.py`` with ``add_parser(subparsers)``
and ``run(args) -> int``; plugins add theirs through the ``ssa_register_commands`` hook. Errors
from ssa (bad input) and from the environment (disk full, read-only file system, permissions)
become one line on stderr and exit code 2, never a traceback; ``SSA_DEBUG=1`` adds the traceback. Anything else is a bug
in ssa: one line starting ``ssa: internal error`` and exit code 1. See ``docs/errors.md``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import NoReturn, TextIO

import ssa
from ssa.core.threads import command_threads
from ssa.errors import SSAError, SSAWarning
from ssa.io.paths import ENVIRONMENT_ERRNOS, describe_os_error
from ssa.plugins import CommandRegistry, add_plugin_commands

__all__ = ["main", "build_parser", "CliError"]

COMMANDS = ("analyse", "check", "collect", "compare", "report", "figures", "evaluate", "explore", "serve", "plugins",
            "study")


#: exit code after stdout was closed by its reader (what a shell reports for a process killed by SIGPIPE)
BROKEN_PIPE_EXIT = 141


class CliError(SSAError, ValueError):
    """Bad command-line usage."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        raise CliError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ssa", description="Step-wise sensitivity analysis of CNN classifiers.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ssa.cli.commands.{name}").add_parser(sub)
    add_plugin_commands(CommandRegistry(sub))  # the plugins' own (ssa_register_commands)
    return parser


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """ssa's own warnings as one line on stderr; others as Python prints them."""
    if issubclass(category, SSAWarning):
        print(f"ssa: warning: {message}", file=sys.stderr if file is None else file)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


def _silence_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null so the interpreter's final flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (tests capture it)
        pass


def _debug() -> bool:
    return os.environ.get("SSA_DEBUG", "").strip() not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input or environment, 1 a bug in ssa).

    ``argv`` None: the process's own command line (the ``ssa`` script, ``python -m ssa``), which exits when this
    returns; then :func:`_before_exit` makes that exit cheaper. A caller that passes the arguments (tests, scripts,
    notebooks) keeps its process as it was.
    """
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:  # started with the stream closed (`ssa ... >&-`): Python sets it to None
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 - the process's stream, open until it exits
    with warnings.catch_warnings():
        warnings.simplefilter("always", SSAWarning)
        warnings.showwarning = _warning_line
        code = _main(argv)
    if argv is None:
        _before_exit()
    return code


def _before_exit() -> None:
    """Freeze the garbage collector's objects (``gc.freeze``) once the command is done and its files are written:
    while the interpreter shuts down it runs full collections that traverse every object still alive, and with
    torch loaded (hundreds of thousands of objects) that took 0.4-0.5 s of CPU per process, after the result was
    there. Frozen, the objects are still freed as the modules are torn down, and the process's exit returns their
    memory; only finalizers of objects in reference cycles do not run (ssa writes and closes its files itself;
    ``atexit`` handlers and ``weakref.finalize`` still run)."""
    gc.freeze()


def _main(argv: Sequence[str] | None) -> int:
    args: argparse.Namespace | None = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.version:
            print(f"ssa {ssa.__version__}")
            return 0
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        # before torch loads: --threads, OMP_NUM_THREADS or the default, and who chose it (for resumed runs)
        with command_threads(getattr(args, "threads", None)):
            _say_capped_threads(getattr(args, "threads", None))
            if getattr(args, "batch_size", 0) is None:  # --batch-size not given: by the device (32 CPU, 128 GPU)
                from ssa.cli.commands.common import batch_size

                args.batch_size = batch_size(args)
            code = int(args.run(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
        return code
    except SSAError as exc:
        if _debug():
            traceback.print_exc()
        print(f"ssa: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssa: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`ssa plugins | head -3`): stop quietly, as tools killed by SIGPIPE do
        _silence_stdout()
        return BROKEN_PIPE_EXIT
    except MemoryError:
        print("ssa: error: out of memory; lower --batch-size or use fewer images.", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if type(exc).__name__ != "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA), without importing torch
            return _internal(exc)
        print("ssa: error: the GPU ran out of memory; lower --batch-size or use --device cpu.", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            return _internal(exc)
        if _debug():
            traceback.print_exc()
        print(f"ssa: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: one line unless debugging
        return _internal(exc)
    except SystemExit as exc:
        if args is None:  # argparse's own exit (--help)
            raise
        return _stopped(exc)
    except BaseException as exc:  # noqa: BLE001 - GeneratorExit & co. from the model's or a plugin's code
        return _stopped(exc)


def _say_capped_threads(asked: int | None) -> None:
    """``--threads N`` above what torch takes (it caps ``OMP_NUM_THREADS`` at the cores it finds): one warning
    before any work, naming the count the run computes with and its outputs record; before, only the graphs' ``threads``
    attribute said so."""
    if asked is None:
        return
    import torch  # every command with --threads computes with torch

    used = torch.get_num_threads()
    if used != asked:
        mkl = os.environ.get("MKL_NUM_THREADS", "").strip()
        warnings.warn(f"--threads {asked}: torch computes with {used} thread(s) (no more than the cores it finds"
                      f"{f', and MKL_NUM_THREADS={mkl}' if mkl else ''}); the outputs record {used}.", SSAWarning,
                      stacklevel=2)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")).strip()
    return text or type(exc).__name__


def _stopped(exc: BaseException) -> int:
    """SystemExit (sys.exit in a model's forward) or another BaseException but Ctrl-C, raised by code ssa ran."""
    if _debug():
        traceback.print_exc()
    what = f"SystemExit({exc.code!r})" if isinstance(exc, SystemExit) else type(exc).__name__
    print(f"ssa: error: the model's code (or a plugin's) raised {what}, which ends the run without a result; model "
          "code must not call sys.exit() or exit() or raise SystemExit/GeneratorExit: remove that call "
          "(SSA_DEBUG=1 shows where).", file=sys.stderr)
    return 2


def _internal(exc: BaseException) -> int:
    if _debug():
        raise exc
    msg = str(exc).splitlines()[0] if str(exc) else ""
    print(f"ssa: internal error: {type(exc).__name__}: {msg} (set SSA_DEBUG=1 for a traceback and report it)",
          file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
