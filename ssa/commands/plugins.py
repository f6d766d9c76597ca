"""``ssa plugins``: list installed backends, rules and selectors."""

from __future__ import annotations

import argparse

from ..plugins import registry


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list installed backends, rules and selectors")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    reg = registry()
    for kind, title in (("backend", "backends"), ("rule", "rules"), ("selector", "selectors")):
        print(f"{title}:")
        for info in reg.infos(kind):
            print(f"  {info.name:<24} {info.description}  [{info.distribution}]")
            for pname, spec in getattr(info.cls, "parameters", {}).items():
                print(f"  {'':<26}{pname}={spec.default!r}: {spec.doc}")
    return 0
