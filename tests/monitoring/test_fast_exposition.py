"""The fast scrape path gives prometheus_client's answer: the incremental merge of the workers' files
(``monitoring.multiprocess``) and the cached-line rendering (``monitoring.render``)."""

from __future__ import annotations

import gzip
import math
import os
import random
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
    values,
)
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.samples import Exemplar

from asyncproof.monitoring import render as render_module
from asyncproof.monitoring.exposition import Exposition, MetricsServer
from asyncproof.monitoring.multiprocess import MultiprocessCollector, mark_process_dead
from asyncproof.monitoring.render import KEEP, render
from tests.processes import free_port

GAUGE_MODES = (
    "all",
    "liveall",
    "min",
    "livemin",
    "max",
    "livemax",
    "sum",
    "livesum",
    "mostrecent",
    "livemostrecent",
)
LABEL_VALUES = ("/a", 'say "hi"', "back\\slash", "new\nline", "ünïcödé ✓", "", "x")
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
ACCEPTS = (
    None,
    "text/plain",
    "text/plain; version=1.0.0; escaping=allow-utf-8",
    "text/plain; version=1.0.0; escaping=values",
    OPENMETRICS,
    "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8",
    "application/openmetrics-text",
)

SortedFamily = tuple[str, str, str, list[tuple[str, tuple[tuple[str, str], ...], float]]]


# -- the merge --------------------------------------------------------------------------------------


def write(path: Path, entries: Sequence[tuple[str, float, float]]) -> None:
    """Add (key, value, timestamp) entries to a file in prometheus_client's layout."""
    mmaped = MmapedDict(str(path))
    try:
        for key, value, timestamp in entries:
            mmaped.write_value(key, value, timestamp)
    finally:
        mmaped.close()


def key(metric: str, name: str, labels: dict[str, str], help_text: str = "Help.") -> str:
    return mmap_key(metric, name, list(labels), list(labels.values()), help_text)


def random_labels(rng: random.Random, names: Sequence[str]) -> dict[str, str]:
    return {name: rng.choice(LABEL_VALUES) for name in names}


def random_folder(folder: Path, rng: random.Random, pids: Sequence[int]) -> None:
    """Every file type and gauge mode, some series in some workers only, an archive, padded keys."""
    for pid in [*pids, "archive"]:
        counters = [
            (
                key("requests", "requests_total", random_labels(rng, ("route", "method"))),
                rng.uniform(0, 100),
                0.0,
            )
            for _ in range(rng.randrange(1, 8))
        ]
        write(folder / f"counter_{pid}.db", counters)
        summaries = []
        for _ in range(rng.randrange(0, 4)):
            labels = random_labels(rng, ("task",))
            summaries.append((key("work_seconds", "work_seconds_sum", labels), rng.uniform(0, 9), 0.0))
            summaries.append((key("work_seconds", "work_seconds_count", labels), rng.randrange(9), 0.0))
        if summaries:
            write(folder / f"summary_{pid}.db", summaries)
        histogram = []
        for _ in range(rng.randrange(1, 6)):
            labels = random_labels(rng, ("route",))
            for le in ("0.005", "0.1", "1.0", "10.0", "+Inf"):
                histogram.append(
                    (
                        key("latency_seconds", "latency_seconds_bucket", {**labels, "le": le}),
                        rng.randrange(5),
                        0.0,
                    )
                )
            histogram.append((key("latency_seconds", "latency_seconds_sum", labels), rng.uniform(0, 30), 0.0))
        rng.shuffle(histogram)
        # the request histogram's own files: keys padded with spaces to one length
        name = (
            f"histogram_asyncproof_{pid}.db"
            if pid != "archive" and rng.random() < 0.5
            else f"histogram_{pid}.db"
        )
        write(folder / name, [(k.ljust(len(k) + rng.randrange(8)), v, t) for k, v, t in histogram])
        if pid == "archive":
            continue
        for mode in GAUGE_MODES:
            gauges = [
                (
                    key(
                        f"pool_{mode}_connections",
                        f"pool_{mode}_connections",
                        random_labels(rng, ("pool",)),
                        f"A {mode} gauge.",
                    ),
                    rng.choice((rng.uniform(-50, 50), 0.0, -1.0, 7.0)),
                    rng.choice((0.0, rng.uniform(1, 1000), 5.0)),
                )
                for _ in range(rng.randrange(1, 5))
            ]
            write(folder / f"gauge_{mode}_{pid}.db", gauges)


