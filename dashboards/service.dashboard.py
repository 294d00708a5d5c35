"""Service overview: RED per route, status mix, requests in flight."""

from asyncproof.monitoring.contract import HTTP_SERVER_ACTIVE_REQUESTS, HTTP_SERVER_REQUEST_DURATION
from dashboards.common import INSTANCE, RATE, ROUTE, make_dashboard, name, panel, quantile

requests = name(HTTP_SERVER_REQUEST_DURATION, "count")
selected = 'instance=~"$instance", http_route=~"$route"'
errors = f'{selected}, http_response_status_code=~"5.."'
active = name(HTTP_SERVER_ACTIVE_REQUESTS)

dashboard = make_dashboard(
    "service",
    "Rate, errors and duration per route template, the status mix, requests in flight.",
    [INSTANCE, ROUTE],
    [
        panel(
            "Requests per second by route",
            [(f"sum by (http_route) (rate({requests}{{{selected}}}[{RATE}]))", "{{http_route}}")],
            "reqps",
            0,
            0,
        ),
        panel(
            "5xx ratio by route",
            [
                (
                    # `or ... * 0`: a route without any 5xx shows 0, not "no data"
                    f"(sum by (http_route) (rate({requests}{{{errors}}}[{RATE}]))"
                    f" or sum by (http_route) (rate({requests}{{{selected}}}[{RATE}])) * 0)"
                    f" / sum by (http_route) (rate({requests}{{{selected}}}[{RATE}]))",
                    "{{http_route}}",
                )
            ],
            "percentunit",
            12,
            0,
        ),
        panel(
            "Duration p50 and p99 by route",
            [
                (quantile(0.5, HTTP_SERVER_REQUEST_DURATION, "http_route", selected), "p50 {{http_route}}"),
                (quantile(0.99, HTTP_SERVER_REQUEST_DURATION, "http_route", selected), "p99 {{http_route}}"),
            ],
            "s",
            0,
            8,
        ),
        panel(
            "Status codes",
            [
                (
                    f"sum by (http_response_status_code) (rate({requests}{{{selected}}}[{RATE}]))",
                    "{{http_response_status_code}}",
                )
            ],
            "reqps",
            12,
            8,
        ),
        panel(
            "Requests in flight",
            [
                (
                    f'sum by (http_request_method) ({active}{{instance=~"$instance"}})',
                    "{{http_request_method}}",
                )
            ],
            "short",
            0,
            16,
            w=24,
        ),
    ],
)
