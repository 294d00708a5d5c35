"""The warm in-process data set: the "big in-memory cache" many apps load at start-up.

Loaded when the app is created, so under Gunicorn's ``preload_app`` the master loads it once and the
workers share its pages copy-on-write until they touch them; without preload every worker loads its
own copy. The proof reads resident memory per worker to show the difference.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

# About what one entry below costs in CPython (a dict of four fields with its strings and floats).
BYTES_PER_ENTRY = 400


class WarmData:
    def __init__(self, megabytes: int) -> None:
        rss_before = psutil.Process().memory_info().rss
        started = time.perf_counter()
        count = megabytes * 1024 * 1024 // BYTES_PER_ENTRY
        self.entries: dict[int, dict[str, Any]] = {
            i: {"id": i, "name": f"product-{i:08d}", "price": i * 0.01, "tags": ("warm", f"group-{i % 97}")}
            for i in range(count)
        }
        self.megabytes = megabytes
        self.load_seconds = time.perf_counter() - started
        self.rss_growth_bytes = max(0, psutil.Process().memory_info().rss - rss_before)

    def describe(self) -> dict[str, Any]:
        return {
            "megabytes_requested": self.megabytes,
            "entries": len(self.entries),
            "load_seconds": round(self.load_seconds, 3),
            "rss_growth_bytes": self.rss_growth_bytes,
        }
