"""Generate ``dashboards/json/<name>.json`` from every ``dashboards/*.dashboard.py``.

    python -m dashboards.build           # write the JSON
    python -m dashboards.build --check   # exit 1 if the committed JSON differs from the source

The JSON is deterministic (sorted keys, fixed indentation), so a diff shows a real change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafanalib._gen import DashboardEncoder, loader

HERE = Path(__file__).resolve().parent
OUT = HERE / "json"


def sources() -> list[Path]:
    return sorted(HERE.glob("*.dashboard.py"))


def render(source: Path) -> str:
    dashboard = loader(str(source))
    document: dict[str, Any] = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    return json.dumps(document, sort_keys=True, indent=2) + "\n"


def target(source: Path) -> Path:
    return OUT / (source.name.removesuffix(".dashboard.py") + ".json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed JSON instead of writing"
    )
    args = parser.parse_args(argv)
    stale = []
    OUT.mkdir(exist_ok=True)
    for source in sources():
        text, path = render(source), target(source)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python -m dashboards.build", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
