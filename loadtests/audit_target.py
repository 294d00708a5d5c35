"""The app ``asyncproof audit`` serves: a team's own app, imported by its import string, instrumented
by asyncproof unless it instruments itself.

Gunicorn imports ``asyncproof.loadtests.audit_target:app`` in each worker (``--chdir`` is the team's
project, so its imports work as under its own server). The import string is in
``ASYNCPROOF_AUDIT_TARGET``; what the audit needs to know about the app (its OpenAPI schema's path,
health and metrics endpoints) is written as JSON to ``ASYNCPROOF_AUDIT_INFO``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

TARGET = "ASYNCPROOF_AUDIT_TARGET"
INFO = "ASYNCPROOF_AUDIT_INFO"
METRICS_PORT = "ASYNCPROOF_AUDIT_METRICS_PORT"


class TargetError(RuntimeError):
    """The import string does not lead to an app the audit can serve; the message says why."""


def load(target: str) -> Any:
    """The object ``target`` (``package.module:attribute``, as uvicorn takes it) names."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise TargetError(f"{target!r}: give the app as MODULE:APP, e.g. 'app.main:app'")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the project's own packages, as `uvicorn app.main:app` finds them
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise TargetError(
                f"cannot import {module_name!r} from {os.getcwd()}: run the audit from the project's root "
                f"or give --app-dir"
            ) from error
        raise
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise TargetError(f"{module_name!r} has no attribute {attribute!r}") from None
    return found


def prepare(target: str, metrics_port: int | None) -> tuple[Any, dict[str, Any]]:
    """The app, instrumented unless it already is, and what the audit needs to know about it."""
    from starlette.applications import Starlette

    from asyncproof.monitoring import instrument

    app = load(target)
    if not isinstance(app, Starlette):
        raise TargetError(
            f"{target!r} is a {type(app).__name__}, not a FastAPI or Starlette app; if it wraps one, "
            f"give the inner app, or call asyncproof.monitoring.instrument() on it yourself"
        )
    instrumentation = getattr(app.state, "asyncproof", None)
    by = "app"
    if instrumentation is None:
        instrumentation = instrument(app, metrics_port=metrics_port, metrics_host="127.0.0.1")
        by = "audit"
    options = instrumentation.options
    info = {
        "instrumented_by": by,
        "openapi_url": getattr(app, "openapi_url", None),
        "health_path": options.health_path,
        "metrics_path": options.metrics_path,
        "metrics_port": options.metrics_port,
        "stall_threshold": options.stall_threshold,
    }
    return app, info


def _write_info(info: dict[str, Any]) -> None:
    path = os.environ.get(INFO)
    if path:
        partial = Path(f"{path}.{os.getpid()}")
        partial.write_text(json.dumps(info))
        partial.replace(path)


def _app() -> Any:
    target = os.environ.get(TARGET, "")
    port = os.environ.get(METRICS_PORT)
    try:
        app, info = prepare(target, int(port) if port else None)
    except TargetError as error:
        _write_info({"error": str(error)})
        raise
    _write_info(info)
    return app


if os.environ.get(TARGET):
    app = _app()
