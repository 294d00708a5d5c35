"""Data: cache hit ratio, evictions and size; database pool use, waits and timeouts."""

from asyncproof.monitoring.contract import (
    CACHE_EVICTIONS,
    CACHE_HITS,
    CACHE_MISSES,
    CACHE_SIZE,
    DB_CLIENT_CONNECTION_TIMEOUTS,
    DB_CLIENT_CONNECTION_WAIT,
    DB_CLIENT_CONNECTIONS,
    DB_CLIENT_CONNECTIONS_MAX,
)
from dashboards.common import INSTANCE, RATE, make_dashboard, name, panel, quantile

selected = 'instance=~"$instance"'
hits = f"sum by (cache) (rate({name(CACHE_HITS)}{{{selected}}}[{RATE}]))"
misses = f"sum by (cache) (rate({name(CACHE_MISSES)}{{{selected}}}[{RATE}]))"

dashboard = make_dashboard(
    "data",
    "Is the cache doing its job, and is the database pool big enough?",
    [INSTANCE],
    [
        panel("Cache hit ratio", [(f"{hits} / ({hits} + {misses})", "{{cache}}")], "percentunit", 0, 0),
        panel(
            "Cache evictions per second and size",
            [
                (
                    f"sum by (cache) (rate({name(CACHE_EVICTIONS)}{{{selected}}}[{RATE}]))",
                    "evicted {{cache}}",
                ),
                (f"sum by (cache) ({name(CACHE_SIZE)}{{{selected}}})", "entries {{cache}}"),
            ],
            "short",
            12,
            0,
        ),
        panel(
            "Database connections: used, idle and the pool's maximum",
            [
                (f"sum by (pool, state) ({name(DB_CLIENT_CONNECTIONS)}{{{selected}}})", "{{pool}} {{state}}"),
                (f"sum by (pool) ({name(DB_CLIENT_CONNECTIONS_MAX)}{{{selected}}})", "{{pool}} max"),
            ],
            "short",
            0,
            8,
        ),
        panel(
            "Wait for a connection p99, and checkouts that timed out",
            [
                (quantile(0.99, DB_CLIENT_CONNECTION_WAIT, "pool", selected), "wait p99 {{pool}}"),
                (
                    f"sum by (pool) (rate({name(DB_CLIENT_CONNECTION_TIMEOUTS)}{{{selected}}}[{RATE}]))",
                    "timeouts/s {{pool}}",
                ),
            ],
            "s",
            12,
            8,
        ),
    ],
)
