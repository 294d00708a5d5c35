"""The ``asyncproof`` command line.

``prove`` runs every execution style under load and judges it; ``serve`` runs the reference app;
``worker`` its Celery worker; ``contract`` lists the metric contract.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version


def _contract(_: argparse.Namespace) -> int:
    from monitoring import contract

    for spec in contract.ALL_METRICS + contract.CLIENT_METRICS:
        labels = ",".join(spec.labels) or "-"
        print(f"{spec.exposed_name:<48} {spec.kind:<9} {labels}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asyncproof", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"asyncproof {version('asyncproof')}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    contract_cmd = commands.add_parser("contract", help="list every metric name, type and label set")
    contract_cmd.set_defaults(func=_contract)
    from app import serve
    from loadtests import prove

    serve.add_parsers(commands)
    prove.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
