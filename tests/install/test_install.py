"""The artefacts users get: the sdist and the wheel built from the checkout, installed per documented
extra into fresh virtual environments and run from a folder outside the checkout.

One venv takes the wheel's extras in layers (base -> [fastapi] -> [app] -> [app,load]): each set holds
the previous one, so after each step the venv is what a fresh install of that set gives, and each step
also checks that the next set's dependencies are still absent. The sdist gets a venv of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.processes import BIN, ROOT, free_port, stop, wait_for

pytestmark = pytest.mark.integration

UV = BIN / "uv"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
SANDBOX_VARIABLE = "INSTALL_TEST_SANDBOX"  # inherited by everything a test starts, to find leftovers


@dataclass(frozen=True)
class Layer:
    """An install set: its extras, the top-level modules it adds to the previous set, and the
    asyncproof modules (by prefix) that import from this set on."""

    extras: tuple[str, ...]
    brings: tuple[str, ...]
    packages: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"[{','.join(self.extras)}]" if self.extras else "base"


LAYERS = (
    Layer((), ("prometheus_client", "psutil", "starlette", "cachetools"), ("asyncproof",)),
    Layer(("fastapi",), ("fastapi", "pydantic")),
    Layer(
        ("app",),
        (
            "pydantic_settings",
            "sqlalchemy",
            "aiosqlite",
            "asyncpg",
            "gunicorn",
            "uvicorn",
            "uvicorn_worker",
            "redis",
            "celery",
            "alembic",
        ),
        ("asyncproof.app", "asyncproof.monitoring.db"),
    ),
    Layer(("app", "load"), ("locust", "matplotlib", "requests", "httpx"), ("asyncproof.loadtests",)),
)
BASE, FASTAPI, APP, LOAD = LAYERS
# The folder names the wheel must not install at the top level (they are asyncproof.<name>).
FOLDERS = ("monitoring", "app", "loadtests")


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path
    wheel_files: tuple[str, ...]

    def modules(self) -> list[str]:
        """Every importable module of the wheel (``__main__`` runs the CLI, so not that one)."""
        names = []
        for path in self.wheel_files:
            if path.startswith("asyncproof/") and path.endswith(".py"):
                parts = path.removesuffix(".py").split("/")
                if parts[-1] == "__init__":
                    parts.pop()
                names.append(".".join(parts))
        return sorted(name for name in names if name != "asyncproof.__main__")


def layer_of(module: str) -> int:
    """The index of the smallest set in which ``module`` imports: its longest listed prefix wins."""
    best, index = "", 0
    for i, layer in enumerate(LAYERS):
        for prefix in layer.packages:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, index = prefix, i
    return index


@pytest.fixture(scope="session")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """The sdist and the wheel, built once; ``python -m build`` builds the wheel from the sdist."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Building wheel from sdist" in result.stderr + result.stdout, result.stderr
    sdist = out / f"asyncproof-{VERSION}.tar.gz"
    wheel = out / f"asyncproof-{VERSION}-py3-none-any.whl"
    assert sorted(p.name for p in out.iterdir()) == sorted([sdist.name, wheel.name])
    checked = subprocess.run(
        [str(BIN / "twine"), "check", "--strict", str(sdist), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with zipfile.ZipFile(wheel) as archive:
        files = tuple(archive.namelist())
    return Dists(sdist, wheel, files)


@dataclass
class Sandbox:
    """Where the venvs live and the commands run: a temporary folder outside the checkout."""

    root: Path
    work: Path = field(init=False)

    def __post_init__(self) -> None:
        assert not self.root.resolve().is_relative_to(ROOT), "the sandbox must be outside the checkout"
        self.work = self.root / "work"
        (self.root / "tmp").mkdir()
        self.work.mkdir()

    def env(self, venv: Path | None = None, **extra: str) -> dict[str, str]:
        """The environment of a user's shell with ``venv`` activated: nothing that points at the
        checkout or configures asyncproof or Python's import path."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("PYTHON", "ASYNCPROOF_", "PROMETHEUS_", "prometheus_"))
            and name not in ("VIRTUAL_ENV", "CONDA_PREFIX")
        }
        path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not _inside(Path(p), ROOT)]
        if venv is not None:
            env["VIRTUAL_ENV"] = str(venv)
            path.insert(0, str(venv / "bin"))
        env["PATH"] = os.pathsep.join(path)
        env["TMPDIR"] = str(self.root / "tmp")
        env[SANDBOX_VARIABLE] = str(self.root)
        return {**env, **extra}


def _inside(path: Path, folder: Path) -> bool:
    with contextlib.suppress(OSError):
        return path.resolve().is_relative_to(folder.resolve())
    return False


@dataclass
class Venv:
    path: Path
    sandbox: Sandbox

    @classmethod
    def create(cls, path: Path, sandbox: Sandbox) -> Venv:
        # The interpreter the suite runs on; uv makes the venv from its base installation.
        _uv(sandbox, "venv", "--quiet", "--python", sys.executable, str(path))
        return cls(path, sandbox)

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    def install(self, requirement: str) -> None:
        _uv(self.sandbox, "pip", "install", "--quiet", "--python", str(self.bin / "python"), requirement)

    def run(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        """A console script of the venv (or its ``python``), run from the sandbox's work folder."""
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=self.sandbox.work,
            env=self.sandbox.env(self.path, **env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def script(self, name: str, code: str, *args: str) -> Any:
        """Run ``code`` with the venv's python in isolated mode; it prints one JSON line last."""
        path = self.sandbox.work / f"{name}.py"
        path.write_text(code)
        result = self.run("python", "-I", str(path), *args)
        assert result.returncode == 0, f"{name}.py failed:\n{result.stdout}\n{result.stderr}"
        return json.loads(result.stdout.strip().splitlines()[-1])


def _uv(sandbox: Sandbox, *args: str) -> None:
    assert UV.exists(), f"{UV} is missing: install the dev extra (pip install -e '.[dev]')"
    # From the work folder, so that no project configuration of the checkout applies.
    result = subprocess.run(
        [str(UV), *args],
        cwd=sandbox.work,
        env=sandbox.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"uv {shlex.join(args)}:\n{result.stdout}\n{result.stderr}"


def requirement(dist: Path, extras: tuple[str, ...]) -> str:
    return f"{dist}[{','.join(extras)}]" if extras else str(dist)


@dataclass
class LayeredVenv:
    """One venv for the wheel that grows from set to set; asking for a smaller set starts a new one."""

    sandbox: Sandbox
    dists: Dists
    venv: Venv | None = None
    index: int = -1
    made: int = 0

    def install(self, layer: Layer) -> Venv:
        index = LAYERS.index(layer)
        if self.venv is None or index < self.index:
            self.made += 1
            self.venv = Venv.create(self.sandbox.root / f"wheel-venv-{self.made}", self.sandbox)
        self.venv.install(requirement(self.dists.wheel, layer.extras))
        self.index = index
        return self.venv


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    made = Sandbox(tmp_path_factory.mktemp("install"))
    yield made
    # The venvs are some hundred MB; the logs and reports beside them stay for a look after a failure.
    for venv in made.root.glob("*-venv*"):
        shutil.rmtree(venv, ignore_errors=True)


@pytest.fixture(scope="module")
def layers(sandbox: Sandbox, dists: Dists) -> LayeredVenv:
    return LayeredVenv(sandbox, dists)


@pytest.fixture(autouse=True)
def nothing_outlives_the_test(sandbox: Sandbox) -> Iterator[None]:
    """Every process a test started carries the sandbox variable: none may be left when it ends."""
    yield
    deadline = time.monotonic() + 5  # a server that was just stopped may take a moment to go
    while (left := _started_here(sandbox)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for process in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    assert not left, f"processes outlived the test (killed now): {[p.info for p in left]}"


def _started_here(sandbox: Sandbox) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get(SANDBOX_VARIABLE) == str(
                sandbox.root
            ):
                found.append(process)
    return found


# --- what each install must do -----------------------------------------------------------------------

SURVEY = """
import importlib, importlib.util, json, sys, sysconfig

request = json.loads(sys.argv[1])
report = {"prefix": sys.prefix, "purelib": sysconfig.get_path("purelib"), "folders": {}, "modules": {}}
report["importable"] = {name: importlib.util.find_spec(name) is not None for name in request["third_party"]}
for name in request["first"]:
    importlib.import_module(name)
for name in request["folders"]:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        report["folders"][name] = f"ModuleNotFoundError: {error.name}"
    else:
        report["folders"][name] = "imported"
for name in request["modules"]:
    try:
        module = importlib.import_module(name)
    except Exception as error:
        report["modules"][name] = {"error": f"{type(error).__name__}: {error}"}
    else:
        report["modules"][name] = {"file": module.__file__}
print(json.dumps(report))
"""


def check_installed(venv: Venv, layer: Layer, dists: Dists) -> dict[str, Any]:
    """The set's dependencies import and the next sets' do not; every asyncproof module the set
    covers imports, from the venv's site-packages; the folder names are not top-level modules."""
    index = LAYERS.index(layer)
    present = [name for earlier in LAYERS[: index + 1] for name in earlier.brings]
    absent = [name for later in LAYERS[index + 1 :] for name in later.brings]
    modules = [name for name in dists.modules() if layer_of(name) <= index]
    # The loadtests modules are Locust's to load: it patches the standard library with gevent when
    # imported, which must happen before anything loads ssl. So do what a locust process does first.
    first = ["locust"] if "locust" in present else []
    request = {"third_party": present + absent, "first": first, "folders": FOLDERS, "modules": modules}
    report: dict[str, Any] = venv.script("survey", SURVEY, json.dumps(request))

    assert Path(report["prefix"]).resolve() == venv.path.resolve()
    purelib = Path(report["purelib"]).resolve()
    assert purelib.is_relative_to(venv.path.resolve())
    importable = report["importable"]
    assert [name for name in present if not importable[name]] == [], f"{layer.name} lacks them"
    assert [name for name in absent if importable[name]] == [], f"{layer.name} has a later set's modules"
    failed = {name: m["error"] for name, m in report["modules"].items() if "error" in m}
    assert failed == {}, f"modules that do not import in {layer.name}"
    elsewhere = {
        name: m["file"]
        for name, m in report["modules"].items()
        if not Path(m["file"]).resolve().is_relative_to(purelib)
    }
    assert elsewhere == {}, f"modules imported from outside {purelib}"
    assert report["folders"] == {name: f"ModuleNotFoundError: {name}" for name in FOLDERS}
    assert (venv.bin / "asyncproof").exists()
    return report


def assert_needs_extra(venv: Venv, command: str, extra: str) -> None:
    result = venv.run("asyncproof", command)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"asyncproof {command} needs the '{extra}' extra" in result.stderr, output
    assert f"pip install 'asyncproof[{extra}]'" in result.stderr, output
    assert "Traceback" not in output


# A hand-written ASGI client: the base install has no httpx. Runs the lifespan, one request to the
# app's route and one to /metrics, and prints the status, body and request counts it saw.
ASGI_DRIVER = """
import asyncio, json
from prometheus_client.parser import text_string_to_metric_families


async def request(app, path):
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"host", b"testserver"), (b"user-agent", b"install-test")],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }
    body_sent = False
    done = asyncio.Event()
    messages = []

    async def receive():
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await app(scope, receive, send)
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, body.decode()


async def exercise(app, path):
    to_app, from_app = asyncio.Queue(), asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    lifespan = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    assert (await from_app.get())["type"] == "lifespan.startup.complete"
    status, body = await request(app, path)
    metrics_status, metrics = await request(app, "/metrics")
    await to_app.put({"type": "lifespan.shutdown"})
    assert (await from_app.get())["type"] == "lifespan.shutdown.complete"
    await lifespan
    counts = {
        " ".join((s.labels["http_request_method"], s.labels["http_route"], s.labels["http_response_status_code"])): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "http_server_request_duration_seconds_count"
    }
    return {"status": status, "body": body, "metrics_status": metrics_status, "counts": counts}


def main(app, path):
    print(json.dumps(asyncio.run(asyncio.wait_for(exercise(app, path), 30))))
"""

STARLETTE_APP = """
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asyncproof.monitoring import instrument


async def hello(request):
    return PlainTextResponse("hello " + request.path_params["name"])


app = Starlette(routes=[Route("/hello/{name}", hello)])
instrument(app, registry=CollectorRegistry())
main(app, "/hello/world")
"""

FASTAPI_APP = """
from fastapi import FastAPI

from asyncproof.monitoring import instrument

app = FastAPI()


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


instrument(app)
main(app, "/items/7")
"""


@contextlib.contextmanager
def serving(venv: Venv, name: str) -> Iterator[str]:
    """``asyncproof serve`` with one worker on a free loopback port; stopped however the test ends."""
    sandbox = venv.sandbox
    port = free_port()
    log = sandbox.root / f"{name}-serve.log"
    env = sandbox.env(venv.path, ASYNCPROOF_STATE_DIR=str(sandbox.root / f"{name}-state"))
    command = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(venv.bin / "asyncproof"), *command],
            cwd=sandbox.work,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(f"{url}/health/live", deadline=60, process=process)
        except (RuntimeError, TimeoutError) as error:
            raise AssertionError(f"{error}; its log:\n{log.read_text()}") from error
        yield url
    finally:
        stop(process, grace=10)


def assert_live(url: str) -> None:
    with httpx.Client(trust_env=False, timeout=5) as client:
        response = client.get(f"{url}/health/live")
    assert response.status_code == 200, response.text


# --- the tests -----------------------------------------------------------------------------------------


def test_the_wheel_has_one_import_root_and_no_bytecode(dists: Dists) -> None:
    top = {path.split("/")[0] for path in dists.wheel_files}
    assert top == {"asyncproof", f"asyncproof-{VERSION}.dist-info"}
    for path in (
        "asyncproof/monitoring/py.typed",
        "asyncproof/app/gunicorn_conf.py",
        "asyncproof/loadtests/locustfile.py",
    ):
        assert path in dists.wheel_files
    assert [p for p in dists.wheel_files if "__pycache__" in p or p.endswith(".pyc")] == []
    with zipfile.ZipFile(dists.wheel) as archive:
        entry_points = archive.read(f"asyncproof-{VERSION}.dist-info/entry_points.txt").decode()
    assert "asyncproof = asyncproof.cli:main" in entry_points


def test_the_sdist_holds_the_same_package_as_files(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as archive:
        members = archive.getmembers()
    prefix = f"asyncproof-{VERSION}/"
    assert all(m.name.startswith(prefix) for m in members)
    names = {m.name.removeprefix(prefix) for m in members}
    assert {"PKG-INFO", "pyproject.toml", "README.md"} <= names
    in_package = {name for name in names if name.startswith("asyncproof/") and not name.endswith("/")}
    assert in_package == {path for path in dists.wheel_files if path.startswith("asyncproof/")}
    assert [m.name for m in members if m.issym() or m.islnk()] == []  # the links, followed
    assert [name for name in names if "__pycache__" in name or name.endswith(".pyc")] == []


def test_base_install_instruments_a_starlette_app_and_names_the_missing_extras(
    layers: LayeredVenv, dists: Dists
) -> None:
    venv = layers.install(BASE)
    check_installed(venv, BASE, dists)

    seen = venv.script("starlette_app", ASGI_DRIVER + STARLETTE_APP)
    assert (seen["status"], seen["body"], seen["metrics_status"]) == (200, "hello world", 200)
    assert seen["counts"] == {"GET /hello/{name} 200": 1.0}

    bare = venv.run("asyncproof")
    assert bare.returncode == 2, bare.stdout + bare.stderr
    assert "pip install 'asyncproof[app]'" in bare.stderr
    assert "pip install 'asyncproof[load]'" in bare.stderr
    assert "Traceback" not in bare.stderr
    assert_needs_extra(venv, "prove", "load")
    assert_needs_extra(venv, "serve", "app")

    contract = venv.run("asyncproof", "contract")
    assert contract.returncode == 0, contract.stderr
    assert "http_server_request_duration_seconds" in contract.stdout
    assert venv.run("asyncproof", "--version").stdout.strip() == f"asyncproof {VERSION}"


def test_fastapi_extra_counts_a_fastapi_request(layers: LayeredVenv, dists: Dists) -> None:
    venv = layers.install(FASTAPI)
    check_installed(venv, FASTAPI, dists)

    seen = venv.script("fastapi_app", ASGI_DRIVER + FASTAPI_APP)
    assert (seen["status"], json.loads(seen["body"]), seen["metrics_status"]) == (200, {"item_id": 7}, 200)
    assert seen["counts"] == {"GET /items/{item_id} 200": 1.0}
    assert_needs_extra(venv, "serve", "app")


def test_app_extra_serves_the_reference_app(layers: LayeredVenv, dists: Dists) -> None:
    venv = layers.install(APP)
    check_installed(venv, APP, dists)

    with serving(venv, "app") as url:
        assert_live(url)
    assert_needs_extra(venv, "prove", "load")


@pytest.mark.timeout(480)  # the install, then up to 300 s for the proof
def test_app_load_extras_run_prove(layers: LayeredVenv, dists: Dists, sandbox: Sandbox) -> None:
    venv = layers.install(LOAD)
    check_installed(venv, LOAD, dists)

    # The Dockerfile's set: the previous release crashed here (ModuleNotFoundError: httpx).
    help_ = venv.run("asyncproof", "--help")
    assert help_.returncode == 0, help_.stdout + help_.stderr
    assert "prove" in help_.stdout
    assert "not available" not in help_.stdout

    out = sandbox.root / "prove-report"
    command = ["asyncproof", "prove", "--quick", "--only", "sync", "--out", str(out)]
    process = subprocess.Popen(
        [str(venv.bin / command[0]), *command[1:]],
        cwd=sandbox.work,
        env=sandbox.env(venv.path, ASYNCPROOF_STATE_DIR=str(sandbox.root / "prove-state")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output = process.communicate(timeout=300)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        stop(process, grace=10)  # what it started is found by nothing_outlives_the_test
        output = process.communicate(timeout=10)[0].decode(errors="replace")
        pytest.fail(f"asyncproof prove did not finish within 300 s:\n{output}")
    finally:
        stop(process, grace=10)
    assert process.returncode == 0, output
    assert "every observed verdict matches the expected one" in output
    report = json.loads((out / "report.json").read_text())
    assert [(row["scenario"], row["match"]) for row in report["scenarios"]] == [("sync", True)]


def test_sdist_installs_with_the_app_extra(dists: Dists, sandbox: Sandbox) -> None:
    venv = Venv.create(sandbox.root / "sdist-venv", sandbox)
    venv.install(requirement(dists.sdist, APP.extras))

    report = check_installed(venv, APP, dists)
    assert venv.run("asyncproof", "--version").stdout.strip() == f"asyncproof {VERSION}"
    # the wheel built here from the sdist installs the same files as the one built by the fixture
    record = Path(report["purelib"]) / f"asyncproof-{VERSION}.dist-info" / "RECORD"
    installed = {line.split(",")[0] for line in record.read_text().splitlines()}
    assert {p for p in installed if p.startswith("asyncproof/") and "__pycache__" not in p} == {
        p for p in dists.wheel_files if p.startswith("asyncproof/")
    }
    with serving(venv, "sdist") as url:
        assert_live(url)


def test_the_dockerfile_installs_the_set_tested_here() -> None:
    text = (ROOT / "Dockerfile").read_text()
    instructions = [
        line for line in re.sub(r"\\\n", " ", text).splitlines() if not line.lstrip().startswith("#")
    ]
    installs = [
        line for line in instructions if re.search(r"\bpip3?\s+install\b|\buv\s+pip\s+install\b", line)
    ]
    assert len(installs) == 1, installs
    arguments = re.split(r"&&|;|\|", installs[0].split("install", 1)[1])[0]
    targets = [word for word in shlex.split(arguments) if not word.startswith("-")]
    # the set test_app_load_extras_run_prove checks, and nothing else
    assert targets == [requirement(Path("."), LOAD.extras)], installs[0]


def test_the_editable_dev_install_maps_only_the_import_root(tmp_path: Path) -> None:
    # scripts/install's venv: the checkout's live files under asyncproof, no folder name of its own.
    code = (
        "import asyncproof.monitoring, importlib.util\n"
        "print(asyncproof.monitoring.__file__)\n"
        "print([n for n in ('monitoring', 'app', 'loadtests') if importlib.util.find_spec(n)])\n"
    )
    result = subprocess.run(
        [str(BIN / "python"), "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    location, leaked = result.stdout.splitlines()
    assert Path(location).resolve() == (ROOT / "monitoring" / "__init__.py").resolve()
    assert leaked == "[]"
