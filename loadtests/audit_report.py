"""The audit's reports: the verdict table (text), ``report.html`` (the table, one chart per route, the
places in code that blocked the loop) and ``junit.xml`` (each route a test case, for CI systems).
"""

from __future__ import annotations

import base64
import html
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from asyncproof.loadtests import stats
from asyncproof.loadtests.report import STYLE, _gaps, cell  # (report selects the Agg backend)

COLUMNS = (
    ("route", "route", "{}"),
    ("requests", "requests", "{}"),
    ("p50_ms", "p50 ms", "{:.0f}"),
    ("p99_ms", "p99 ms", "{:.0f}"),
    ("together_p99_ms", "p99 together ms", "{:.0f}"),
    ("fail_ratio", "errors", "{:.1%}"),
    ("probe_failures", "probe fails", "{}"),
    ("would_restart", "restarts", "{}"),
    ("stalls", "stalls", "{}"),
    ("blocked_seconds", "blocked s", "{:.1f}"),
    ("threadpool_waiting_max", "pool wait", "{:.0f}"),
    ("blocked_at", "blocked at", "{}"),
    ("verdict", "VERDICT", "{}"),
)


def _cells(row: dict[str, Any]) -> list[str]:
    cells = [cell(row.get(key), fmt) for key, _, fmt in COLUMNS]
    if row.get("skipped"):
        cells[-1] = f"skipped: {row['skipped']}"
    elif not row["allowed"]:
        cells[-1] += "  <-- not allowed"
    return cells


