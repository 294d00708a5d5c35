"""Load shapes. Steady load is Locust's own ``-u``/``-r``/``--run-time``; this file adds steps.

Use it next to the scenarios: ``locust -f loadtests/locustfile.py,loadtests/shapes.py ...``.
"""

from __future__ import annotations

from typing import Any

from locust import LoadTestShape


class StepShape(LoadTestShape):
    """Add ``--step-users`` every ``--step-seconds`` up to ``-u``, then hold until ``--run-time``.

    Shows where a style stops coping: the step at which latency or probe failures jump.
    """

    def tick(self) -> tuple[int, float] | None:
        options: Any = self.runner.environment.parsed_options  # type: ignore[union-attr]
        run_time = self.get_run_time()
        if options.run_time and run_time >= options.run_time:
            return None
        step = int(run_time // options.step_seconds) + 1
        users = min(options.num_users or options.step_users, step * options.step_users)
        return users, max(float(options.step_users), 1.0)
