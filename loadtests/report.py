"""The prove report: ``report.html`` (self-contained), one PNG chart per scenario, from the run's data.

Each scenario's chart has four panels over the run's seconds: probe latency, submit latency, event-loop
lag (server side, from the scrapes) and throughput. The HTML embeds the same PNGs, so the file can be
mailed or attached to a CI run on its own; Locust's CSV and HTML sit next to it, per scenario.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: draw to files
import matplotlib.pyplot as plt

COLUMNS = (
    ("scenario", "scenario", "{}"),
    ("submit_p50_ms", "submit p50 ms", "{:.0f}"),
    ("submit_p99_ms", "submit p99 ms", "{:.0f}"),
    ("probe_p99_ms", "probe p99 ms", "{:.0f}"),
    ("probe_failures", "probe fails", "{}"),
    ("would_restart", "restarts", "{}"),
    ("loop_lag_p99_s", "lag p99 s", "{:.3f}"),
    ("loop_lag_max_s", "lag max s", "{:.2f}"),
    ("stalls", "stalls", "{:.0f}"),
    ("threadpool_waiting_max", "pool wait", "{:.0f}"),
    ("task_p95_s", "task p95 s", "{:.2f}"),
    ("polls_404", "404 polls", "{}"),
    ("unfinished", "unfinished", "{}"),
    ("throughput_rps", "rps", "{:.1f}"),
    ("blocked_at", "blocked at", "{}"),
    ("expected", "EXPECTED", "{}"),
    ("observed", "OBSERVED", "{}"),
)


def cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _cells(scenario: dict[str, Any]) -> list[str]:
    """One scenario's row of the verdict table; a skipped one says why in its last cell."""
    cells = [cell(scenario.get(key), fmt) for key, _, fmt in COLUMNS]
    if scenario.get("skipped"):
        cells[-1] = f"skipped: {scenario['skipped']}"
    return cells


def table(report: dict[str, Any]) -> str:
    """The verdict table as plain text (the same one goes into the README and report.html)."""
    rows = [[title for _, title, _ in COLUMNS]]
    for scenario in report["scenarios"]:
        cells = _cells(scenario)
        mark = "" if scenario["match"] or scenario.get("skipped") else "  <-- MISMATCH"
        rows.append([*cells, mark])
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(value.ljust(widths[i]) if i < len(widths) else value for i, value in enumerate(r)).rstrip()
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    memory = report.get("memory")
    if memory:
        lines.append("")
        lines.append(f"Warm data set of {memory['warm_data_mb']} MB, {memory['workers']} Gunicorn workers:")
        for name in ("no-preload", "preload"):
            m = memory[name]
            lines.append(
                f"  {name:<11} RSS {m['rss_mb_per_worker']} MB/worker x {m['workers']} = "
                f"{m['rss_mb_total']} MB; unique {m['uss_mb_per_worker']} MB/worker; "
                f"PSS total {m['pss_mb_total']} MB"
            )
        lines.append(f"  EXPECTED {memory['expected']!r}, OBSERVED {memory['observed']!r}")
    return "\n".join(lines)


def chart(scenario: dict[str, Any], results: dict[str, Any], path: Path) -> None:
    """Probe latency, submit latency, loop lag and throughput of one scenario, over time."""
    series = results.get("series", {})
    seconds = series.get("second", [])
    figure, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharex=True)
    figure.suptitle(
        f"{scenario['scenario']}: expected {scenario['expected']}, observed {scenario['observed']}"
    )

    probe = axes[0][0]
    for name in ("liveness", "readiness"):
        values = series.get(f"probe {name} max ms")
        if values:
            probe.plot(seconds[: len(values)], _gaps(values), marker=".", label=name)
    probe.axhline(1000, color="red", linestyle="--", linewidth=1, label="probe timeout")
    probe.set_title("probe latency (ms, slowest per second)")
    probe.legend(loc="upper left", fontsize=8)

    submit = axes[0][1]
    key = f"{scenario.get('submit', '')} p50 ms"
    values = series.get(key)
    if values:
        submit.plot(seconds[: len(values)], _gaps(values), marker=".", color="tab:purple")
    submit.set_title(f"{scenario.get('submit', 'submit')} (ms, p50 per second)")

    lag = axes[1][0]
    server = series.get("server", {})
    if server.get("second"):
        lag.plot(
            server["second"], server["loop lag max s"], marker=".", color="tab:orange", label="loop lag max"
        )
        waiting = lag.twinx()
        waiting.plot(
            server["second"], server["threadpool waiting"], color="tab:gray", linestyle=":", label="pool wait"
        )
        waiting.set_ylabel("threadpool waiting", fontsize=8)
        waiting.set_ylim(0, max(1.0, *server["threadpool waiting"]) * 1.1)
    lag.set_ylim(bottom=0)
    lag.ticklabel_format(axis="y", useOffset=False)
    lag.set_title("event-loop lag (s, worst worker) and threadpool waiting")
    lag.set_xlabel("second of the run")

    throughput = axes[1][1]
    rps = series.get("requests per second")
    if rps:
        throughput.bar(seconds[: len(rps)], rps, color="tab:green")
    throughput.set_title("requests completed per second (no probes, no polls)")
    throughput.set_xlabel("second of the run")

    for axis in axes.flat:
        axis.grid(alpha=0.3)
        axis.title.set_fontsize(10)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _gaps(values: list[float | None]) -> list[float]:
    """None (nothing ended in that second) becomes NaN: a gap in the line, not a zero."""
    return [float("nan") if value is None else value for value in values]


