"""What every dashboard shares: the datasource, template variables, panel and query helpers.

Metric names come from ``asyncproof.monitoring.contract``; nothing here spells one out.
"""

from __future__ import annotations

from grafanalib.core import Dashboard, GridPos, Target, Template, Templating, TimeSeries

from asyncproof.monitoring import contract
from asyncproof.monitoring.contract import MetricSpec

# The provisioned datasource (dashboards/provisioning/datasources/prometheus.yml).
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"


def name(spec: MetricSpec, suffix: str = "") -> str:
    """The exposed series name of a contract metric (``_bucket``/``_count``/``_sum`` for histograms)."""
    return spec.exposed_name + (f"_{suffix}" if suffix else "")


def variable(var: str, spec: MetricSpec, label: str, title: str, suffix: str = "") -> Template:
    """A multi-value template variable listing the values of ``label`` on a contract metric."""
    return Template(
        name=var,
        label=title,
        query=f"label_values({name(spec, suffix)}, {label})",
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        allValue=".*",
        default="$__all",
        refresh=2,
    )


INSTANCE = variable("instance", contract.HTTP_SERVER_REQUEST_DURATION, "instance", "instance", "count")
ROUTE = variable("route", contract.HTTP_SERVER_REQUEST_DURATION, "http_route", "route", "count")
BACKEND = variable("backend", contract.TASKS_SUBMITTED, "backend", "task backend")


def quantile(q: float, spec: MetricSpec, by: str, selector: str) -> str:
    """``histogram_quantile`` over the rate of a contract histogram, summed by ``le`` and ``by``."""
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({name(spec, 'bucket')}{{{selector}}}[{RATE}])))"


def panel(
    title: str,
    targets: list[tuple[str, str]],
    unit: str,
    x: int,
    y: int,
    w: int = 12,
    h: int = 8,
    **extra: object,
) -> TimeSeries:
    """A time series panel; ``targets`` are (PromQL, legend) pairs."""
    return TimeSeries(
        title=title,
        dataSource=DATASOURCE,
        targets=[
            Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + index), datasource=DATASOURCE)
            for index, (expr, legend) in enumerate(targets)
        ],
        unit=unit,
        gridPos=GridPos(h=h, w=w, x=x, y=y),
        **extra,
    )


def make_dashboard(
    slug: str,
    description: str,
    templates: list[Template],
    panels: list[TimeSeries],
    refresh: str = "10s",
    title: str = "",
) -> Dashboard:
    """An asyncproof dashboard: title ``asyncproof / <title or slug>``, uid ``asyncproof-<slug>``, UTC."""
    return Dashboard(
        title=f"asyncproof / {title or slug}",
        uid=f"asyncproof-{slug}",
        description=description,
        tags=["asyncproof"],
        timezone="utc",
        refresh=refresh,
        templating=Templating(list=templates),
        panels=panels,
    ).auto_panel_ids()
