"""``asyncproof audit`` without processes: verdicts, the figures of a phase's window, the watchdog's
lines, the gates file, the requests found in a schema, and the reports. Never imports Locust."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import schemathesis
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from asyncproof.loadtests import audit, audit_report, openapi_cases, stats, verdicts
from asyncproof.loadtests.audit import AuditError
from asyncproof.loadtests.openapi_cases import Route
from asyncproof.monitoring import stalls

# --- verdicts ------------------------------------------------------------------------------------


def route_verdict(**figures: Any) -> str:
    base = {"would_restart": 0, "threadpool_waiting_max": 0.0, "fail_ratio": 0.0, "stalls": 0, "slow": False}
    return verdicts.judge_route(**{**base, **figures})


@pytest.mark.parametrize(
    ("figures", "verdict"),
    [
        ({}, verdicts.HEALTHY),
        ({"stalls": 4}, verdicts.BLOCKS),  # stalled the loop, yet the probes held
        ({"stalls": 4, "threadpool_waiting_max": 3.0}, verdicts.BLOCKS),
        ({"threadpool_waiting_max": 3.0}, verdicts.QUEUES),
        ({"would_restart": 1, "stalls": 4, "slow": True}, verdicts.RESTARTS),  # restarts wins
        ({"fail_ratio": 0.5, "stalls": 4}, verdicts.ERRORS),
        ({"fail_ratio": None}, verdicts.ERRORS),  # nothing measured is not healthy
        ({"slow": True}, verdicts.SLOW),
        ({"slow": True, "threadpool_waiting_max": 1.0}, verdicts.QUEUES),  # slow only when otherwise healthy
        ({"slow": True, "fail_ratio": 0.2}, verdicts.ERRORS),
    ],
)
def test_judge_route(figures: dict[str, Any], verdict: str) -> None:
    assert route_verdict(**figures) == verdict


def test_judge_as_prove_does() -> None:
    healthy = {"would_restart": 0, "threadpool_waiting_max": None, "fail_ratio": 0.01}
    assert verdicts.judge(**healthy) == verdicts.HEALTHY  # at the ratio, not over it
    assert verdicts.judge(**{**healthy, "fail_ratio": 0.011}) == verdicts.ERRORS
    assert verdicts.judge(**{**healthy, "fail_ratio": None}) == verdicts.ERRORS
    assert verdicts.judge(**healthy, polls_404=1) == verdicts.LOSES_POLLS
    assert verdicts.judge(**healthy, tasks_failed=1) == verdicts.ERRORS
    assert verdicts.judge(**{**healthy, "would_restart": 2}, polls_404=1) == verdicts.RESTARTS


def test_severity_orders_worst_first() -> None:
    assert verdicts.severity(verdicts.RESTARTS) == 0
    assert verdicts.severity("restarts, worker killed") == 0  # a combined verdict by its first word
    assert verdicts.severity("no such verdict") == len(verdicts.SEVERITY)
    mixed = [verdicts.SKIPPED, verdicts.HEALTHY, verdicts.SLOW, verdicts.BLOCKS, verdicts.RESTARTS]
    assert verdicts.worst_first(mixed) == [*reversed(mixed)]


# --- probe events and a window's figures -----------------------------------------------------------


def probes(*oks: bool) -> list[stats.Sample]:
    """One probe a second, started on the second: 1 s when it failed (timed out), 5 ms when it passed."""
    return [(second + (0.005 if ok else 1.0), 5.0 if ok else 1000.0, ok) for second, ok in enumerate(oks)]


def test_three_failed_liveness_probes_are_one_restart_and_counting_starts_again() -> None:
    assert audit.probe_events(probes(True, False, False, True, False), 3, restarts=True) == []
    assert audit.probe_events(probes(False, False, False), 3, restarts=True) == [3.0]
    assert len(audit.probe_events(probes(*[False] * 6), 3, restarts=True)) == 2
    assert len(audit.probe_events(probes(*[False] * 8), 3, restarts=True)) == 2


def test_readiness_acts_once_until_a_probe_passes() -> None:
    assert len(audit.probe_events(probes(*[False] * 8), 3, restarts=False)) == 1
    again = probes(False, False, False, False, True, False, False, False)
    assert audit.probe_events(again, 3, restarts=False) == [3.0, 8.0]


def test_probe_events_order_probes_by_their_start() -> None:
    # the passing probe ended before the third failure but started after it: three in a row failed
    samples = [(2.6, 100.0, True), (3.0, 1000.0, False), (1.0, 1000.0, False), (2.0, 1000.0, False)]
    assert audit.probe_events(samples, 3, restarts=True) == [3.0]


T0 = 1000.0
START, END = T0 + 10, T0 + 20


def scrape(at: float, waiting: float, stalled: float, blocked: float = 0, lag: float = 0) -> dict[str, Any]:
    taken = stats.Scrape(at, lag_max=lag, threadpool_waiting=waiting)
    taken.stalls, taken.blocked_seconds = {"/r": stalled, "/other": stalled * 3}, {"/r": blocked}
    return stats.scrape_to_dict(taken)


RAW: dict[str, Any] = {
    "started": T0,
    "samples": {
        "GET /r": [
            (T0 + 5, 10.0, True),  # before the window
            (T0 + 11, 100.0, True),
            (T0 + 12, 200.0, False),
            (T0 + 15, 300.0, True),
            (T0 + 19.9, 400.0, True),
            (T0 + 20, 5000.0, False),  # at its end: the next window's
        ],
        "GET /other": [(T0 + 12, 9000.0, False)],
        "PROBE liveness": [
            *[(T0 + t, 1000.0, False) for t in (2, 3, 4)],  # a restart before the window
            (T0 + 5, 5.0, True),
            (T0 + 10.5, 1000.0, False),  # ended inside, started before: not this window's
            (T0 + 11.6, 1000.0, False),
            (T0 + 12.6, 1000.0, False),  # the third in a row: would restart, inside the window
            (T0 + 13.0, 5.0, True),
            (T0 + 20.4, 1000.0, False),  # started inside, ended after
        ],
        "PROBE readiness": [(T0 + 10.8, 1000.0, False), (T0 + 15.0, 5.0, True), (T0 + 16.5, 1000.0, False)],
    },
    "scrapes": [
        scrape(T0 + 9.5, waiting=7, stalled=2),  # before: the baseline, not a waiting figure
        scrape(T0 + 12, waiting=3, stalled=3, lag=0.3),
        scrape(T0 + 18, waiting=5, stalled=6, blocked=1.5),
        scrape(T0 + 20.8, waiting=1, stalled=7, blocked=1.8),  # within a second after the end
        scrape(T0 + 30, waiting=9, stalled=20, blocked=9.0),
    ],
}


def test_window_figures_count_only_what_happened_in_the_window() -> None:
    figures = audit.window_figures(RAW, ["GET /r"], START, END, routes=["/r"])
    assert figures["requests"] == 4
    assert figures["failures"] == 1
    assert figures["fail_ratio"] == 0.25
    assert (figures["p50_ms"], figures["p99_ms"], figures["max_ms"]) == (200.0, 400.0, 400.0)
    assert figures["probe_failures"] == 4  # by probe start: 3 liveness, 1 readiness
    assert figures["would_restart"] == 1
    assert figures["would_unready"] == 0
    assert figures["threadpool_waiting_max"] == 5
    assert figures["loop_lag_max_s"] == 0.3
    assert figures["stalls"] == 5  # 7 - 2: since the last scrape before the window, of "/r" only
    assert figures["blocked_seconds"] == 1.8


def test_window_figures_of_a_route_without_requests_is_an_error_not_healthy() -> None:
    figures = audit.window_figures(RAW, ["GET /silent"], START, END, routes=["/silent"])
    assert (figures["requests"], figures["fail_ratio"], figures["stalls"]) == (0, None, 0)
    assert route_verdict(fail_ratio=figures["fail_ratio"]) == verdicts.ERRORS


def test_phases_each_route_alone_then_together() -> None:
    quick = audit.PROFILES["quick"]  # 3 s a phase, 0.5 s settling, 8 s at most; 1.5 s lead
    plan = audit.phases(["GET /a", "POST /b"], quick, together_seconds=10)
    assert plan == [
        {"name": "GET /a", "kind": "routes", "routes": ["GET /a"], "start": 1.5, "end": 4.5},
        {"name": "POST /b", "kind": "routes", "routes": ["POST /b"], "start": 5.0, "end": 8.0},
        {"name": "together", "kind": "together", "routes": ["GET /a", "POST /b"], "start": 8.5, "end": 18.5},
    ]
    assert audit.longest_run(plan, quick) == 1.5 + (3 + 8) + (3 + 8) + (10 + 8) + 5
    assert [phase["name"] for phase in audit.phases(["GET /a"], quick, together_seconds=0)] == ["GET /a"]
    assert audit.phases([], quick, together_seconds=10) == []
    # your own users (-f): a phase of their own, twice as long, before the one all together
    with_users = audit.phases(["GET /a"], quick, together_seconds=10, locustfile=True)
    assert [(p["name"], p["kind"], p["end"] - p["start"]) for p in with_users] == [
        ("GET /a", "routes", 3),
        (audit.LOCUSTFILE_PHASE, "locustfile", 6),
        ("together", "together", 10),
    ]
    only_users = audit.phases([], quick, together_seconds=10, locustfile=True)
    assert [p["kind"] for p in only_users] == ["locustfile", "together"]
    ran = [{**plan[0], "end": 7.5}, plan[2]]  # as the run settled them: the first took longer
    assert audit.windows(ran) == {"GET /a": (1.5, 7.5), "together": (8.5, 18.5)}


# --- the stall watchdog's lines ---------------------------------------------------------------------

PLACE = "app/routers/reports.py:12 in monthly_report (time.sleep)"


def test_blocked_places_from_single_and_summary_lines() -> None:
    log = "\n".join(
        [
            "Booting worker with pid: 12",
            f"2025-01-01 10:00:00 WARNING asyncproof.stalls: event loop blocked 0.31 s in GET /reports/monthly at {PLACE}",
            f"event loop blocked 0.30 s in GET /reports/monthly at {PLACE} over 7 more stalls in the last 60 s (0.31 s the longest)",
            f"event loop blocked 1.20 s so far in GET /reports/monthly at {PLACE}",  # logged again once it ends
            "event loop blocked 0.25 s in POST /items/{item_id} at app/items.py:40 in save over 1 more stall in the last 60 s (0.25 s the longest)",
            "event loop blocked 0.20 s outside any request at app/main.py:9 in warm_up (time.sleep)",
            "event loop blocked 0.20 s in GET /plain outside application code",
        ]
    )
    assert audit.blocked_places(log) == {
        "GET /reports/monthly": {PLACE: 8},
        "POST /items/{item_id}": {"app/items.py:40 in save": 1},
        "GET /plain": {"outside application code": 1},
    }


def test_blocked_places_reads_what_the_watchdog_logs(caplog: pytest.LogCaptureFixture) -> None:
    place, call = PLACE.removesuffix(" (time.sleep)"), "time.sleep"
    stall = stalls.Stall(
        "/reports/monthly", "GET", place, call, (), None, 0.0, detected=0.0, seconds=0.31, samples=3
    )
    window = stalls._Window(until=60.0, count=7, seconds=2.1, longest=0.31, last=stall)
    with caplog.at_level(logging.WARNING, logger="asyncproof.stalls"):
        stalls._log(stall, 0.31)
        stalls._log(stall, 1.2, ongoing=True)
        stalls._log_summary(window, stall, 60.0)
    assert audit.blocked_places("\n".join(caplog.messages)) == {"GET /reports/monthly": {PLACE: 8}}


def test_blocked_places_outside_application_code_with_its_call(caplog: pytest.LogCaptureFixture) -> None:
    stall = stalls.Stall("/r", "GET", None, "json.dumps", (), None, 0.0, detected=0.0, seconds=0.3, samples=3)
    with caplog.at_level(logging.WARNING, logger="asyncproof.stalls"):
        stalls._log(stall, 0.3)
    assert audit.blocked_places("\n".join(caplog.messages)) == {
        "GET /r": {"outside application code (json.dumps)": 1}
    }


# --- the gates file ----------------------------------------------------------------------------------


def gates_file(tmp_path: Path, text: str, name: str = "gates.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("thresholds: [unclosed\n", "not valid YAML"),
        ("just: words\n", "give 'thresholds'"),
        ("verdicts:\n  'GET /r': [fine]\n", "'fine'.*not a list of verdicts; choose from restarts"),
        ("verdicts:\n  'GET /r': []\n", "not a list of verdicts"),
        ("thresholds:\n  'GET /r': ['p99 <']\n", r"gates.yaml: 'GET /r': 'p99 <': write a condition"),
        ("thresholds:\n  'GET /r': ['latency < 3']\n", "unknown figure 'latency'"),
    ],
)
def test_a_wrong_gates_file_is_bad_input_that_says_why(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AuditError, match=message):
        audit.load_gates(gates_file(tmp_path, text))


@pytest.mark.parametrize("text", ["verdicts:\n  'GET /r': 5\n", "verdicts: [healthy]\n"])
def test_verdicts_of_the_wrong_shape_are_bad_input(tmp_path: Path, text: str) -> None:
    with pytest.raises(AuditError, match="verdicts"):
        audit.load_gates(gates_file(tmp_path, text))


def test_a_missing_gates_file(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match=r"cannot read the gates file .*missing\.yaml"):
        audit.load_gates(str(tmp_path / "missing.yaml"))


def test_without_a_gates_file_only_healthy_is_allowed() -> None:
    gates = audit.load_gates(None)
    assert gates.conditions == []
    route = Route("GET", "/r")
    assert gates.allows(route, verdicts.HEALTHY)
    assert not gates.allows(route, verdicts.SLOW)
    assert not gates.allows(route, verdicts.BLOCKS)


def test_a_route_allowed_to_queue_may_also_be_healthy(tmp_path: Path) -> None:
    gates = audit.load_gates(gates_file(tmp_path, "verdicts:\n  'POST /reports': [queues]\n"))
    route = Route("POST", "/reports")
    assert gates.allows(route, verdicts.QUEUES)
    assert gates.allows(route, verdicts.HEALTHY)  # fixing the route must not fail the audit
    assert not gates.allows(route, verdicts.RESTARTS)


def test_verdicts_allowed_by_route_path_pattern_and_tag(tmp_path: Path) -> None:
    text = """
