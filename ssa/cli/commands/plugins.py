"""``ssa plugins``: list installed backends, rules and selectors."""

from __future__ import annotations

import argparse

from ssa.plugins import registry


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list installed backends, rules and selectors",
                       description="List the installed backends, rules and selectors with their parameters and "
                                   "distributions, and any broken plugin that was skipped.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    reg = registry()
    for kind, title in (("backend", "backends"), ("rule", "rules"), ("selector", "selectors")):
        print(f"{title}:")
        for info in reg.infos(kind):
            print(f"  {info.name:<24} {info.description}  [{info.distribution}]")
            for pname, spec in getattr(info.cls, "parameters", {}).items():
                print(f"  {'':<26}{pname}={spec.default!r}: {spec.doc}")
    if reg.skipped:
        print("skipped (broken plugins; SSA_DISABLE_PLUGIN_AUTOLOAD=1 loads none):")
        for sk in reg.skipped:
            print(f"  {sk.name:<24} [{sk.distribution}] {sk.reason}")
    return 0
