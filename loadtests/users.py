"""Locust users: a kubelet-like prober, one user per execution style, and a data-path user.

Pick users by class name on the command line (``locust -f loadtests/locustfile.py LivenessProbe
SyncUser``) or by tag (``--tags probe sync``). The work each request asks for comes from
``--work-kind`` and ``--work-ms``.
"""

from __future__ import annotations

import random
import time
from typing import Any

import gevent
import requests
from locust import FastHttpUser, User, constant, tag, task

from asyncproof.loadtests import results
from asyncproof.loadtests.plugin import PROBE_TYPE, TASK_TYPE, collector

TERMINAL = ("success", "failed")


def _option(user: User, name: str) -> Any:
    return getattr(user.environment.parsed_options, name)


def _why(response: Any) -> str:
    """Why a response counts as failed: its status and body, or the connection error (status 0)."""
    if not response.status_code:
        return f"no response: {response.error!r}"
    return f"status {response.status_code}: {(response.text or '')[:200]}"


class Probe(User):
    """What the kubelet does: one probe per period on a fixed clock, a new connection each time, a
    timeout, and an action once ``--probe-threshold`` consecutive probes failed."""

    abstract = True
    fixed_count = 1  # one prober, however many users the shape asks for
    path = ""
    probe = ""  # "liveness" or "readiness"
    wait_time = constant(0)

    @tag("probe")
    @task
    def probe_forever(self) -> None:
        period = _option(self, "probe_period")
        timeout = _option(self, "probe_timeout")
        threshold = _option(self, "probe_threshold")
        url = self.host.rstrip("/") + self.path  # type: ignore[union-attr]
        consecutive = 0
        next_at = time.monotonic()
        while True:
            ok = self._probe_once(url, timeout)
            consecutive = 0 if ok else consecutive + 1
            if consecutive == threshold:
                self._act(threshold)
                if self.probe == "liveness":
                    consecutive = 0  # the container restarts: counting starts again
            next_at += period
            gevent.sleep(max(0.0, next_at - time.monotonic()))

    def _probe_once(self, url: str, timeout: float) -> bool:
        started = time.perf_counter()
        exception: Exception | None = None
        try:
            # gevent's timeout bounds the whole probe, as the kubelet's does, not each socket read
            with gevent.Timeout(timeout, TimeoutError(f"no answer within {timeout}s")):
                response = requests.get(url, timeout=timeout, headers={"Connection": "close"})
            if not 200 <= response.status_code < 400:
                exception = RuntimeError(f"status {response.status_code}")
        except (requests.RequestException, TimeoutError) as error:
            exception = error
        elapsed = (time.perf_counter() - started) * 1000
        self.environment.events.request.fire(
            request_type=PROBE_TYPE,
            name=self.probe,
            response_time=elapsed,
            response_length=0,
            exception=exception,
            context={},
        )
        return exception is None

    def _act(self, threshold: int) -> None:
        if self.probe == "liveness":
            collector.count(results.probe_counter(results.WOULD_RESTART))
            print(
                f"asyncproof: liveness failed {threshold} times in a row: the pod would be restarted",
                flush=True,
            )
        else:
            collector.count(results.probe_counter(results.WOULD_UNREADY))
            print(
                f"asyncproof: readiness failed {threshold} times in a row: the pod would leave the Service",
                flush=True,
            )


class LivenessProbe(Probe):
    path = "/health/live"
    probe = "liveness"


class ReadinessProbe(Probe):
    path = "/health/ready"
    probe = "readiness"


class WorkUser(FastHttpUser):
    """Posts the configured work to one style's endpoint.

    Each request goes on a new connection, as requests behind a load balancer reach whichever worker
    is free to accept: a kept-alive connection would pin a user to one worker, so a blocked worker
    would only stall its own users and a per-worker task store would never be polled elsewhere.
    """

    abstract = True
    style = ""
    wait_time = constant(0.1)
    fresh = {"Connection": "close"}

    def body(self) -> dict[str, Any]:
        return {"kind": _option(self, "work_kind"), "duration_ms": _option(self, "work_ms")}