def _table_html(report: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in COLUMNS)
    rows = []
    for scenario in report["scenarios"]:
        status = "skipped" if scenario.get("skipped") else ("match" if scenario["match"] else "mismatch")
        body = "".join(f"<td>{html.escape(value)}</td>" for value in _cells(scenario))
        rows.append(f'<tr class="{status}">{body}</tr>')
    return f'<table id="verdicts"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _memory_html(memory: dict[str, Any] | None) -> str:
    if not memory:
        return ""
    rows = "".join(
        f"<tr><td>{name}</td><td>{m['rss_mb_per_worker']}</td><td>{m['workers']}</td><td>{m['rss_mb_total']}</td>"
        f"<td>{m['uss_mb_per_worker']}</td><td>{m['pss_mb_total']}</td></tr>"
        for name, m in ((name, memory[name]) for name in ("no-preload", "preload"))
    )
    status = "match" if memory["match"] else "mismatch"
    return (
        f"<h2>Memory: a {memory['warm_data_mb']} MB warm data set per worker</h2>"
        "<p>RSS counts pages shared with the master in every worker, so RSS x workers overstates the total; "
        "USS is what a worker holds alone, PSS splits shared pages between the processes that share them.</p>"
        '<table id="memory"><thead><tr><th>server</th><th>RSS MB/worker</th><th>workers</th>'
        "<th>RSS x workers MB</th>"
        f"<th>unique MB/worker</th><th>PSS total MB</th></tr></thead><tbody>{rows}</tbody></table>"
        f'<p class="{status}">EXPECTED {html.escape(memory["expected"])}; '
        f"OBSERVED {html.escape(memory['observed'])}</p>"
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child, td:nth-last-child(-n+2) { text-align: left; }
tr.match td:last-child, p.match { color: #176b2c; font-weight: bold; }
tr.mismatch td:last-child, p.mismatch { color: #b00020; font-weight: bold; }
tr.skipped td:last-child { color: #777; }
section { margin-top: 2em; }
img.chart { max-width: 100%; border: 1px solid #eee; }
"""


def write(report: dict[str, Any], out: Path) -> Path:
    """Charts (PNG) and ``report.html`` for a finished ``prove`` run in ``out``; returns the HTML path."""
    sections = []
    for scenario in report["scenarios"]:
        name = scenario["scenario"]
        title = f"<h2>{html.escape(name)}</h2><p>{html.escape(scenario.get('shows', ''))}</p>"
        results_path = out / name / "results.json"
        if scenario.get("skipped") or not results_path.exists():
            reason = scenario.get("skipped") or "no results (see the logs in its folder)"
            sections.append(
                f'<section id="{html.escape(name)}">{title}<p>Not run: {html.escape(reason)}</p></section>'
            )
            continue
        png = out / name / "chart.png"
        chart(scenario, json.loads(results_path.read_text()), png)
        data = base64.b64encode(png.read_bytes()).decode()
        links = (
            f'<p>Locust: <a href="{name}/locust.html">report</a>, '
            f'<a href="{name}/locust_stats.csv">stats CSV</a>, '
            f'<a href="{name}/locust_stats_history.csv">history CSV</a>; '
            f'<a href="{name}/results.json">raw figures</a>; <a href="{name}/server.log">server log</a></p>'
        )
        image = f'<img class="chart" alt="charts of {html.escape(name)}" src="data:image/png;base64,{data}">'
        sections.append(f'<section id="{html.escape(name)}">{title}{image}{links}</section>')
    machine = report.get("machine", {})
    about = (
        f"profile {report['profile']}, started {report['started']}, {report['seconds']} s; "
        f"{machine.get('cpus')} CPUs, {machine.get('memory_gb')} GB, Python {machine.get('python')}, "
        f"{machine.get('system')}"
    )
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>asyncproof prove report</title>
<style>{STYLE}</style></head>
<body>
<h1>asyncproof prove</h1>
<p>{html.escape(about)}</p>
<p>Each scenario runs the reference app under Gunicorn (or uvicorn --workers) with its own state, a
kubelet-like prober (period 1 s, timeout 1 s, 3 failures) and Locust users for one execution style.
OBSERVED is computed from the run's figures; a mismatch with EXPECTED fails the run.</p>
{_table_html(report)}
{_memory_html(report.get("memory"))}
{"".join(sections)}
<script>
  // For headless checks: how many charts decoded.
  window.addEventListener("load", () => {{
    const loaded = [...document.images].filter((image) => image.complete && image.naturalWidth > 0);
    document.body.dataset.chartsLoaded = String(loaded.length);
  }});
</script>
</body></html>
"""
    path = out / "report.html"
    path.write_text(document)
    return path
