"""compose.yaml and the Dockerfile, checked without a Docker engine: the Compose Specification's schema,
every file they mount or build from, health checks and ordering, secrets, and that the addresses the
configs use (Nginx upstream, Prometheus targets, Grafana datasource) are services of the stack."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import yaml

from tests.processes import BIN, ROOT

COMPOSE = ROOT / "compose.yaml"
SECRETS = ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD")


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def test_compose_file_follows_the_compose_specification() -> None:
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_stack_has_every_service() -> None:
    assert set(compose()["services"]) == {
        "app",
        "worker",
        "nginx",
        "nginx-exporter",
        "prometheus",
        "grafana",
        "redis",
        "postgres",
        "locust-master",
        "locust-worker",
    }


def test_every_file_mounted_or_built_from_exists() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name} builds from a missing {dockerfile}"


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies() -> None:
    services = compose()["services"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"


def test_secrets_are_required_never_defaulted() -> None:
    text = COMPOSE.read_text()
    for secret in SECRETS:
        uses = re.findall(rf"\$\{{{secret}[^}}]*\}}", text)
        assert uses, f"{secret} is not used"
        assert all(use.startswith(f"${{{secret}:?") for use in uses), uses
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key:
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), (
                    f"{name}: {key} is not a required variable"
                )


def test_the_app_image_runs_as_a_user_and_checks_liveness() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users
    assert users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/health/live", dockerfile, re.M)
    assert "/health/live" in str(compose()["services"]["app"]["healthcheck"]["test"])


def test_configs_point_at_services_of_the_stack() -> None:
    services = compose()["services"]

    def serves(address: str) -> bool:
        host, port = address.rsplit(":", 1)
        service = services.get(host, {})
        published = [str(p).split(":")[-1] for p in service.get("ports", [])]
        return port in [str(p) for p in service.get("expose", [])] + published

    upstreams = re.findall(r"^\s*server\s+([\w.-]+:\d+)", (ROOT / "nginx/nginx.conf").read_text(), re.M)
    assert upstreams == ["app:8000"]
    assert serves("app:8000")
    prometheus = yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert targets
    for target in targets:
        assert serves(target), f"Prometheus scrapes {target}, which no service exposes"
    datasource = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/prometheus.yml").read_text())
    assert serves(datasource["datasources"][0]["url"].removeprefix("http://"))