def as_sorted(metrics: Iterator[Metric] | Sequence[Metric]) -> list[SortedFamily]:
    return sorted(
        (
            m.name,
            m.type,
            m.documentation,
            sorted((s.name, tuple(sorted(s.labels.items())), s.value) for s in m.samples),
        )
        for m in metrics
    )


def theirs(folder: Path) -> list[Metric]:
    return list(prom_multiprocess.MultiProcessCollector(None, path=str(folder)).collect())


@pytest.mark.parametrize("seed", range(12))
def test_merge_equals_prometheus_client_for_every_file_type_and_gauge_mode(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    random_folder(tmp_path, rng, pids=rng.sample(range(100, 999), rng.randrange(1, 5)))
    ours = list(MultiprocessCollector(str(tmp_path)).collect())
    assert as_sorted(ours) == as_sorted(theirs(tmp_path))
    # float for float and in the same order, so that the bytes of a scrape are the same too
    assert ours == theirs(tmp_path)


def test_a_scrape_body_is_byte_for_byte_prometheus_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for pid in (101, 102, 103):
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda pid=pid: pid))
        requests = Counter("requests", "Requests.", ["route"], registry=None)
        latency = Histogram("latency_seconds", "Latency.", ["route"], registry=None, buckets=(0.1, 1))
        active = Gauge("active", "In flight.", registry=None, multiprocess_mode="livesum")
        rss = Gauge("rss_bytes", "RSS.", registry=None, multiprocess_mode="liveall")
        for route in ("/a", '/"quoted"', "/ü\n"):
            requests.labels(route).inc(pid)
            latency.labels(route).observe(pid / 200)
        active.set(2)
        rss.set(1000 + pid)
    registry = CollectorRegistry()
    prom_multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    exposition = Exposition(CollectorRegistry(), str(tmp_path))
    for accept in ACCEPTS:
        encoder, content_type = choose_encoder(accept or "")
        assert exposition.render(accept) == (encoder(registry), content_type)


def test_new_entries_new_files_and_gone_files_show_at_the_next_scrape(tmp_path: Path) -> None:
    collector = MultiprocessCollector(str(tmp_path))
    rng = random.Random(7)
    random_folder(tmp_path, rng, pids=(1, 2))
    assert as_sorted(collector.collect()) == as_sorted(theirs(tmp_path))
    # workers write more, a new worker comes, another goes
    write(tmp_path / "counter_1.db", [(key("requests", "requests_total", {"route": "/new"}), 5.0, 0.0)])
    write(
        tmp_path / "counter_2.db",
        [(key("requests", "requests_total", {"route": "/a", "method": "x"}), 99.0, 0.0)],
    )
    random_folder(tmp_path, rng, pids=(3,))
    mark_process_dead(2, str(tmp_path))
    assert as_sorted(collector.collect()) == as_sorted(theirs(tmp_path))
    for name in os.listdir(tmp_path):
        if name.startswith("gauge_liveall"):
            os.remove(tmp_path / name)
    assert collector.collect() == theirs(tmp_path)


def counts(routes: Sequence[str], value: float) -> list[tuple[str, float, float]]:
    return [(key("requests", "requests_total", {"route": route}), value, 0.0) for route in routes]


# a worker's gauges (read whole at each scrape) and its histogram (mapped, parsed where it grew)
SIZES = {"small file": ["/a", "/b", "/c"], "big file": [f"/route{i:04}" for i in range(2000)]}


@pytest.mark.parametrize("routes", SIZES.values(), ids=SIZES.keys())
def test_a_file_that_grows_is_read_where_it_grew(tmp_path: Path, routes: list[str]) -> None:
    path = tmp_path / "counter_5.db"
    write(path, counts(routes, 1.0))
    collector = MultiprocessCollector(str(tmp_path))
    assert collector.collect() == theirs(tmp_path)
    write(path, counts(routes[::2], 2.0))
    assert collector.collect() == theirs(tmp_path)
    write(path, counts(["/new", *routes], 3.0))
    assert collector.collect() == theirs(tmp_path)