thresholds:
  "*": ["p99 < 1s"]
verdicts:
  "GET /reports/monthly": [blocks the loop, slow]
  /admin/*: queues
  legacy: [healthy, errors]
"""
    gates = audit.load_gates(gates_file(tmp_path, text))
    assert [(c.target, c.text) for c in gates.conditions] == [("*", "p99 < 1s")]
    monthly = Route("GET", "/reports/monthly")
    assert gates.allows(monthly, verdicts.BLOCKS)
    assert not gates.allows(monthly, verdicts.RESTARTS)
    admin = Route("POST", "/admin/users")
    assert gates.allows(admin, verdicts.QUEUES)
    assert gates.allows(admin, "queues, worker killed")  # a combined verdict by its first word
    assert not gates.allows(admin, verdicts.ERRORS)
    legacy = Route("GET", "/v1/old", tags=("legacy",))
    assert gates.allows(legacy, verdicts.ERRORS)
    other = Route("GET", "/other", tags=("reports",))
    assert gates.allows(other, verdicts.HEALTHY)
    assert not gates.allows(other, verdicts.ERRORS)


def test_the_default_can_be_widened_and_json_is_read_too(tmp_path: Path) -> None:
    path = gates_file(tmp_path, '{"verdicts": {"*": ["healthy", "slow"]}}', name="gates.json")
    gates = audit.load_gates(path)
    assert gates.allows(Route("GET", "/any"), verdicts.SLOW)
    assert not gates.allows(Route("GET", "/any"), verdicts.QUEUES)


# --- options and the exit code -------------------------------------------------------------------


def test_parse_headers() -> None:
    given = ["Authorization: Bearer a:b", "X-Token:abc"]
    assert audit.parse_headers(given) == {"Authorization": "Bearer a:b", "X-Token": "abc"}
    for wrong in ("NoColon", "Bad Name: x", ": value"):
        with pytest.raises(AuditError, match="'Name: value'"):
            audit.parse_headers([wrong])


def test_loopback() -> None:
    local = ["http://127.0.0.1:8000", "http://localhost:8000/api", "http://[::1]:8000", "http://127.0.0.2"]
    assert all(audit.loopback(url) for url in local)
    assert not any(audit.loopback(url) for url in ["http://10.0.0.5:8000", "https://api.example.com", "/x"])


def test_exit_code() -> None:
    ok_gate, failed_gate = {"passed": True}, {"passed": False}
    assert audit.exit_code({"routes": [{"allowed": True}], "gates": [ok_gate]}) == 0
    assert audit.exit_code({"routes": [{"allowed": True}], "gates": [failed_gate]}) == 3
    assert audit.exit_code({"routes": [{"allowed": True}, {"allowed": False}], "gates": [failed_gate]}) == 1


# --- routes and their requests --------------------------------------------------------------------


def test_matches_and_select() -> None:
    admin = Route("POST", "/admin/users", tags=("admin",))
    assert openapi_cases.matches(admin, ["POST /admin/*"])
    assert openapi_cases.matches(admin, ["post /admin/users"])  # the method in any case
    assert not openapi_cases.matches(admin, ["GET /admin/*"])
    assert openapi_cases.matches(admin, ["/admin/*"])
    assert openapi_cases.matches(admin, ["adm*"])
    assert not openapi_cases.matches(admin, ["/reports/*", "reports"])
    routes = [admin, Route("GET", "/reports", tags=("reports",)), Route("GET", "/health", skipped="own")]
    openapi_cases.select(routes, only=["admin", "reports"], exclude=["/reports"])
    assert [route.skipped for route in routes] == [None, "left out by --exclude", "own"]
    openapi_cases.select(routes, only=["GET *"], exclude=[])
    assert routes[0].skipped == "not chosen by --only"


def test_merge_headers_replaces_a_generated_header_whatever_its_case() -> None:
    generated = {"x-token": "generated", "Accept": "*/*"}
    merged = openapi_cases.merge_headers(generated, {"X-Token": "real"})
    assert merged == {"Accept": "*/*", "X-Token": "real"}


