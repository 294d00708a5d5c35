"""``asyncproof serve`` and ``asyncproof worker``: the reference app's server and Celery worker.

The command line (:mod:`asyncproof.cli`) declares their options.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncproof.app.settings import Settings

CONFIG = Path(__file__).with_name("gunicorn_conf.py")
BIN = Path(sys.executable).parent


def load_settings(**overrides: Any) -> Settings | str:
    """The settings from the environment plus ``overrides``, or a message naming what is wrong."""
    from pydantic import ValidationError

    from asyncproof.app.settings import Settings

    try:
        return Settings(**overrides)
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            field = ".".join(str(part) for part in problem["loc"])
            name = f"ASYNCPROOF_{field.upper()}" if field else "settings"
            lines.append(f"{name}: {problem['msg']}")
        return "invalid settings:\n  " + "\n  ".join(lines)


def server_command(args: argparse.Namespace, settings: Settings) -> tuple[list[str], dict[str, str]]:
    """The server command line and its environment (the settings as ASYNCPROOF_* variables)."""
    env = dict(os.environ)
    env.update(
        ASYNCPROOF_BIND=settings.bind,
        ASYNCPROOF_WORKERS=str(settings.workers),
        ASYNCPROOF_METRICS_PORT=str(settings.metrics_port),
        ASYNCPROOF_TASK_STORE=settings.task_store,
        ASYNCPROOF_PRELOAD="1" if settings.preload else "0",
    )
    if args.server == "gunicorn":
        return [str(BIN / "gunicorn"), "-c", str(CONFIG), "asyncproof.app.main:app"], env
    # uvicorn --workers has no hook that sets this up: a fresh folder per run.
    env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="asyncproof-metrics-")
    host, port = settings.bind.rsplit(":", 1)
    return [
        str(BIN / "uvicorn"),
        "asyncproof.app.main:app",
        *("--host", host, "--port", port, "--workers", str(settings.workers)),
        *("--timeout-graceful-shutdown", str(settings.graceful_timeout)),
        *("--timeout-keep-alive", str(settings.keepalive)),
        # httptools with a bound on the request head (app/protocol.py), as under Gunicorn
        *("--http", "asyncproof.app.protocol:HttpToolsProtocol"),
        *("--h11-max-incomplete-event-size", str(settings.max_header_bytes)),
        "--no-access-log",
    ], env


def serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {"bind": f"{args.host}:{args.port}"}
    if args.workers is not None:
        overrides["workers"] = args.workers
    if args.task_store:
        overrides["task_store"] = args.task_store
    if args.preload:
        overrides["preload"] = True
    settings = load_settings(**overrides)
    if isinstance(settings, str):
        print(settings, file=sys.stderr)
        return 2
    argv, env = server_command(args, settings)
    if settings.metrics_port:
        where = f"{settings.metrics_host}:{settings.metrics_port}"
        print(f"asyncproof: /metrics on http://{where}/metrics, outside the workers", file=sys.stderr)
    if args.server != "gunicorn":
        # Gunicorn migrates in its on_starting hook; uvicorn --workers has none: here, before it starts.
        from asyncproof.app.migrations import upgrade_database

        try:
            print(f"asyncproof: database schema {upgrade_database(settings)}", file=sys.stderr)
        except RuntimeError as error:
            print(error, file=sys.stderr)
            return 1
    os.execve(argv[0], argv, env)


def run_worker(args: argparse.Namespace) -> int:
    settings = load_settings()
    if isinstance(settings, str):
        print(settings, file=sys.stderr)
        return 2
    if not settings.broker_url:
        print("set ASYNCPROOF_BROKER_URL to the broker, e.g. redis://127.0.0.1:6379/0", file=sys.stderr)
        return 2
    env = dict(os.environ)
    # The pool processes write their metrics here; the main process serves the sum.
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="asyncproof-worker-metrics-"))
    concurrency = args.concurrency if args.concurrency is not None else settings.worker_concurrency
    argv = [
        str(BIN / "celery"),
        "-A",
        "asyncproof.app.queue",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
    ]
    os.execve(argv[0], argv, env)
