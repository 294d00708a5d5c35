"""The load ``asyncproof audit`` runs: the kubelet-like probes throughout, and the routes of the plan,
each alone in its phase, then all together.

The plan (``--audit-plan``, JSON written by :mod:`asyncproof.loadtests.audit`) lists the requests of
every route and the phases; a :class:`Schedule` moves the run from one phase to the next, the route
users look up the phase before each request, and a load shape (:class:`AuditShape`) runs the team's
own users (``-f``) in their phase and the last; one Locust run covers every phase and the probes
never stop. Samples are named by route (``GET /items/{item_id}``): the gates and the report speak of
routes.

Each request goes on a new connection, as requests behind a load balancer reach whichever worker is
free to accept; an answer of 5xx or none at all is a failure, a 4xx is the app's answer to its data.
"""

from __future__ import annotations

import json
import random
import time
from functools import cache
from pathlib import Path
from typing import Any

import gevent
import requests
from locust import FastHttpUser, LoadTestShape, events, task

from asyncproof.loadtests import plugin  # noqa: F401  (registers the event listeners)
from asyncproof.loadtests import users as probes  # a module: its user classes are not ours to run


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("asyncproof audit")
    group.add_argument("--audit-plan", default="", help="the plan asyncproof audit wrote")


@cache
def plan(path: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(Path(path).read_text())
    return document


def _plan(user: Any) -> dict[str, Any]:
    return plan(user.environment.parsed_options.audit_plan)


class Schedule:
    """Moves the run from phase to phase. A phase lasts its planned seconds; the next one starts only
    once the requests of this one are answered and the app's liveness endpoint answers again within
    a probe's timeout (at most ``settle_max`` seconds later): what a route leaves behind (a backlog on
    a blocked loop) is its own, not the next route's. The phases as they ran are written to
    ``phases_path``."""

    def __init__(self, environment: Any, document: dict[str, Any]) -> None:
        self.environment = environment
        self.planned = document["phases"]
        self.settle_min = document["settle_seconds"]
        self.settle_max = document["settle_max_seconds"]
        self.phases_path = document["phases_path"]
        self.liveness = (environment.host or "").rstrip("/") + document["health_path"] + "/live"
        self.current: dict[str, Any] | None = None
        self.in_flight = 0
        self.done = False
        self.ran: list[dict[str, Any]] = []

    def run(self) -> None:
        started = time.time()
        gevent.sleep(self.planned[0]["start"] if self.planned else 0)
        for phase in self.planned:
            begin = time.time()
            self.current = phase
            gevent.sleep(phase["end"] - phase["start"])
            self.current = None
            drained = self._settle()
            self.ran.append(
                {**phase, "start": begin - started, "end": time.time() - started, "drained": drained}
            )
            self._write()
        self.done = True  # the shape ends the run

    def _settle(self) -> bool:
        """Wait for this phase's requests to be answered and the loop to answer a liveness check again."""
        ended = time.monotonic()
        gevent.sleep(self.settle_min)
        while time.monotonic() - ended < self.settle_max:
            if self.in_flight == 0 and self._alive():
                return True
            gevent.sleep(0.1)
        return False

    def _alive(self) -> bool:
        try:
            with gevent.Timeout(1.0):
                response = requests.get(self.liveness, timeout=1.0, headers={"Connection": "close"})
            return bool(response.ok)
        except (requests.RequestException, gevent.Timeout):
            return False

    def _write(self) -> None:
        with open(self.phases_path, "w") as file:
            json.dump(self.ran, file)


_schedule: Schedule | None = None


@events.test_start.add_listener
def _start(environment: Any, **_: Any) -> None:
    global _schedule
    options = environment.parsed_options
    if options is None or not options.audit_plan:
        return
    _schedule = Schedule(environment, plan(options.audit_plan))
    gevent.spawn(_schedule.run)


class AuditLiveness(probes.LivenessProbe):
    def on_start(self) -> None:
        self.path = _plan(self)["health_path"] + "/live"


class AuditReadiness(probes.ReadinessProbe):
    def on_start(self) -> None:
        self.path = _plan(self)["health_path"] + "/ready"


class RouteUser(FastHttpUser):
    """Sends the requests of the phase's routes, at ``rate / users`` requests per second at most."""

    fresh = {"Connection": "close"}

    def __init__(self, environment: Any) -> None:
        # a request not answered by then is a failure (0), not a user stuck for a minute
        self.network_timeout = self.connection_timeout = plan(environment.parsed_options.audit_plan)[
            "timeout"
        ]
        super().__init__(environment)

    def wait_time(self) -> float:
        rate = _plan(self)["rate_per_user"]
        return 0.0 if not rate else float(random.expovariate(rate))

    @task
    def load(self) -> None:
        document = _plan(self)
        phase = _schedule.current if _schedule is not None else None
        if phase is None:  # between phases: the server settles
            gevent.sleep(0.1)
            return
        if not phase["routes"]:  # the team's own users' phase
            gevent.sleep(0.1)
            return
        key = random.choice(phase["routes"])
        sent = random.choice(document["routes"][key])
        headers = {**sent.get("headers", {}), **self.fresh}
        assert _schedule is not None
        _schedule.in_flight += 1
        try:
            self._send(key, sent, headers)
        finally:
            _schedule.in_flight -= 1

    def _send(self, key: str, sent: dict[str, Any], headers: dict[str, str]) -> None:
        with self.client.request(
            sent["method"],
            sent["path"],
            name=key.partition(" ")[2],  # Locust keys samples "METHOD name": "GET /items/{item_id}"
            headers=headers,
            json=sent.get("json"),
            data=sent.get("data"),
            catch_response=True,
        ) as response:
            if not response.status_code or response.status_code >= 500:
                response.failure(probes._why(response))
            else:
                response.success()


class AuditShape(LoadTestShape):
    """Which users run when: the probes always; the route users in the routes' phases and while the
    server settles; the team's own users (``-f``) in their phase; all of them together last. The run
    ends when the schedule has run every phase."""

    running: list[type[Any]] | None = None  # the classes of the last tick
    switching = False

    def tick(self) -> tuple[int, float, list[type[Any]]] | None:
        runner: Any = self.runner
        document = plan(runner.environment.parsed_options.audit_plan)
        if _schedule is not None and _schedule.done:
            return None
        probes: list[type[Any]] = [AuditLiveness, AuditReadiness]
        theirs: list[type[Any]] = [c for c in runner.user_classes if c not in (*probes, RouteUser)]
        phase = _schedule.current if _schedule is not None else None
        kind = phase["kind"] if phase is not None else "routes"
        ours: list[type[Any]] = [RouteUser]
        wanted = probes + {"routes": ours, "locustfile": theirs, "together": ours + theirs}[kind]
        if self.running is not None and set(wanted) != set(self.running) and not self.switching:
            # Locust gives new classes only to the users it adds: stop all but the probes first
            self.switching = True
            return len(probes), 100.0, probes
        self.switching = False
        self.running = wanted
        return document["users"] + len(probes), document["spawn_rate"], wanted
