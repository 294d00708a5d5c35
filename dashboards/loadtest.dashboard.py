"""Load test: the Locust master's users, request rate and failures, client-side next to server-side."""

from asyncproof.monitoring.contract import (
    HTTP_SERVER_REQUEST_DURATION,
    LOCUST_REQUEST_FAILURES,
    LOCUST_REQUESTS,
    LOCUST_RESPONSE_TIME,
    LOCUST_USERS,
)
from dashboards.common import RATE, ROUTE, make_dashboard, name, panel, quantile

dashboard = make_dashboard(
    "loadtest",
    "What the load generator sees, next to what the server measures for the same requests.",
    [ROUTE],
    [
        panel("Simulated users", [(f"sum({name(LOCUST_USERS)})", "users")], "short", 0, 0),
        panel(
            "Requests and failures per second (client side)",
            [
                (f"sum by (method, name) (rate({name(LOCUST_REQUESTS)}[{RATE}]))", "{{method}} {{name}}"),
                (
                    f"sum by (method, name) (rate({name(LOCUST_REQUEST_FAILURES)}[{RATE}]))",
                    "failed {{method}} {{name}}",
                ),
            ],
            "reqps",
            12,
            0,
        ),
        panel(
            "p95: client side (Locust) and server side (app) by endpoint",
            [
                (
                    quantile(0.95, LOCUST_RESPONSE_TIME, "method, name", 'method!~"PROBE|TASK"'),
                    "client {{name}}",
                ),
                (
                    quantile(0.95, HTTP_SERVER_REQUEST_DURATION, "http_route", 'http_route=~"$route"'),
                    "server {{http_route}}",
                ),
            ],
            "s",
            0,
            8,
            w=24,
        ),
    ],
    refresh="5s",
    title="load test",
)
