"""Gunicorn config for the reference app: ``gunicorn -c app/gunicorn_conf.py asyncproof.app.main:app``.

Every value comes from the app's settings (``ASYNCPROOF_*``), so ``asyncproof serve``, the proof and
a deployment all start the same server.
"""

from typing import Any

from asyncproof.app.protocol import UvicornWorker
from asyncproof.app.settings import Settings
from asyncproof.monitoring.gunicorn import *  # noqa: F403  (metrics folder wiped at start, dead workers retired)

_settings = Settings()


class AppUvicornWorker(UvicornWorker):
    # Gunicorn's limit_request_line/_fields/_field_size bind its own parser, not a UvicornWorker's:
    # the request head is bounded by the worker's protocol (app/protocol.py), with this limit.
    CONFIG_KWARGS: dict[str, Any] = {
        **UvicornWorker.CONFIG_KWARGS,
        "h11_max_incomplete_event_size": _settings.max_header_bytes,
    }


bind = _settings.bind
workers = _settings.workers
worker_class = AppUvicornWorker
timeout = _settings.worker_timeout
graceful_timeout = _settings.graceful_timeout
keepalive = _settings.keepalive
# Restart workers now and then (leaks, fragmentation), not all at once.
max_requests = _settings.max_requests
max_requests_jitter = _settings.max_requests_jitter
# Load the app (and its warm data set) in the master, shared copy-on-write by the workers.
preload_app = _settings.preload
accesslog = None


# Replaces the hook of the star import above, and calls it.
def on_starting(server: Any) -> None:  # type: ignore[no-redef]
    """Gunicorn master, before the first worker forks: monitoring's hook (an empty metrics folder),
    then the database schema migrated once for all the workers (app/migrations). A database that
    cannot be migrated stops the server here with the reason (exit 1), not every worker's boot."""
    from asyncproof.app.migrations import upgrade_database
    from asyncproof.monitoring import gunicorn

    gunicorn.on_starting(server)
    server.log.info("asyncproof: database schema %s", upgrade_database(_settings))


def pre_fork(server: object, worker: object) -> None:
    """Move everything the master loaded (the preloaded app) out of the garbage collector's reach.

    Otherwise the first collection in each worker writes to every object's header and copies the
    shared pages one by one, and preload saves nothing (see the ``gc.freeze`` documentation).
    """
    import gc

    gc.freeze()
