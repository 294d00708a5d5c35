from __future__ import annotations

import subprocess
import sys

import pytest

from asyncproof import monitoring

EXPECTED = [
    "CheckResult",
    "ExtraLabel",
    "Health",
    "HealthReport",
    "Instrumentation",
    "InstrumentationMiddleware",
    "InstrumentedTTLCache",
    "JsonFormatter",
    "Metrics",
    "Options",
    "PoolInstrumentation",
    "RequestIdFilter",
    "RequestIdMiddleware",
    "RouteConflictWarning",
    "TaskRun",
    "TaskTracker",
    "from_header",
    "from_scope",
    "get_request_id",
    "instrument",
    "instrument_pool",
    "mark_process_dead",
    "sweep",
    "watch_executor",
]


def test_exported_names_are_the_documented_ones_and_sorted() -> None:
    assert monitoring.__all__ == EXPECTED
    assert sorted(EXPECTED) == EXPECTED
    for name in monitoring.__all__:
        assert getattr(monitoring, name) is not None, name


def test_instrument_is_the_function_even_after_its_module_is_imported() -> None:
    import asyncproof.monitoring.instrumentation  # noqa: F401

    assert callable(monitoring.instrument)
    assert monitoring.instrument.__module__ == "asyncproof.monitoring.instrumentation"


def test_importing_monitoring_does_not_import_prometheus_client() -> None:
    # asyncproof.monitoring.gunicorn must set PROMETHEUS_MULTIPROC_DIR before prometheus_client loads.
    code = "import sys, asyncproof.monitoring; print('prometheus_client' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        monitoring.no_such_thing  # type: ignore[attr-defined]  # noqa: B018


def test_a_name_whose_optional_dependency_is_missing_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "from asyncproof import monitoring\n"
        "try:\n"
        "    monitoring.instrument_pool\n"
        "except ModuleNotFoundError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'asyncproof[sqlalchemy]'" in result.stdout