@pytest.mark.parametrize("routes", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("how", ["removed", "truncated"])
def test_a_file_made_again_under_its_name_is_read_afresh(tmp_path: Path, how: str, routes: list[str]) -> None:
    # a reused pid, a wipe: other series at the offsets the cache knows (keys of one length)
    path = tmp_path / "counter_5.db"
    write(path, counts(routes, 1.0))
    collector = MultiprocessCollector(str(tmp_path))
    assert collector.collect() == theirs(tmp_path)
    if how == "removed":
        os.remove(path)
    else:
        os.truncate(path, 0)  # the same inode, rewritten from the start
    write(path, counts(routes[::-1][1:], 2.0))
    write(path, counts(["/d"], 3.0))
    assert collector.collect() == theirs(tmp_path)


def test_a_metric_whose_files_disagree_on_its_gauge_mode_is_merged_as_prometheus_client_does(
    tmp_path: Path,
) -> None:
    write(tmp_path / "gauge_livesum_1.db", [(key("pool_size", "pool_size", {}), 3.0, 0.0)])
    write(tmp_path / "gauge_livemax_2.db", [(key("pool_size", "pool_size", {}), 5.0, 0.0)])
    write(tmp_path / "gauge_livesum_2.db", [(key("queue", "queue", {}), 1.0, 0.0)])
    assert MultiprocessCollector(str(tmp_path)).collect() == theirs(tmp_path)


def test_scrapes_from_many_threads_agree(tmp_path: Path) -> None:
    random_folder(tmp_path, random.Random(3), pids=(1, 2, 3))
    collector = MultiprocessCollector(str(tmp_path))
    expected = theirs(tmp_path)
    results: list[bool] = []

    def scrape() -> None:
        results.extend(list(collector.collect()) == expected for _ in range(20))

    threads = [threading.Thread(target=scrape) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 80


# -- the rendering ----------------------------------------------------------------------------------


class Families:
    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Sequence[Metric]:
        return self.families


def assert_rendered_as_prometheus_client(families: Sequence[Metric]) -> None:
    for accept in ACCEPTS:
        encoder, content_type = choose_encoder(accept or "")
        assert render(families, accept) == (encoder(Families(families)), content_type), accept


def every_kind_of_family(value: float) -> list[Metric]:
    counter = CounterMetricFamily("jobs", "Jobs done.", labels=["queue"], created=1.5)
    counter.add_metric(["default"], value, created=1700000000.25)
    gauge = GaugeMetricFamily(
        "temperature_celsius", 'Help with "quotes", \\ and\nnewline.', labels=["room", "floor"]
    )
    for room in LABEL_VALUES:
        gauge.add_metric([room, "1"], -value)
    histogram = HistogramMetricFamily("response_seconds", "Responses.", labels=["route"])
    histogram.add_metric(
        ["/a"], [("0.1", value), ("1.0", 2 * value), ("+Inf", 3 * value)], sum_value=value / 3
    )
    summary = SummaryMetricFamily("payload_bytes", "Payloads.", labels=["route"])
    summary.add_metric(['/"q"'], count_value=value, sum_value=value * 1e6)
    info = InfoMetricFamily("build", "Build.", value={"version": "1.2.3", "commit": "ab\\c"})
    states = StateSetMetricFamily("feature", "Features.", value={"a": True, "b": False})
    gauge_histogram = GaugeHistogramMetricFamily(
        "queue_age_seconds", "Ages.", buckets=[("1.0", value), ("+Inf", value)], gsum_value=value
    )
    unknown = UnknownMetricFamily("mystery", "Mystery.", value=value)
    unit = GaugeMetricFamily("disk", "Disk.", value=value, unit="bytes")
    utf8 = GaugeMetricFamily("my.dotted.metric", "Dotted.", labels=["kind.of"])
    utf8.add_metric(["x"], value)
    empty = GaugeMetricFamily("nothing_yet", "No samples.", labels=["x"])
    timestamped = GaugeMetricFamily("stamped", "Timestamps.", labels=["x"])
    timestamped.add_metric(["a"], value, timestamp=1700000000.5)
    exemplars = Metric("with_exemplar", "Exemplar.", "counter")
    exemplars.add_sample("with_exemplar_total", {}, value, exemplar=Exemplar({"trace_id": "abc"}, 1.0))
    return [
        counter,
        gauge,
        histogram,
        summary,
        info,
        states,
        gauge_histogram,
        unknown,
        unit,
        utf8,
        empty,
        timestamped,
        exemplars,
    ]


@pytest.mark.parametrize(
    "value", [0.0, -0.0, 1.0, 2.5, 1e-9, 123456789.0, 1e21, math.inf, -math.inf, math.nan, 3, True]
)
def test_every_kind_of_family_renders_as_prometheus_client_renders_it(value: float) -> None:
    assert_rendered_as_prometheus_client(every_kind_of_family(value))


def test_repeated_renders_with_changing_values_stay_identical() -> None:
    rng = random.Random(1)
    for _ in range(3 * KEEP):
        value = rng.choice((0.0, -0.0, rng.uniform(-1e6, 1e6), float(rng.randrange(100)), math.nan))
        families = every_kind_of_family(value)
        rng.shuffle(families)
        assert_rendered_as_prometheus_client(families)


def test_a_registry_of_prometheus_client_metrics_renders_as_prometheus_client_renders_it() -> None:
    registry = CollectorRegistry()
    counter = Counter("hits", "Hits.", ["page"], registry=registry)
    histogram = Histogram("wait_seconds", "Waits.", ["page"], registry=registry)
    summary = Summary("size_bytes", "Sizes.", registry=registry)
    Info("app", "App.", registry=registry).info({"version": "1"})
    Enum("state", "State.", states=["up", "down"], registry=registry).state("down")
    for page in LABEL_VALUES:
        for _ in range(2):
            counter.labels(page).inc()
            histogram.labels(page).observe(0.3)
            summary.observe(12)
            assert_rendered_as_prometheus_client(list(registry.collect()))


def test_lines_of_series_that_vanished_are_forgotten() -> None:
    for generation in range(10 * KEEP):
        family = GaugeMetricFamily("per_worker", "Per worker.", labels=["pid"])
        for pid in range(100):
            family.add_metric([f"{generation}-{pid}"], 1.0)
        render([family], None)
    cached = render_module._formats[generate_latest]
    assert len(cached.fresh) + len(cached.stale) <= 2 * KEEP * (100 + 1)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_text_format(tmp_path: Path) -> None:
    random_folder(tmp_path, random.Random(11), pids=(1, 2))
    body, _ = Exposition(CollectorRegistry(), str(tmp_path)).render(None)
    families, _ = render(every_kind_of_family(2.0), None)
    checked = subprocess.run(["promtool", "check", "metrics"], input=body + families, capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- the metrics port ---------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    random_folder(tmp_path, random.Random(5), pids=(1, 2))
    renders: list[None] = []
    server = MetricsServer(
        Exposition(CollectorRegistry(), str(tmp_path)), "127.0.0.1", free_port(), lambda: renders.append(None)
    )

    def request(path: str = "/metrics", method: str = "GET", **headers: str) -> Any:
        return urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method, headers=headers),
            timeout=5,
        )

    try:
        yield request
    finally:
        server.close()


def test_the_metrics_port_answers_as_make_wsgi_app_did(served: Callable[..., Any], tmp_path: Path) -> None:
    registry = CollectorRegistry()
    prom_multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    with served("/anything", Accept=OPENMETRICS) as response:
        encoder, content_type = choose_encoder(OPENMETRICS)
        assert response.headers["Content-Type"] == content_type
        assert response.read() == encoder(registry)
    with served("/metrics", **{"Accept-Encoding": "gzip"}) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(response.read()) == generate_latest(registry)
    with served("/metrics?name[]=requests_total&name[]=pool_livesum_connections") as response:
        # prometheus_client's own restricted_registry finds nothing here (the multiprocess collector
        # declares no names); ours keeps the samples of those names, as the parameter means
        wanted = {"requests_total", "pool_livesum_connections"}
        lines = [line for line in response.read().decode().splitlines() if not line.startswith("#")]
        assert lines
        assert {line.split("{")[0].split(" ")[0] for line in lines} == wanted
    with served(method="OPTIONS") as response:
        assert response.headers["Allow"] == "OPTIONS,GET"
    with pytest.raises(urllib.error.HTTPError, match="405"):
        served(method="HEAD")
