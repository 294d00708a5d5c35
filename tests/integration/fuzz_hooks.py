"""Schemathesis hooks for the OpenAPI fuzz test (loaded through ``SCHEMATHESIS_HOOKS``).

The schema allows up to a minute of work per request; just before each call the fuzzer's duration is
cut to a few milliseconds so that a run stays short (in every phase, boundary values included). Every
other field is sent as generated, valid or not.
"""

from __future__ import annotations

from typing import Any

import schemathesis

MAX_DURATION_MS = 5


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    body = case.body
    if isinstance(body, dict):
        duration = body.get("duration_ms")
        if (
            isinstance(duration, int | float)
            and not isinstance(duration, bool)
            and duration > MAX_DURATION_MS
        ):
            body["duration_ms"] = MAX_DURATION_MS
