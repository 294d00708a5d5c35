"""Rendering scrapes: text or OpenMetrics, off the event loop, on the app's port or a separate one."""

from __future__ import annotations

import asyncio
import socketserver
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import choose_encoder

from asyncproof.monitoring.multiprocess import MultiprocessCollector


class Exposition:
    """What a scrape shows: the registry itself, or in multiprocess mode the sum of every worker's files."""

    def __init__(self, registry: CollectorRegistry, multiprocess_dir: str | None) -> None:
        if multiprocess_dir:
            self.registry = CollectorRegistry(auto_describe=False)
            self.registry.register(MultiprocessCollector(multiprocess_dir))
        else:
            self.registry = registry

    def render(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    async def render_async(self, accept: str | None) -> tuple[bytes, str]:
        return await asyncio.get_running_loop().run_in_executor(_scrape_thread(), self.render, accept)


_scrapes: ThreadPoolExecutor | None = None
_scrapes_made = threading.Lock()


def _scrape_thread() -> ThreadPoolExecutor:
    """One thread per process renders scrapes, made on the first: rendering (reading every worker's
    files in multiprocess mode) never runs on the event loop, never takes a token from AnyIO's
    threadpool that requests need, and many apps in one process do not hold a thread each."""
    global _scrapes
    with _scrapes_made:
        if _scrapes is None:
            _scrapes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncproof-scrape")
        return _scrapes


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _ReusePortServer(socketserver.ThreadingMixIn, WSGIServer):
    # Every Gunicorn worker binds the metrics port; the kernel spreads scrapes over them, and as each
    # renders the sum of all workers it does not matter which one answers.
    allow_reuse_address = True
    allow_reuse_port = True
    daemon_threads = True


class MetricsServer:
    """Serves ``/metrics`` (any path, as prometheus_client does) on its own port from a daemon thread."""

    def __init__(
        self, exposition: Exposition, host: str, port: int, before_render: Callable[[], object]
    ) -> None:
        metrics_app = make_wsgi_app(exposition.registry)

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            before_render()
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result

        self._httpd = make_server(host, port, app, _ReusePortServer, handler_class=_QuietHandler)
        self.port = self._httpd.server_port
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="asyncproof-metrics-server", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
