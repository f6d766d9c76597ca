"""``ssa serve``: a local HTTP server for an explorer folder, locked down (see docs/explorer.md, "Security").

- binds 127.0.0.1 unless ``host`` says otherwise;
- answers only requests whose ``Host`` header names this server (127.0.0.1, localhost, [::1] or the
  ``host`` it was given, with its port if any): a page on another site that re-points its own name at
  127.0.0.1 (DNS rebinding) gets 421 Misdirected Request, never the data;
- lists no folders (403) and serves no file whose real path (symbolic links resolved) lies outside the
  served folder (403); ``..`` never leaves it either.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
import urllib.parse
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ssa.errors import InvalidInputError

__all__ = ["HOST", "LOOPBACK_NAMES", "check_explorer_dir", "is_loopback", "make_server", "url_of"]

HOST = "127.0.0.1"
#: the names a browser on this machine uses for a server bound to the loopback address
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def _inside(path: str, root: str) -> bool:
    """Whether ``path`` (symbolic links resolved) is ``root`` or lies below it; ``root`` is resolved."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".json": "application/json", ".js": "text/javascript"}
    allowed_hosts: frozenset[str] = LOOPBACK_NAMES

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: the command prints its URL once

    def _host_ok(self) -> bool:
        """The ``Host`` header names this server: an allowed name and, if a port is given, our port."""
        value = self.headers.get("Host")
        if not value:
            return False
        try:
            parts = urllib.parse.urlsplit("//" + value.strip())
            port = parts.port
        except ValueError:
            return False
        if parts.hostname is None or parts.hostname not in self.allowed_hosts:
            return False
        return port is None or port == self.server.server_address[1]  # type: ignore[index]  # an (host, port, ...) tuple

    def send_head(self):  # the base class's signature
        if not self._host_ok():
            self.send_error(HTTPStatus.MISDIRECTED_REQUEST,
                            "Host header does not name this server",
                            "ssa serve answers only requests for 127.0.0.1, localhost, [::1] or its --host.")
            return None
        path = self.translate_path(self.path)  # drops '..' and the query
        candidates = [path]
        if os.path.isdir(path):
            candidates += [os.path.join(path, name) for name in ("index.html", "index.htm")]
        if not all(_inside(p, self.directory) for p in candidates if os.path.lexists(p)):
            self.send_error(HTTPStatus.FORBIDDEN, "outside the served folder",
                            "ssa serve never follows a symbolic link out of the folder it serves.")
            return None
        return super().send_head()

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(HTTPStatus.FORBIDDEN, "no folder listings", "ssa serve lists no folders.")
        return None


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def check_explorer_dir(directory: str | os.PathLike) -> Path:
    """The folder, if it holds an explorer written by ``ssa explore --out DIR/``; else one clear error."""
    d = Path(directory)
    if not d.is_dir():
        raise InvalidInputError(f"{str(d)!r} is not a folder; pass the folder `ssa explore ... --out DIR/` wrote.")
    if not (d / "index.html").is_file() or not (d / "data" / "index.json").is_file():
        raise InvalidInputError(f"{str(d)!r} holds no explorer (index.html and data/index.json); write one with "
                                "`ssa explore GRAPHS... --out DIR/`.")
    return d


def _host_name(host: str) -> str:
    """``host`` as the ``Host`` header spells it (lower case, IPv6 without brackets); refuses ports and URLs."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name or "/" in name or (":" in name and name.count(":") == 1) or any(c.isspace() for c in name):
        raise InvalidInputError(f"--host must be an address or a host name such as 127.0.0.1 (no port, no URL), "
                                f"got {host!r}; the port goes to --port.")
    return name


def url_of(server: ThreadingHTTPServer) -> str:
    """The address a browser on this machine opens (IPv6 in brackets)."""
    host, port = server.server_address[:2]
    host = str(host)
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def is_loopback(server: ThreadingHTTPServer) -> bool:
    """Whether the server listens on a loopback address only (reachable from this machine alone)."""
    return ipaddress.ip_address(str(server.server_address[0]).split("%")[0]).is_loopback


def make_server(directory: str | os.PathLike, port: int = 8000, host: str = HOST) -> ThreadingHTTPServer:
    """A server of ``directory`` on ``host``:``port`` (0: any free port), not yet serving.

    It answers requests whose ``Host`` header is 127.0.0.1, localhost, [::1] or ``host``.
    """
    d = check_explorer_dir(directory)
    if not 0 <= int(port) <= 65535:
        raise InvalidInputError(f"--port must be in [0, 65535], got {port}.")
    name = _host_name(host)
    handler_cls = type("Handler", (_Handler,), {"allowed_hosts": LOOPBACK_NAMES | {name}})
    handler = functools.partial(handler_cls, directory=os.path.realpath(d))
    server_cls = _Server6 if ":" in name else ThreadingHTTPServer
    try:
        server = server_cls((name, int(port)), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InvalidInputError(f"port {port} on {host} is in use; pass another --port, or --port 0 for any "
                                    "free port.") from None
        raise InvalidInputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --host or "
                                "--port.") from None
    server.daemon_threads = True
    return server