def table(report: dict[str, Any]) -> str:
    """Routes worst first, one line each (skipped ones last, with the reason)."""
    rows = [[title for _, title, _ in COLUMNS]] + [_cells(row) for row in report["routes"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join([*(value.ljust(widths[i]) for i, value in enumerate(r[:-1])), r[-1]]) for r in rows]
    lines.insert(1, "  ".join("-" * width for width in widths) + "  -------")
    together = report.get("together")
    if together:
        lines.append("")
        lines.append(
            f"all routes together for {together['seconds']} s: {together['probe_failures']} probe failures, "
            f"{together['would_restart']} would-restart events"
        )
    return "\n".join(lines)


def junit(report: dict[str, Any]) -> ET.ElementTree:
    """Each route a test case: failed when its verdict is not allowed or one of its gates failed,
    skipped with the reason when it was not loaded; the server-wide gates are one more case."""
    suite = ET.Element(
        "testsuite", name="asyncproof audit", timestamp=report["started"], time=str(report["seconds"])
    )
    counts = {"tests": 0, "failures": 0, "skipped": 0}
    for row in report["routes"]:
        counts["tests"] += 1
        case = ET.SubElement(suite, "testcase", classname="asyncproof.audit", name=row["route"])
        if row.get("skipped"):
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", message=row["skipped"])
            continue
        problems = []
        if not row["allowed"]:
            problems.append(f"verdict {row['verdict']!r} is not allowed")
        problems += [
            f"gate {g['condition']!r} failed: observed {g['observed']}" for g in row.get("gates_failed", [])
        ]
        details = "\n".join(
            f"{title}: {value}" for (_, title, _), value in zip(COLUMNS, _cells(row), strict=True)
        )
        if problems:
            counts["failures"] += 1
            failure = ET.SubElement(case, "failure", message="; ".join(problems), type=row["verdict"])
            failure.text = details
        ET.SubElement(case, "system-out").text = details
    route_targets = {row["route"] for row in report["routes"]} | {"*"}
    others = [
        g
        for g in report["gates"]
        if g["target"] not in route_targets and not g["target"].startswith("route ")
    ]
    if others:
        counts["tests"] += 1
        case = ET.SubElement(suite, "testcase", classname="asyncproof.audit", name="server and probes gates")
        failed = [g for g in others if not g["passed"]]
        if failed:
            counts["failures"] += 1
            ET.SubElement(
                case,
                "failure",
                message="; ".join(
                    f"{g['target']}: {g['condition']} (observed {g['observed']})" for g in failed
                ),
            )
    for name, value in counts.items():
        suite.set(name, str(value))
    return ET.ElementTree(suite)


def chart(row: dict[str, Any], raw: dict[str, Any], path: Path) -> None:
    """One route over the whole run: its latency per second, the probes' and the event loop's lag,
    with its own phase shaded."""
    started, ended = raw["started"], raw["ended"]
    seconds = int(ended - started) + 1
    figure, (latency, health) = plt.subplots(1, 2, figsize=(11, 3.2), sharex=True)
    figure.suptitle(f"{row['route']}: {row['verdict']}", fontsize=11)
    mine = [
        sample for key in row.get("sample_keys", [row["route"]]) for sample in raw["samples"].get(key, [])
    ]
    slots = stats.per_second(mine, started, seconds)
    latency.plot(range(seconds), _gaps([max(slot) if slot else None for slot in slots]), ".", label="max")
    latency.plot(
        range(seconds),
        _gaps([stats.percentile(slot, 0.5) if slot else None for slot in slots]),
        "-",
        label="p50",
    )
    latency.set_title("its requests (ms per second of the run)", fontsize=9)
    latency.legend(fontsize=8, loc="upper left")
    probes = stats.per_second(raw["samples"].get("PROBE liveness", []), started, seconds)
    health.plot(
        range(seconds), _gaps([max(slot) if slot else None for slot in probes]), ".", label="liveness ms"
    )
    health.axhline(1000, color="red", linestyle="--", linewidth=1, label="probe timeout")
    lag = health.twinx()
    scrapes = raw.get("scrapes", [])
    lag.plot(
        [scrape["time"] - started for scrape in scrapes],
        [scrape["lag_max"] for scrape in scrapes],
        color="tab:orange",
        label="loop lag max s",
    )
    lag.set_ylabel("loop lag s", fontsize=8)
    health.set_title("liveness probe (ms) and event-loop lag (s)", fontsize=9)
    health.legend(fontsize=8, loc="upper left")
    for axis in (latency, health):
        axis.axvspan(*row["phase"], color="tab:blue", alpha=0.1)
        axis.grid(alpha=0.3)
        axis.set_xlabel("second of the run (shaded: this route alone)", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=70)
    plt.close(figure)


def write(report: dict[str, Any], raw: dict[str, Any], out: Path) -> Path:
    """``report.html`` (charts embedded, so it can be kept as one CI artefact) and ``junit.xml``."""
    junit(report).write(out / "junit.xml", encoding="utf-8", xml_declaration=True)
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in COLUMNS)
    body = []
    sections = []
    charts = out / "charts"
    charts.mkdir(exist_ok=True)
    for index, row in enumerate(report["routes"]):
        status = "skipped" if row.get("skipped") else ("match" if row["allowed"] else "mismatch")
        cells = "".join(f"<td>{html.escape(value)}</td>" for value in _cells(row))
        body.append(f'<tr class="{status}">{cells}</tr>')
        if row.get("skipped"):
            continue
        png = charts / f"route-{index}.png"
        chart(row, raw, png)
        data = base64.b64encode(png.read_bytes()).decode()
        places = "".join(
            f"<li><code>{html.escape(place)}</code>: {count} stalls</li>"
            for place, count in sorted(row.get("blocked_places", {}).items(), key=lambda item: -item[1])
        )
        blocked = f"<p>Where its code blocked the event loop:</p><ul>{places}</ul>" if places else ""
        sections.append(
            f"<section><h2>{html.escape(row['route'])}: {html.escape(row['verdict'])}</h2>{blocked}"
            f'<img class="chart" alt="chart of {html.escape(row["route"])}" '
            f'src="data:image/png;base64,{data}">'
            "</section>"
        )
    machine = report.get("machine", {})
    about = (
        f"{report['target']}: profile {report['profile']}, {report['workers'] or '?'} workers, "
        f"{report['users']} users, {report['rate'] or 'unlimited'} requests/s; "
        f"started {report['started']}, {report['seconds']} s; "
        f"{machine.get('cpus')} CPUs, Python {machine.get('python')}"
    )
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>asyncproof audit report</title>
<style>{STYLE}</style></head>
<body>
<h1>asyncproof audit</h1>
<p>{html.escape(about)}</p>
<p>Each route was loaded alone (so a probe failure or a stall is its own), then all together, while a
kubelet-like prober (period 1 s, timeout 1 s, 3 failures) watched. Worst first.</p>
<table id="verdicts"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>
<pre>{html.escape(table(report).split(chr(10) + chr(10), 1)[-1] if report.get("together") else "")}</pre>
{"".join(sections)}
</body></html>
"""
    path = out / "report.html"
    path.write_text(document)
    return path