class InlineUser(WorkUser):
    """The styles that answer when the work is done."""

    abstract = True

    def work(self) -> None:
        with self.client.post(
            f"/work/{self.style}", json=self.body(), headers=self.fresh, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(_why(response))


class AsyncBlockingUser(InlineUser):
    style = "async-blocking"

    @tag("async-blocking")
    @task
    def async_blocking(self) -> None:
        self.work()


class SyncUser(InlineUser):
    style = "sync"

    @tag("sync")
    @task
    def sync(self) -> None:
        self.work()


class AsyncUser(InlineUser):
    style = "async"

    @tag("async")
    @task
    def async_io(self) -> None:
        self.work()

    def body(self) -> dict[str, Any]:
        return {"kind": "io", "duration_ms": _option(self, "work_ms")}


class TaskUser(WorkUser):
    """Submit, then poll ``GET /tasks/{id}`` until the task is done: what a client of a 202 API does.

    Records the completion time (submit to terminal state) as a ``TASK <style>`` sample, counts polls
    answered 404 and tasks not done by ``--task-deadline``.
    """

    abstract = True

    def submit_and_poll(self) -> None:
        started = time.perf_counter()
        with self.client.post(
            f"/work/{self.style}", json=self.body(), headers=self.fresh, catch_response=True
        ) as response:
            if response.status_code != 202:
                response.failure(_why(response))
                return
            task_id = response.json()["task_id"]
        style = self.style
        collector.count(results.task_counter(style, results.SUBMITTED))
        deadline = started + _option(self, "task_deadline")
        interval = _option(self, "poll_interval")
        try:
            while time.perf_counter() < deadline:
                gevent.sleep(interval)
                status = self._poll(task_id)
                if status in TERMINAL:
                    error = None if status == "success" else RuntimeError("task failed")
                    self._record(started, error)
                    return
            collector.count(results.task_counter(style, results.UNFINISHED))
            self._record(started, RuntimeError("not done by the deadline"))
        except gevent.GreenletExit:
            collector.count(
                results.task_counter(style, results.OPEN_AT_END)
            )  # the run ended while it was being polled
            raise

    def _poll(self, task_id: str) -> str | None:
        with self.client.get(
            f"/tasks/{task_id}", name="/tasks/{id}", headers=self.fresh, catch_response=True
        ) as response:
            if response.status_code == 404:
                collector.count(results.task_counter(self.style, results.POLLS_404))
                response.failure("404: this worker does not know the task")
                return None
            if response.status_code != 200:
                response.failure(_why(response))
                return None
            status: str = response.json()["status"]
            return status

    def _record(self, started: float, error: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type=TASK_TYPE,
            name=self.style,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=error,
            context={},
        )


class BackgroundTasksUser(TaskUser):
    style = "background-tasks"

    @tag("background-tasks")
    @task
    def background_tasks(self) -> None:
        self.submit_and_poll()


class ExecutorUser(TaskUser):
    style = "executor"

    @tag("executor")
    @task
    def executor(self) -> None:
        self.submit_and_poll()


class ProcessUser(TaskUser):
    style = "process"

    @tag("process")
    @task
    def process(self) -> None:
        self.submit_and_poll()


class QueueUser(TaskUser):
    style = "queue"

    @tag("queue")
    @task
    def queue(self) -> None:
        self.submit_and_poll()


class DataUser(FastHttpUser):
    """The data path: create items, read them back through the cache, list them."""

    wait_time = constant(0.1)

    def on_start(self) -> None:
        self.ids: list[int] = []

    @tag("data")
    @task(1)
    def create(self) -> None:
        item = {"name": f"item-{random.randrange(10**9)}", "description": "made by the load test"}
        with self.client.post("/items", json=item, catch_response=True) as response:
            if response.status_code != 201:
                response.failure(_why(response))
                return
            self.ids.append(response.json()["id"])

    @tag("data")
    @task(8)
    def read(self) -> None:
        if self.ids:
            self.client.get(f"/items/{random.choice(self.ids)}", name="/items/{id}")

    @tag("data")
    @task(1)
    def list_items(self) -> None:
        self.client.get("/items?limit=20", name="/items?limit=")
