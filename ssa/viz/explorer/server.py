"""``ssa serve``: a local HTTP server for an explorer folder (bound to 127.0.0.1 only)."""

from __future__ import annotations

import errno
import functools
import os
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ssa.errors import InvalidInputError

__all__ = ["HOST", "check_explorer_dir", "make_server"]

HOST = "127.0.0.1"


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".json": "application/json", ".js": "text/javascript"}

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: the command prints its URL once


def check_explorer_dir(directory: str | os.PathLike) -> Path:
    """The folder, if it holds an explorer written by ``ssa explore --out DIR/``; else one clear error."""
    d = Path(directory)
    if not d.is_dir():
        raise InvalidInputError(f"{str(d)!r} is not a folder; pass the folder `ssa explore ... --out DIR/` wrote.")
    if not (d / "index.html").is_file() or not (d / "data" / "index.json").is_file():
        raise InvalidInputError(f"{str(d)!r} holds no explorer (index.html and data/index.json); write one with "
                                "`ssa explore GRAPHS... --out DIR/`.")
    return d


def make_server(directory: str | os.PathLike, port: int = 8000) -> ThreadingHTTPServer:
    """A server of ``directory`` on 127.0.0.1:``port`` (0: any free port), not yet serving."""
    d = check_explorer_dir(directory)
    if not 0 <= int(port) <= 65535:
        raise InvalidInputError(f"--port must be in [0, 65535], got {port}.")
    handler = functools.partial(_Handler, directory=str(d.resolve()))
    try:
        server = ThreadingHTTPServer((HOST, int(port)), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InvalidInputError(f"port {port} on {HOST} is in use; pass another --port, or --port 0 for any "
                                    "free port.") from None
        raise InvalidInputError(f"cannot listen on {HOST}:{port} ({exc.strerror}); pass another --port.") from None
    server.daemon_threads = True
    return server
