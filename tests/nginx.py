"""Run the shipped nginx/nginx.conf under the real Nginx on loopback (only ports and upstreams rewritten)."""

from __future__ import annotations

from pathlib import Path

from tests.processes import ROOT, free_port
from tests.services import require_executable

CONFIG = ROOT / "nginx" / "nginx.conf"
UPSTREAM = "        server app:8000 max_fails=3 fail_timeout=10s;\n"


def render(public: int, status: int, upstreams: list[str]) -> str:
    """The shipped config with loopback ports and the given upstream servers."""
    text = CONFIG.read_text()
    replacements = {
        "listen 8080;": f"listen 127.0.0.1:{public};",
        "listen 8081;": f"listen 127.0.0.1:{status};",
        UPSTREAM: "".join(f"        server {address} max_fails=0;\n" for address in upstreams),
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"nginx.conf no longer has exactly one {old!r}"
        text = text.replace(old, new)
    return text


def nginx_command(folder: Path, upstreams: list[str]) -> tuple[list[str], int, int]:
    """The command that runs Nginx in the foreground with ``folder`` as its prefix; and its two ports."""
    nginx = require_executable("nginx")
    public, status = free_port(), free_port()
    (folder / "nginx.conf").write_text(render(public, status, upstreams))
    command = [nginx, "-p", str(folder), "-c", str(folder / "nginx.conf")]
    return [*command, "-g", f"daemon off; pid {folder / 'nginx.pid'};"], public, status
