"""A user's own Locust scenario for sample_app, run with asyncproof's plugin next to it."""

from __future__ import annotations

import random

from locust import FastHttpUser, constant, task


class SampleUser(FastHttpUser):
    wait_time = constant(0.05)

    @task(3)
    def read(self) -> None:
        self.client.get(f"/items/{random.randrange(100)}", name="/items/{id}")

    @task(1)
    def slow(self) -> None:
        self.client.get("/slow?seconds=0.05", name="/slow")
