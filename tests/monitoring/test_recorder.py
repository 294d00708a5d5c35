"""The recorder that batches HTTP observations: same buckets as prometheus_client, nothing lost."""

from __future__ import annotations

import sys
import threading

from prometheus_client import CollectorRegistry

from asyncproof.monitoring.contract import HTTP_DURATION_BUCKETS
from asyncproof.monitoring.metrics import Metrics
from asyncproof.monitoring.recorder import HttpRecorder


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        if metric.name == "http_server_request_duration_seconds"
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_batched_durations_give_the_samples_observe_would() -> None:
    # every bound exactly, just either side of it, zero and far past the last bound
    durations = [0.0, 1e9]
    for bound in HTTP_DURATION_BUCKETS:
        durations += [bound, bound * 0.999999, bound * 1.000001]
    keys = [("GET", "/items/{item_id}", 200), ("POST", "/items", 201), ("GET", "unmatched", 404)]

    batched, direct = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    recorder = HttpRecorder(batched.http_duration, batched.http_active)
    for position, key in enumerate(keys):
        for seconds in durations[position:]:
            recorder.pending[key].append(seconds)
            direct.http_duration.labels(key[0], key[1], str(key[2])).observe(seconds)

    assert recorder.flush() == sum(len(durations) - position for position in range(len(keys)))
    assert samples(batched.registry) == samples(direct.registry)
    assert recorder.flush() == 0  # drained: a second flush adds nothing
    assert samples(batched.registry) == samples(direct.registry)


def test_appends_racing_flushes_on_another_thread_are_all_counted() -> None:
    metrics = Metrics(CollectorRegistry())
    recorder = HttpRecorder(metrics.http_duration, metrics.http_active)
    per_route, routes = 20_000, [f"/r{number}" for number in range(5)]
    done = threading.Event()
    flushed: list[int] = []

    def flush_until_done() -> None:  # as the metrics port's thread does, while requests finish
        while not done.is_set():
            flushed.append(recorder.flush())

    flusher = threading.Thread(target=flush_until_done)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, between any two bytecodes
    flusher.start()
    try:
        for number in range(per_route):
            for route in routes:  # label sets appear while the other thread flushes
                recorder.pending["GET", route, 200].append(number * 1e-6)
    finally:
        done.set()
        flusher.join()
        sys.setswitchinterval(interval)
    flushed.append(recorder.flush())

    assert sum(flushed) == per_route * len(routes)
    assert len([count for count in flushed if count]) > 1  # the flushes did overlap the appends
    for route in routes:
        labels = {"http_request_method": "GET", "http_route": route, "http_response_status_code": "200"}
        assert (
            metrics.registry.get_sample_value("http_server_request_duration_seconds_count", labels)
            == per_route
        )
