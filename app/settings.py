"""One typed settings object for the reference app; every field can be set as ``ASYNCPROOF_<NAME>``."""

from __future__ import annotations

import os
import tempfile
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_state_dir() -> str:
    """Where the embedded defaults keep their files: shared by the workers of one machine."""
    return os.path.join(tempfile.gettempdir(), "asyncproof")


def default_workers() -> int:
    """Gunicorn's classic ``2 x cores + 1``, capped: more workers than that only add memory."""
    return min(2 * (os.cpu_count() or 1) + 1, 8)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ASYNCPROOF_", extra="forbid")

    # Files of the embedded defaults (SQLite database and task store, the maintenance lease).
    state_dir: str = Field(default_factory=default_state_dir)
    # SQLAlchemy async URL; empty: a SQLite file in state_dir (aiosqlite).
    database_url: str = ""
    db_pool_size: int = Field(5, ge=1)
    db_max_overflow: int = Field(5, ge=0)
    db_pool_timeout: float = Field(5.0, gt=0)
    db_connect_timeout: float = Field(2.0, gt=0)  # PostgreSQL: seconds to connect before a 503
    # Redis for the read-through cache; empty: an in-process TTL LRU cache.
    redis_url: str = ""
    cache_ttl_seconds: float = Field(30.0, gt=0)
    cache_ttl_jitter: float = Field(0.1, ge=0, lt=1)
    cache_max_items: int = Field(10_000, ge=1)
    # Where task status lives: per-worker dict, SQLite file shared by a machine's workers, or Redis.
    task_store: Literal["memory", "sqlite", "redis"] = "sqlite"
    task_store_url: str = ""  # Redis URL of the redis store; empty: redis_url, then redis://127.0.0.1:6379/0
    task_ttl_seconds: float = Field(3600.0, gt=0)
    task_max_stored: int = Field(10_000, ge=1)
    task_timeout_seconds: float = Field(60.0, gt=0)
    task_max_retries: int = Field(2, ge=0)
    task_retry_backoff_seconds: float = Field(0.2, ge=0)
    # A task nobody ended (its worker was killed) is marked failed, reason worker_lost: at once when
    # its worker's pid is gone on this host, else this long after its timeout (app/tasks/lifecycle.py).
    task_lost_grace_seconds: float = Field(10.0, ge=0)
    # How often one worker of the deployment looks for such tasks (under the maintenance lease).
    task_reap_interval_seconds: float = Field(5.0, gt=0)
    executor_threads: int = Field(8, ge=1)
    process_pool_workers: int = Field(2, ge=1)
    # Celery broker of the queue style; empty: the queue endpoint answers 503.
    broker_url: str = ""
    broker_timeout_seconds: float = Field(1.0, gt=0)
    # Redis broker: an unacknowledged task of a worker that vanished is delivered again after this.
    broker_visibility_timeout_seconds: int = Field(3600, ge=1)
    worker_concurrency: int = Field(2, ge=1)
    # Port where `asyncproof worker` serves its task metrics; 0: none.
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    # Port where the server's /metrics is answered, on the host of `bind`, by one exposition process
    # per deployment outside the serving workers (a scrape costs them no event-loop lag and answers
    # while they are all blocked); 0: /metrics on the app's own port, rendered inside a worker.
    metrics_port: int = Field(0, ge=0, le=65535)
    # Periodic maintenance (purging expired tasks): once per interval per deployment.
    maintenance_interval_seconds: float = Field(60.0, gt=0)
    # The warm in-process data set ("the big in-memory cache"), loaded when the app is created.
    warm_data_mb: int = Field(0, ge=0, le=4096)
    # Seconds a worker waits at shutdown for in-process tasks before marking them interrupted.
    shutdown_task_grace_seconds: float = Field(5.0, ge=0)
    # Serving (app/gunicorn_conf.py and `asyncproof serve`)
    bind: str = "127.0.0.1:8000"
    workers: int = Field(default_factory=default_workers, ge=1)
    # A worker whose event loop stays blocked this long is killed and replaced by Gunicorn.
    worker_timeout: int = Field(30, ge=1)
    # Under Kubernetes' default 30 s termination grace period, with room for the preStop delay.
    graceful_timeout: int = Field(25, ge=1)
    # Longer than Nginx's upstream keepalive_timeout (60 s), so Nginx always closes first.
    keepalive: int = Field(75, ge=1)
    max_requests: int = Field(10_000, ge=0)
    max_requests_jitter: int = Field(1_000, ge=0)
    preload: bool = False
    # What one request may cost: its body in bytes (413 above it, app/body_limit.py), its request line
    # and headers in bytes (431, app/protocol.py) and its JSON body's nesting (400, app/json_limits.py).
    # nginx/nginx.conf refuses the same bodies and headers first. The app's own bodies are tiny.
    max_body_bytes: int = Field(1_048_576, ge=0)
    max_header_bytes: int = Field(16_384, ge=1_024)
    max_json_depth: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _grace_within_graceful_timeout(self) -> Settings:
        if self.shutdown_task_grace_seconds >= self.graceful_timeout:
            raise ValueError(
                "shutdown_task_grace_seconds must be shorter than graceful_timeout, or Gunicorn kills the "
                "worker before it can mark its unfinished tasks interrupted"
            )
        return self

    request_id_header: str = "X-Request-ID"

    @model_validator(mode="after")
    def _metrics_port_is_not_the_apps(self) -> Settings:
        if self.metrics_port and self.bind.endswith(f":{self.metrics_port}"):
            raise ValueError("metrics_port must differ from the port in bind (0: /metrics on the app's port)")
        return self

    @property
    def metrics_host(self) -> str:
        """The interface of the metrics port: the one the app is bound to (all of them when it is
        bound to a Unix socket)."""
        if self.bind.startswith(("unix:", "fd://")) or ":" not in self.bind:
            return "0.0.0.0"
        return self.bind.rsplit(":", 1)[0].strip("[]") or "0.0.0.0"

    @property
    def redis_store_url(self) -> str:
        return self.task_store_url or self.redis_url or "redis://127.0.0.1:6379/0"

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{os.path.join(self.state_dir, 'app.sqlite3')}"

    @property
    def task_db_path(self) -> str:
        return os.path.join(self.state_dir, "tasks.sqlite3")