def test_accepted_answers_are_kept_and_refusals_are_not() -> None:
    assert all(
        openapi_cases.accepted(status) for status in (200, 204, 302, 500, 503, None)
    )  # None: no answer
    assert not any(openapi_cases.accepted(status) for status in (400, 401, 404, 422))


def test_try_requests_keeps_what_the_app_accepted() -> None:
    def get(path: str) -> dict[str, Any]:
        return {"method": "GET", "path": path}

    missing = Route("GET", "/items/{id}", requests=[get("/items/1"), get("/items/2")], source="generated")
    crashes = Route("GET", "/crash", requests=[get("/crash?a=1"), get("/crash?a=bad")], source="generated")
    examples = Route("POST", "/orders", requests=[get("/orders?example")], source="examples")
    chosen_out = Route("GET", "/skipped", requests=[get("/skipped")], skipped="left out by --exclude")
    answers = {"/crash?a=1": 500, "/crash?a=bad": 422, "/orders?example": 401, "/orders?generated": 201}
    sent: list[str] = []

    def send(request: dict[str, Any]) -> int | None:
        sent.append(request["path"])
        return answers.get(request["path"], 404)

    regenerated: list[str] = []

    def regenerate(route: Route) -> list[dict[str, Any]]:
        regenerated.append(route.key)
        return [get("/orders?generated")]

    openapi_cases.try_requests([missing, crashes, examples, chosen_out], send, regenerate)
    assert missing.requests == []
    assert missing.skipped is not None
    assert "2 x 404" in missing.skipped
    assert missing.answers == {"404": 2}
    assert crashes.skipped is None
    assert crashes.requests == [get("/crash?a=1")]  # a server error is a finding: loaded
    assert regenerated == ["POST /orders"]
    assert (examples.skipped, examples.source) == (None, "generated")
    assert examples.requests == [get("/orders?generated")]
    assert "/skipped" not in sent


