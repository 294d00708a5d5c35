"""The request histogram in shared memory: prometheus_client's buckets and file layout, nothing lost."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable

import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from asyncproof.monitoring import contract
from asyncproof.monitoring import recorder as recorder_module
from asyncproof.monitoring.contract import HTTP_DURATION_BUCKETS, HTTP_SERVER_REQUEST_DURATION
from asyncproof.monitoring.recorder import FILE_PREFIX, HttpRecorder, SeriesFile, SeriesLimitError

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
KEYS = [("GET", "/items/{item_id}", 200), ("POST", "/items", 201), ("GET", "unmatched", 404)]


def durations() -> list[float]:
    # every bound exactly, just either side of it, zero and far past the last bound
    found = [0.0, 1e9]
    for bound in HTTP_DURATION_BUCKETS:
        found += [bound, bound * 0.999999, bound * 1.000001]
    return found


def samples(metrics: Iterable[Metric]) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in metrics
        if metric.name == HTTP_SERVER_REQUEST_DURATION.name
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def recorder(folder: str | None = None, registry: CollectorRegistry | None = None) -> HttpRecorder:
    active = Gauge("active", "in flight", ["http_request_method"], registry=registry)
    return HttpRecorder(
        HTTP_SERVER_REQUEST_DURATION, active, buckets=HTTP_DURATION_BUCKETS, multiprocess_dir=folder
    )


def observed_directly() -> Samples:
    registry = CollectorRegistry()
    spec = HTTP_SERVER_REQUEST_DURATION
    histogram = Histogram(spec.name, spec.help, spec.labels, registry=registry, buckets=HTTP_DURATION_BUCKETS)
    for position, key in enumerate(KEYS):
        for seconds in durations()[position:]:
            histogram.labels(key[0], key[1], str(key[2])).observe(seconds)
    return samples(registry.collect())


def record_all(target: HttpRecorder) -> None:
    for position, key in enumerate(KEYS):
        for seconds in durations()[position:]:
            target.record(key, seconds)


def test_recorded_durations_give_the_samples_observe_would() -> None:
    target = recorder()
    record_all(target)
    assert samples(target.collect()) == observed_directly()


def test_the_file_is_read_by_prometheus_clients_own_multiprocess_collector(
    tmp_path: pytest.TempPathFactory,
) -> None:
    target = recorder(str(tmp_path))
    record_all(target)
    files = [str(path) for path in tmp_path.iterdir()]  # type: ignore[attr-defined]
    assert [os.path.basename(name) for name in files] == [f"{FILE_PREFIX}{os.getpid()}.db"]
    merged = MultiProcessCollector.merge(files, accumulate=True)
    assert samples(merged) == observed_directly()


def test_a_process_killed_with_sigkill_leaves_every_recorded_request_in_its_file(tmp_path: object) -> None:
    folder = str(tmp_path)
    target = recorder(folder)
    child = os.fork()
    if child == 0:  # a worker: records, then dies without any chance to flush
        try:
            record_all(target)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGKILL
    files = [os.path.join(folder, name) for name in os.listdir(folder)]
    assert [os.path.basename(name) for name in files] == [f"{FILE_PREFIX}{child}.db"]  # its own file
    assert samples(MultiProcessCollector.merge(files, accumulate=True)) == observed_directly()
    assert samples(target.collect()) == samples([])  # the parent recorded nothing


def test_in_flight_is_started_minus_recorded() -> None:
    registry = CollectorRegistry()
    target = recorder(registry=registry)
    target.started.extend(["GET", "GET", "GET", "POST"])
    target.record(("GET", "/a", 200), 0.01)
    target.flush()
    value = registry.get_sample_value
    assert value("active", {"http_request_method": "GET"}) == 2
    assert value("active", {"http_request_method": "POST"}) == 1
    target.record(("POST", "/b", 201), 0.01)
    target.record(("GET", "/a", 200), 0.01)
    target.flush()
    assert value("active", {"http_request_method": "GET"}) == 1
    assert value("active", {"http_request_method": "POST"}) == 0


def test_series_of_different_key_lengths_keep_their_values_apart() -> None:
    target = recorder()
    keys = [("GET", "/" + "x" * length, 200) for length in range(0, 40)]
    for number, key in enumerate(keys):
        target.record(key, 0.001 * (number + 1))
    for metric in target.collect():
        by_route = {s.labels["http_route"]: s.value for s in metric.samples if s.name.endswith("_sum")}
    assert by_route == {key[1]: pytest.approx(0.001 * (number + 1)) for number, key in enumerate(keys)}


def test_a_full_series_space_is_a_clear_error() -> None:
    store = SeriesFile(capacity=4096)
    store.add(["a" * 100] * 10)
    with pytest.raises(SeriesLimitError, match="too many values"):
        store.add(["b" * 100] * 30)


def test_the_contract_layout_is_what_the_recorder_writes() -> None:
    target = recorder()
    target.record(("GET", "/a", 200), 0.2)
    (family,) = target.collect()
    assert family.type == "histogram"
    assert {s.name for s in family.samples} == {
        f"{contract.HTTP_SERVER_REQUEST_DURATION.name}_{suffix}"
        for suffix in ("bucket", "count", "sum", "created")
    }


def test_a_file_left_under_this_pid_is_archived_and_registries_share_the_process_file(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = str(tmp_path)
    monkeypatch.setattr(recorder_module, "_files", {})
    recorder(folder).record(("GET", "/old", 200), 0.01)
    monkeypatch.setattr(recorder_module, "_files", {})  # as if a dead process had had this pid
    second, third = recorder(folder), recorder(folder)  # two registries in one process
    second.record(("GET", "/new", 200), 0.01)
    third.record(("GET", "/new", 200), 0.02)
    files = sorted(name for name in os.listdir(folder) if name.endswith(".db"))
    assert files == sorted(["histogram_archive.db", f"{FILE_PREFIX}{os.getpid()}.db"])
    merged = samples(MultiProcessCollector.merge([os.path.join(folder, name) for name in files]))
    counts = {
        dict(labels)["http_route"]: value
        for (name, labels), value in merged.items()
        if name.endswith("_count")
    }
    assert counts == {"/old": 1.0, "/new": 2.0}


def test_single_process_mode_exports_created_as_prometheus_client_does() -> None:
    before = time.time()
    target = recorder()
    target.record(("GET", "/a", 200), 0.2)
    (family,) = target.collect()
    created = [s for s in family.samples if s.name.endswith("_created")]
    assert [s.labels for s in created] == [
        {"http_request_method": "GET", "http_route": "/a", "http_response_status_code": "200"}
    ]
    assert before <= created[0].value <= time.time()
