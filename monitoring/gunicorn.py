"""Gunicorn server hooks for correct multiprocess metrics.

A Gunicorn config file needs only::

    from asyncproof.monitoring.gunicorn import *

    bind = "127.0.0.1:8000"
    workers = 3
    worker_class = "uvicorn_worker.UvicornWorker"

Importing this module points ``PROMETHEUS_MULTIPROC_DIR`` at a private folder when it is not set
(before prometheus_client is imported, which is when the mode is chosen). ``on_starting`` empties the
folder, ``child_exit`` retires each dead worker: its live gauges go, its counts are folded into an
archive so scrapes stay as fast after 500 restarts as at the start. A config that defines one of these
hooks itself should call the one here from it.

With ``instrument(app, metrics_port=...)``, ``/metrics`` is answered on that port by one exposition
process per deployment, outside the workers; the workers start it and keep it running, and it exits
with the master (:mod:`asyncproof.monitoring.exposition_process`): no hook here, so that it works the
same under ``uvicorn --workers``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

_LEGACY = "prometheus_multiproc_dir"  # the lowercase spelling prometheus_client still honours
if not (os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(_LEGACY)):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="asyncproof-metrics-")

from asyncproof.monitoring import multiprocess  # noqa: E402  (must follow the environment set-up above)

__all__ = ["child_exit", "on_starting"]


def on_starting(server: Any) -> None:
    """Gunicorn master, before the first worker forks: start from an empty metrics folder."""
    path = multiprocess.multiprocess_dir()
    assert path is not None  # set at import above
    multiprocess.wipe(path)
    server.log.info("asyncproof: multiprocess metrics in %s", path)


def child_exit(server: Any, worker: Any) -> None:
    """Gunicorn master, after a worker exited (or was killed): retire its metric files."""
    multiprocess.mark_process_dead(worker.pid)