class Report(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"title": "monthly", "year": 2024}]})
    title: str
    year: int


class Item(BaseModel):
    name: str = Field(min_length=1, max_length=10)
    count: int = Field(ge=0, le=5)


def small_app() -> FastAPI:
    app = FastAPI()

    @app.post("/reports", tags=["reports"])
    async def create_report(report: Report) -> dict[str, str]:
        return {}

    @app.post("/items")
    async def create_item(item: Item) -> dict[str, str]:
        return {}

    @app.get("/search")
    async def search(q: str, limit: int = 10) -> dict[str, str]:
        return {}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {}

    return app


@pytest.fixture(scope="module")
def schema_routes() -> dict[str, Route]:
    schema = schemathesis.openapi.from_dict(small_app().openapi())
    return {route.key: route for route in openapi_cases.routes_of(schema, {"/health"}, count=3)}


def test_routes_of_leaves_the_audits_own_paths_out(schema_routes: dict[str, Route]) -> None:
    assert sorted(schema_routes) == ["GET /search", "POST /items", "POST /reports"]
    assert schema_routes["POST /reports"].tags == ("reports",)
    assert all(route.skipped is None for route in schema_routes.values())


def test_an_operation_with_examples_sends_exactly_them(schema_routes: dict[str, Route]) -> None:
    route = schema_routes["POST /reports"]
    assert route.source == "examples"
    assert [(sent["method"], sent["path"], sent["json"]) for sent in route.requests] == [
        ("POST", "/reports", {"title": "monthly", "year": 2024})
    ]


