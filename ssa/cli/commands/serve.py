"""``ssa serve``: serve an explorer folder on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve an explorer folder on http://127.0.0.1 (Ctrl-C stops)",
        description="A local HTTP server for a folder written by `ssa explore GRAPHS... --out DIR/`, whose "
                    "per-class data the page loads lazily. It binds 127.0.0.1, answers only requests for "
                    "127.0.0.1, localhost, [::1] or --host, lists no folders and follows no symbolic link out "
                    "of the folder (docs/explorer.md, \"Security\").")
    p.add_argument("directory", help="the explorer folder (holds index.html and data/)")
    p.add_argument("--port", "-p", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on, and the one extra name accepted in the Host header (default "
                        "127.0.0.1: this machine only). Anyone who can reach another address can read the data.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # the explorer package loads matplotlib (for its reference images): imported when the command runs
    from ssa.viz.explorer.server import is_loopback, make_server, url_of

    server = make_server(args.directory, args.port, args.host)
    if not is_loopback(server):
        print(f"ssa: warning: --host {args.host} makes the explorer readable by every machine that can reach "
              "this address; keep the default 127.0.0.1 on a shared network.", file=sys.stderr, flush=True)
    try:  # Ctrl-C right after the URL is printed still stops cleanly
        print(f"serving {args.directory} at {url_of(server)} (Ctrl-C stops)", flush=True)
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("stopped", file=sys.stderr)
    return 0
