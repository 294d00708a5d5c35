"""Gunicorn config for the reference app: ``gunicorn -c app/gunicorn_conf.py asyncproof.app.main:app``.

Every value comes from the app's settings (``ASYNCPROOF_*``), so ``asyncproof serve``, the proof and
a deployment all start the same server.
"""

from asyncproof.app.settings import Settings
from asyncproof.monitoring.gunicorn import *  # noqa: F403  (metrics folder wiped at start, dead workers retired)

_settings = Settings()

bind = _settings.bind
workers = _settings.workers
worker_class = "uvicorn_worker.UvicornWorker"
timeout = _settings.worker_timeout
graceful_timeout = _settings.graceful_timeout
keepalive = _settings.keepalive
# Restart workers now and then (leaks, fragmentation), not all at once.
max_requests = _settings.max_requests
max_requests_jitter = _settings.max_requests_jitter
# Load the app (and its warm data set) in the master, shared copy-on-write by the workers.
preload_app = _settings.preload
accesslog = None


def pre_fork(server: object, worker: object) -> None:
    """Move everything the master loaded (the preloaded app) out of the garbage collector's reach.

    Otherwise the first collection in each worker writes to every object's header and copies the
    shared pages one by one, and preload saves nothing (see the ``gc.freeze`` documentation).
    """
    import gc

    gc.freeze()
