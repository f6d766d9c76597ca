"""``ssa serve``: serve an explorer folder on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve an explorer folder on http://127.0.0.1 (Ctrl-C stops)",
        description="A local HTTP server (bound to 127.0.0.1 only) for a folder written by "
                    "`ssa explore GRAPHS... --out DIR/`, whose per-class data the page loads lazily.")
    p.add_argument("directory", help="the explorer folder (holds index.html and data/)")
    p.add_argument("--port", "-p", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # the explorer package loads matplotlib (for its reference images): imported when the command runs
    from ssa.viz.explorer.server import HOST, make_server

    server = make_server(args.directory, args.port)
    port = server.server_address[1]
    print(f"serving {args.directory} at http://{HOST}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("stopped", file=sys.stderr)
    return 0