def test_an_operation_without_examples_gets_valid_generated_requests(schema_routes: dict[str, Route]) -> None:
    route = schema_routes["POST /items"]
    assert route.source == "generated"
    assert route.requests
    for sent in route.requests:
        assert (sent["method"], sent["path"]) == ("POST", "/items")
        Item.model_validate(sent["json"])  # raises if the schema's limits were not kept


def test_query_parameters_travel_in_the_path(schema_routes: dict[str, Route]) -> None:
    route = schema_routes["GET /search"]
    assert route.requests
    for sent in route.requests:
        url = urlsplit(sent["path"])
        assert url.path == "/search"
        query = parse_qs(url.query, keep_blank_values=True)
        assert "q" in query
        int(query.get("limit", ["10"])[0])  # an integer, when it is given


# --- the reports ---------------------------------------------------------------------------------


def report_row(route: str, verdict: str, *, allowed: bool = True, **figures: Any) -> dict[str, Any]:
    row = {"route": route, "verdict": verdict, "allowed": allowed, "skipped": None, "gates_failed": []}
    return {**row, **figures}


SLOW_GATE = {"target": "GET /reports/monthly", "condition": "p99 < 100ms", "observed": 310.0, "passed": False}
REFUSED = "every generated request was refused (3 x 404)"
REPORT: dict[str, Any] = {
    "started": "2025-01-01T10:00:00+00:00",
    "seconds": 42.0,
    "routes": [
        report_row(
            "GET /reports/monthly",
            verdicts.BLOCKS,
            allowed=False,
            requests=30,
            p99_ms=310.0,
            stalls=9,
            blocked_at=PLACE,
            gates_failed=[SLOW_GATE],
        ),
        report_row("GET /items", verdicts.HEALTHY, requests=400, p99_ms=12.0, stalls=0),
        {"route": "GET /items/{id}", "verdict": verdicts.SKIPPED, "skipped": REFUSED, "allowed": True},
    ],
    "together": {"seconds": 30.0, "probe_failures": 2, "would_restart": 0},
    "gates": [
        SLOW_GATE,
        {"target": "probe", "condition": "would_restart == 0", "observed": 1.0, "passed": False},
        {"target": "server", "condition": "stalls == 0", "observed": 9.0, "passed": True},
    ],
}


