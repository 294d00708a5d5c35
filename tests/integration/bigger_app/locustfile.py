"""The team's own Locust users (``asyncproof audit -f locustfile.py``): they know the data the
generated requests cannot guess (the items that exist)."""

from locust import FastHttpUser, constant, task

TOKEN = {"X-Token": "fake-super-secret-token", "Connection": "close"}


class ItemsUser(FastHttpUser):
    wait_time = constant(0.05)

    @task(3)
    def read_plumbus(self) -> None:
        self.client.get("/items/plumbus", name="/items/{item_id}", headers=TOKEN)

    @task
    def update_plumbus(self) -> None:
        self.client.put("/items/plumbus", name="/items/{item_id}", headers=TOKEN)
