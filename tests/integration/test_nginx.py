"""nginx/nginx.conf under the real Nginx, on loopback, in front of the reference app under Gunicorn.

The file is the one compose.yaml mounts; the test rewrites only its ports and upstream address.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.nginx import nginx_command
from tests.processes import BIN, free_port, running, wait_for

pytestmark = pytest.mark.integration


@dataclass
class Nginx:
    url: str
    status_url: str
    app_url: str
    log: Path

    def access_log(self, uri: str) -> list[dict[str, object]]:
        """The JSON access-log entries for ``uri``, waiting a moment for the worker to write them."""
        deadline = time.monotonic() + 3
        while True:
            lines = self.log.read_text().splitlines()
            entries = [json.loads(line) for line in lines if line.startswith("{")]
            found = [entry for entry in entries if entry["uri"] == uri]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    command = [str(BIN / "asyncproof"), "serve", "--workers", "2", "--port", str(port)]
    env = {"ASYNCPROOF_STATE_DIR": str(tmp_path / "state")}
    with running(command, env=env, log=tmp_path / "app.log") as process:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health/ready", process=process, deadline=60)
        yield url


@pytest.fixture
def proxied(tmp_path: Path, app_url: str) -> Iterator[Nginx]:
    folder = tmp_path / "nginx"
    folder.mkdir()
    command, public, status = nginx_command(folder, [app_url.removeprefix("http://")])
    with running(command, log=folder / "out.log") as process:
        url = f"http://127.0.0.1:{public}"
        wait_for(f"{url}/health/live", process=process)
        yield Nginx(url, f"http://127.0.0.1:{status}", app_url, folder / "out.log")


def test_the_shipped_config_passes_nginx_t(tmp_path: Path) -> None:
    command, _, _ = nginx_command(tmp_path, ["127.0.0.1:9"])
    result = subprocess.run([*command[:-2], "-t"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_health_is_proxied_to_the_app(proxied: Nginx) -> None:
    with httpx.Client(timeout=5) as client:
        live = client.get(f"{proxied.url}/health/live")
        ready = client.get(f"{proxied.url}/health/ready")
        document = client.get(f"{proxied.url}/health")
    assert live.status_code == ready.status_code == document.status_code == 200
    # the app answered, not Nginx: its worker names itself and it sends its health document
    assert isinstance(live.json()["pid"], int)
    assert document.headers["content-type"].startswith("application/health+json")
    assert "database:responseTime" in document.json()["checks"]


def test_a_request_id_is_set_when_absent_and_passed_on(proxied: Nginx) -> None:
    with httpx.Client(timeout=5) as client:
        generated = client.get(f"{proxied.url}/items?limit=1")
        kept = client.get(f"{proxied.url}/items?limit=1", headers={"X-Request-ID": "abc-123"})
    # the app returns the id it was given: Nginx's $request_id, or the client's own
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert kept.headers["x-request-id"] == "abc-123"


def test_metrics_are_denied_on_the_public_port_and_stub_status_is_internal(proxied: Nginx) -> None:
    assert httpx.get(f"{proxied.url}/metrics", timeout=5).status_code == 403
    assert httpx.get(f"{proxied.app_url}/metrics", timeout=5).status_code == 200
    status = httpx.get(f"{proxied.status_url}/stub_status", timeout=5)
    assert status.status_code == 200
    assert status.text.startswith("Active connections:")
    assert httpx.get(f"{proxied.url}/stub_status", timeout=5).status_code != 200


def test_access_log_is_json_with_upstream_timings(proxied: Nginx) -> None:
    created = httpx.post(f"{proxied.url}/items", json={"name": "logged"}, timeout=5)
    assert created.status_code == 201
    entries = proxied.access_log("/items")
    assert entries, proxied.log.read_text()[-2000:]
    entry = entries[-1]
    assert entry["method"] == "POST"
    assert entry["status"] == 201
    assert entry["request_id"] == created.headers["x-request-id"]
    assert float(str(entry["upstream_response_time"])) <= float(str(entry["request_time"])) + 0.001
    assert str(entry["upstream_addr"]).startswith("127.0.0.1:")


def test_connections_to_the_app_are_kept_alive(proxied: Nginx) -> None:
    app_port = int(proxied.app_url.rsplit(":", 1)[1])
    with httpx.Client(timeout=5) as client:
        for index in range(30):
            assert client.get(f"{proxied.url}/items/{index + 1000}").status_code == 404
    open_to_app = [
        conn
        for conn in psutil.net_connections("tcp")
        if conn.raddr and conn.raddr.port == app_port and conn.status == psutil.CONN_ESTABLISHED
    ]
    # without upstream keep-alive Nginx closes each connection once its response is in
    assert 1 <= len(open_to_app) <= 32


class Unavailable(http.server.BaseHTTPRequestHandler):
    """An upstream that is up but answers 503 to everything."""

    def _refuse(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.send_response(503)
        self.send_header("content-length", "0")
        self.end_headers()

    do_GET = do_POST = _refuse

    def log_message(self, *args: object) -> None:
        pass


def test_only_idempotent_requests_go_to_the_next_upstream(tmp_path: Path, app_url: str) -> None:
    refusing = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=refusing.serve_forever, daemon=True).start()
    try:
        upstreams = [f"127.0.0.1:{refusing.server_address[1]}", app_url.removeprefix("http://")]
        command, public, _ = nginx_command(tmp_path, upstreams)
        with running(command, log=tmp_path / "out.log") as process:
            url = f"http://127.0.0.1:{public}"
            wait_for(f"{url}/health/live", process=process)
            with httpx.Client(timeout=10) as client:
                reads = [client.get(f"{url}/items?limit=1").status_code for _ in range(20)]
                writes = [client.post(f"{url}/items", json={"name": "x"}).status_code for _ in range(20)]
        assert set(reads) == {200}  # a GET that met the 503 was tried again on the app
        assert 503 in writes  # a POST that met the 503 was not sent a second time
        assert 201 in writes
    finally:
        refusing.shutdown()
        refusing.server_close()
