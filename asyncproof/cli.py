"""The ``asyncproof`` command line.

``contract`` lists the metric contract (base install); ``serve`` runs the reference app and ``worker``
its Celery worker (the ``app`` extra); ``prove`` runs every execution style under load and judges it
(the ``load`` extra). Each command imports what it needs only when it runs, so a missing extra is a
sentence naming it, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: str  # "module:function", imported when the command runs
    extra: str | None  # the extra that brings its dependencies; None: the base install
    needs: tuple[str, ...] = ()  # modules whose absence means the extra is missing


COMMANDS = (
    Command("contract", "list every metric name, type and label set", "asyncproof.cli:contract", None),
    Command(
        "serve",
        "run the reference app (Gunicorn + Uvicorn workers) on embedded defaults",
        "asyncproof.app.serve:serve",
        "app",
        ("fastapi", "pydantic_settings", "sqlalchemy", "gunicorn", "uvicorn"),
    ),
    Command(
        "worker",
        "run a Celery worker for the queue style (needs ASYNCPROOF_BROKER_URL)",
        "asyncproof.app.serve:run_worker",
        "app",
        ("fastapi", "pydantic_settings", "celery", "redis"),
    ),
    Command(
        "prove",
        "run every execution style under load and compare observed with expected verdicts",
        "asyncproof.loadtests.prove:prove",
        "load",
        ("fastapi", "pydantic_settings", "locust", "httpx", "matplotlib", "yaml"),
    ),
    Command(
        "audit",
        "load a FastAPI app of your own route by route and judge each route (restarts, queues, ...)",
        "asyncproof.loadtests.audit:audit",
        "load",
        (
            "fastapi",
            "gunicorn",
            "uvicorn_worker",
            "locust",
            "httpx",
            "matplotlib",
            "yaml",
            "schemathesis",
            "dotenv",
        ),
    ),
)


def contract(_: argparse.Namespace) -> int:
    from asyncproof.monitoring import contract

    for spec in contract.ALL_METRICS + contract.CLIENT_METRICS:
        labels = ",".join(spec.labels) or "-"
        print(f"{spec.exposed_name:<48} {spec.kind:<9} {labels}")
    return 0


def missing(command: Command) -> list[str]:
    """The modules ``command`` needs that are not installed."""
    return [name for name in command.needs if importlib.util.find_spec(name) is None]


def install_hint(command: Command) -> str:
    return f"pip install 'asyncproof[{command.extra}]'"


def _add_options(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "serve":
        parser.description = (
            "Run the reference app. Every ASYNCPROOF_* setting applies; the options override them."
        )
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--workers", type=int, help="worker processes (default: 2 x cores + 1, at most 8)"
        )
        parser.add_argument("--server", choices=("gunicorn", "uvicorn"), default="gunicorn")
        parser.add_argument(
            "--task-store", choices=("memory", "sqlite", "redis"), help="where task status lives"
        )
        parser.add_argument(
            "--preload", action="store_true", help="Gunicorn preload_app (copy-on-write warm data)"
        )
    elif name == "worker":
        parser.description = (
            "Run the Celery worker of the queue style. ASYNCPROOF_BROKER_URL names the broker; "
            "ASYNCPROOF_WORKER_METRICS_PORT, if set, serves its task metrics."
        )
        parser.add_argument(
            "--concurrency", type=int, help="pool processes (default: ASYNCPROOF_WORKER_CONCURRENCY)"
        )
    elif name == "prove":
        parser.description = (
            "Start the reference app per scenario, load it with Locust and a kubelet-like prober, and "
            "compare each observed verdict with the expected one; exits 1 on a mismatch."
        )
        parser.add_argument("--quick", action="store_true", help="the CI profile (about 3 minutes)")
        parser.add_argument(
            "--out", default="asyncproof-report", help="folder for the report (default: %(default)s)"
        )
        parser.add_argument(
            "--only",
            action="append",
            default=[],
            metavar="SCENARIO",
            help="run only this scenario (repeatable); an unknown name lists the known ones",
        )
    elif name == "audit":
        _audit_options(parser)


def _audit_options(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve your app (Gunicorn + Uvicorn workers, on loopback), load every route of its OpenAPI schema "
        "alone and then all together with a kubelet-like prober running, and judge each route. Exit "
        "codes: 0 as allowed, 1 a verdict the gates do not allow (default: anything but healthy), 3 a "
        "failed gate, 2 bad input, 130 interrupted."
    )
    parser.add_argument(
        "target", nargs="?", help="the app as MODULE:APP (e.g. app.main:app), as uvicorn takes it"
    )
    parser.add_argument(
        "--url", help="audit a service already running here instead (it must expose asyncproof's /metrics)"
    )
    parser.add_argument(
        "--app-dir", help="the project folder MODULE is imported from (default: the current one)"
    )
    parser.add_argument("--workers", type=int, default=2, help="Gunicorn workers (default: %(default)s)")
    parser.add_argument(
        "--worker-timeout", type=int, default=30, help="Gunicorn's worker timeout in s (default: %(default)s)"
    )
    parser.add_argument("--env-file", help="environment for the app and --setup (KEY=value lines, as .env)")
    parser.add_argument(
        "--setup",
        help="run before the server starts: a callable package.module:function (a dict it returns is sent as "
        "headers) or a shell command (migrations, seed data)",
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="sent with every request (repeatable)",
    )
    parser.add_argument(
        "-f",
        "--locustfile",
        action="append",
        metavar="FILE",
        help="your own Locust users (repeatable): a phase of their own, then all together",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="ROUTE",
        help="load only these: 'GET /items/{id}', '/admin/*' or a tag",
    )
    parser.add_argument("--exclude", action="append", metavar="ROUTE", help="leave these out (same forms)")
    parser.add_argument("--users", type=int, default=100, help="concurrent users (default: %(default)s)")
    parser.add_argument(
        "--rate",
        type=float,
        default=200,
        help="requests per second in all, 0: no limit (default: %(default)s)",
    )
    parser.add_argument(
        "--duration", type=float, help="seconds of the all-together phase (default 30; --quick: 10)"
    )
    parser.add_argument("--quick", action="store_true", help="short phases: about 2 minutes for 20 routes")
    parser.add_argument(
        "--gates", help="gates file: thresholds (as the Locust plugin's) and allowed verdicts"
    )
    parser.add_argument(
        "--out", default="asyncproof-audit", help="folder for the report (default: %(default)s)"
    )
    parser.add_argument("--health-path", default="/health", help="with --url: its health endpoints' prefix")
    parser.add_argument("--metrics-url", help="with --url: where its /metrics is (default: URL/metrics)")
    parser.add_argument("--openapi-path", default="/openapi.json", help="with --url: its schema's path")


def build_parser() -> argparse.ArgumentParser:
    unavailable = [c for c in COMMANDS if c.extra and missing(c)]
    epilog = None
    if unavailable:
        epilog = "not available in this install: " + "; ".join(
            f"{c.name} ({install_hint(c)})" for c in unavailable
        )
    parser = argparse.ArgumentParser(
        prog="asyncproof",
        description="See and prove how a FastAPI service behaves under load.",
        epilog=epilog,
    )
    try:
        installed = version("asyncproof")
    except PackageNotFoundError:  # run from a checkout that is not installed
        installed = "unknown"
    parser.add_argument("--version", action="version", version=f"asyncproof {installed}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.help)
        _add_options(command.name, sub)
        sub.set_defaults(command_spec=command)
    return parser


def _load(command: Command) -> Callable[[argparse.Namespace], int]:
    module, _, function = command.run.partition(":")
    loaded: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), function)
    return loaded


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command | None = getattr(args, "command_spec", None)
    if command is None:
        parser.print_help(sys.stderr)
        return 2
    absent = missing(command)
    if absent:
        print(
            f"asyncproof {command.name} needs the '{command.extra}' extra, which is not installed "
            f"(missing: {', '.join(absent)}): {install_hint(command)}",
            file=sys.stderr,
        )
        return 2
    try:
        run = _load(command)
    except ModuleNotFoundError as error:  # a dependency the needs list does not name
        if error.name and error.name.split(".")[0] == "asyncproof":
            raise
        print(
            f"asyncproof {command.name} cannot import {error.name!r}: {install_hint(command)}",
            file=sys.stderr,
        )
        return 2
    return int(run(args))


if __name__ == "__main__":
    sys.exit(main())
