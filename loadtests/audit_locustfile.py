"""The load ``asyncproof audit`` runs: the kubelet-like probes throughout, and the routes of the plan,
each alone in its phase, then all together.

The plan (``--audit-plan``, JSON written by :mod:`asyncproof.loadtests.audit`) lists the requests of
every route and the phases as seconds from the start of the run; every user looks up the phase it is
in before each request, so one Locust run covers every phase and the probes never stop. Samples are
named by route (``GET /items/{item_id}``): the gates and the report speak of routes.

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
from locust import FastHttpUser, events, task

from asyncproof.loadtests.plugin import PROBE_TYPE
from asyncproof.loadtests.users import LivenessProbe, ReadinessProbe, _why


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
    once the requests of this one are answered and a liveness probe sent after that passed (at most
    ``settle_max`` seconds later): what a route leaves behind (a backlog on a blocked loop) is its
    own, not the next route's. The phases as they ran are written to ``phases_path``."""

    def __init__(self, environment: Any, document: dict[str, Any]) -> None:
        self.environment = environment
        self.planned = document["phases"]
        self.settle_min = document["settle_seconds"]
        self.settle_max = document["settle_max_seconds"]
        self.phases_path = document["phases_path"]
        self.current: dict[str, Any] | None = None
        self.in_flight = 0
        self.last_probe: tuple[float, bool] = (0.0, False)  # when the last liveness probe was sent, passed
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
        runner = self.environment.runner
        if runner is not None:
            runner.quit()

    def _settle(self) -> bool:
        """Wait for this phase's requests to be answered and the loop to answer a probe again."""
        ended = time.monotonic()
        gevent.sleep(self.settle_min)
        quiet_since: float | None = None
        while time.monotonic() - ended < self.settle_max:
            if self.in_flight == 0:
                quiet_since = quiet_since or time.time()
                sent, passed = self.last_probe
                if sent >= quiet_since and passed:
                    return True
            else:
                quiet_since = None
            gevent.sleep(0.1)
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


@events.request.add_listener
def _probed(request_type: str, name: str, response_time: float, exception: Any, **_: Any) -> None:
    if _schedule is not None and request_type == PROBE_TYPE and name == "liveness":
        _schedule.last_probe = (time.time() - response_time / 1000, exception is None)


class AuditLiveness(LivenessProbe):
    def on_start(self) -> None:
        self.path = _plan(self)["health_path"] + "/live"


class AuditReadiness(ReadinessProbe):
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
                response.failure(_why(response))
            else:
                response.success()
