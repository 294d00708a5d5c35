"""``asyncproof serve`` and ``asyncproof worker``: the reference app's server and Celery worker."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.settings import Settings

CONFIG = Path(__file__).with_name("gunicorn_conf.py")
BIN = Path(sys.executable).parent


def add_parsers(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the reference app (Gunicorn + Uvicorn workers) on embedded defaults",
        description="Run the reference app. Every ASYNCPROOF_* setting applies; the options override them.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, help="worker processes (default: 2 x cores + 1, at most 8)")
    parser.add_argument("--server", choices=("gunicorn", "uvicorn"), default="gunicorn")
    parser.add_argument("--task-store", choices=("memory", "sqlite", "redis"), help="where task status lives")
    parser.add_argument(
        "--preload", action="store_true", help="Gunicorn preload_app (copy-on-write warm data)"
    )
    parser.set_defaults(func=serve)

    worker = commands.add_parser(
        "worker",
        help="run a Celery worker for the queue style (needs ASYNCPROOF_BROKER_URL)",
        description="Run the Celery worker of the queue style. ASYNCPROOF_BROKER_URL names the broker; "
        "ASYNCPROOF_WORKER_METRICS_PORT, if set, serves its task metrics.",
    )
    worker.add_argument(
        "--concurrency", type=int, help="pool processes (default: ASYNCPROOF_WORKER_CONCURRENCY)"
    )
    worker.set_defaults(func=run_worker)


def load_settings(**overrides: Any) -> Settings | str:
    """The settings from the environment plus ``overrides``, or a message naming what is wrong."""
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
        ASYNCPROOF_TASK_STORE=settings.task_store,
        ASYNCPROOF_PRELOAD="1" if settings.preload else "0",
    )
    if args.server == "gunicorn":
        return [str(BIN / "gunicorn"), "-c", str(CONFIG), "app.main:app"], env
    # uvicorn --workers has no hook that sets this up: a fresh folder per run.
    env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="asyncproof-metrics-")
    host, port = settings.bind.rsplit(":", 1)
    return [
        str(BIN / "uvicorn"),
        "app.main:app",
        *("--host", host, "--port", port, "--workers", str(settings.workers)),
        *("--timeout-graceful-shutdown", str(settings.graceful_timeout)),
        *("--timeout-keep-alive", str(settings.keepalive)),
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
        "app.queue",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
    ]
    os.execve(argv[0], argv, env)