def test_junit_one_case_per_route() -> None:
    suite = audit_report.junit(REPORT).getroot()
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert list(cases) == ["GET /reports/monthly", "GET /items", "GET /items/{id}", "server and probes gates"]
    failure = cases["GET /reports/monthly"].find("failure")
    assert failure is not None
    assert failure.get("type") == verdicts.BLOCKS
    assert "verdict 'blocks the loop' is not allowed" in failure.get("message", "")
    assert "gate 'p99 < 100ms' failed: observed 310.0" in failure.get("message", "")
    assert cases["GET /items"].find("failure") is None
    skipped = cases["GET /items/{id}"].find("skipped")
    assert skipped is not None
    assert skipped.get("message") == REFUSED
    server = cases["server and probes gates"].find("failure")
    assert server is not None
    assert server.get("message") == "probe: would_restart == 0 (observed 1.0)"  # the failed one only
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "2", "1")


def test_table_shows_the_verdicts_and_what_is_not_allowed() -> None:
    lines = audit_report.table(REPORT).splitlines()
    monthly = next(line for line in lines if line.startswith("GET /reports/monthly"))
    assert monthly.endswith("blocks the loop  <-- not allowed")
    assert PLACE in monthly
    items = next(line for line in lines if line.startswith("GET /items "))
    assert items.endswith("healthy")
    assert "not allowed" not in items
    assert any(line.startswith("GET /items/{id}") and line.endswith(f"skipped: {REFUSED}") for line in lines)
    assert lines[-1] == "all routes together for 30.0 s: 2 probe failures, 0 would-restart events"
