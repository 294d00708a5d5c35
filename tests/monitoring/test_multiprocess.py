"""Multiprocess exposition: files of many fake workers, written the way prometheus_client writes them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from asyncproof.monitoring.multiprocess import (
    MultiprocessCollector,
    mark_process_dead,
    sweep,
    wipe,
    worker_pids,
)

WorkerFactory = Callable[[int], None]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def worker(folder: Path, monkeypatch: pytest.MonkeyPatch) -> WorkerFactory:
    """Record what one worker with the given pid would have written."""

    def run(pid: int) -> None:
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: pid))
        requests = Counter("requests", "Requests.", ["route"], registry=None)
        latency = Histogram("latency_seconds", "Latency.", ["route"], registry=None, buckets=(0.1, 1))
        active = Gauge("active", "In flight.", registry=None, multiprocess_mode="livesum")
        rss = Gauge("rss_bytes", "RSS.", registry=None, multiprocess_mode="liveall")
        requests.labels("/a").inc(3)
        latency.labels("/a").observe(0.05)
        latency.labels("/a").observe(0.5)
        active.set(2)
        rss.set(1000 + pid)

    return run


def scrape(folder: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(MultiprocessCollector(str(folder)))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in registry.collect()
        for sample in metric.samples
    }


def test_counts_are_summed_across_workers(folder: Path, worker: WorkerFactory) -> None:
    for pid in (101, 102, 103):
        worker(pid)
    samples = scrape(folder)
    assert samples[("requests_total", (("route", "/a"),))] == 9
    assert samples[("latency_seconds_count", (("route", "/a"),))] == 6
    assert samples[("latency_seconds_bucket", (("le", "0.1"), ("route", "/a")))] == 3
    assert samples[("active", ())] == 6
    assert samples[("rss_bytes", (("pid", "102"),))] == 1102


def test_dead_worker_keeps_its_counts_and_loses_its_live_gauges(folder: Path, worker: WorkerFactory) -> None:
    for pid in (101, 102):
        worker(pid)
    mark_process_dead(101, str(folder))
    samples = scrape(folder)
    assert samples[("requests_total", (("route", "/a"),))] == 6
    assert samples[("latency_seconds_sum", (("route", "/a"),))] == pytest.approx(1.1)
    assert samples[("active", ())] == 2
    assert ("rss_bytes", (("pid", "101"),)) not in samples
    assert ("rss_bytes", (("pid", "102"),)) in samples


def test_files_of_dead_workers_are_folded_so_the_folder_stays_small(
    folder: Path, worker: WorkerFactory
) -> None:
    worker(1)
    files_with_one_worker = len(list(folder.glob("*.db")))
    for pid in range(2, 202):
        worker(pid)
        mark_process_dead(pid, str(folder))
    # one live worker's files plus one archive per type, however many workers died
    assert len(list(folder.glob("*.db"))) <= files_with_one_worker + 2
    assert worker_pids(str(folder)) == {1}
    samples = scrape(folder)
    assert samples[("requests_total", (("route", "/a"),))] == 3 * 201
    assert samples[("latency_seconds_count", (("route", "/a"),))] == 2 * 201


def test_marking_a_worker_dead_twice_does_not_count_it_twice(folder: Path, worker: WorkerFactory) -> None:
    worker(101)
    mark_process_dead(101, str(folder))
    mark_process_dead(101, str(folder))
    assert scrape(folder)[("requests_total", (("route", "/a"),))] == 3


def test_sweep_retires_only_workers_whose_process_is_gone(folder: Path, worker: WorkerFactory) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(finished.stdout)
    worker(os.getpid())
    worker(dead_pid)
    assert sweep(str(folder)) == [dead_pid]
    assert worker_pids(str(folder)) == {os.getpid()}
    assert scrape(folder)[("requests_total", (("route", "/a"),))] == 6


def test_wipe_empties_the_folder_of_an_earlier_run(folder: Path, worker: WorkerFactory) -> None:
    worker(101)
    wipe(str(folder))
    assert list(folder.glob("*.db")) == []


def test_openmetrics_rendering_of_merged_files(folder: Path, worker: WorkerFactory) -> None:
    worker(101)
    registry = CollectorRegistry()
    registry.register(MultiprocessCollector(str(folder)))
    text = openmetrics_latest(registry).decode()
    assert "# TYPE requests counter" in text
    assert text.endswith("# EOF\n")


def test_collector_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        MultiprocessCollector(str(tmp_path / "nope"))
