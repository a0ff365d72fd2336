"""The package as pip installs it: the wheel built for real from this tree and opened (license,
``py.typed``, metadata); the environment variables in every command's ``--help``; and the
OpenAPI document, which declares the bearer token and stays readable when one is set."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email.message import Message
from email.parser import Parser
from importlib.metadata import version
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement

import boride
from boride.cli import main
from boride.server import ServerConfig, create_app
from boride.settings import SETTINGS
from tests.test_server_support import problem, running_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel pip builds (with the build backend pyproject.toml names, in isolation) from a
    copy of what the build reads, so that the tree gets no build/ or egg-info folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "boride", source / "boride",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                           "--disable-pip-version-check", "-w", str(tmp / "dist"), str(source)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = (tmp / "dist").glob("boride-*.whl")
    return zipfile.ZipFile(built)


def _dist_info(wheel: zipfile.ZipFile) -> str:
    return f"boride-{boride.__version__}.dist-info"


def _metadata(wheel: zipfile.ZipFile) -> Message:
    return Parser().parsestr(wheel.read(f"{_dist_info(wheel)}/METADATA").decode())


def test_wheel_carries_the_license_and_py_typed(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    assert "boride/py.typed" in names
    license_text = wheel.read(f"{_dist_info(wheel)}/licenses/LICENSE").decode()
    assert license_text == (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    assert "Copyright (c) 2026 The boride Authors" in license_text
    assert not [n for n in names if n.startswith(("tests/", "bench/", "docker/"))]


def test_wheel_metadata(wheel: zipfile.ZipFile) -> None:
    meta = _metadata(wheel)
    assert meta["Version"] == boride.__version__  # one source: boride/__init__.py
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # the expression says it
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Source", "Issues"} <= set(urls)
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
    runtime = {r.name.lower(): r for r in requires if r.marker is None}
    # imported by boride itself, so declared rather than left to fastapi and docker
    assert {"starlette", "requests", "fastapi", "httpx", "click"} <= set(runtime)
    for name in ("starlette", "requests"):
        assert any(s.operator == "<" for s in runtime[name].specifier), runtime[name]
    matplotlib = [r for r in requires if r.name == "matplotlib"]
    assert matplotlib and all(str(r.marker) == 'extra == "bench"' for r in matplotlib)
    dev = {r.name: r for r in requires if r.marker is not None and r.marker.evaluate(
        {"extra": "dev"})}
    for name in ("ruff", "mypy"):  # lint gates CI: no new major rule set by surprise
        assert any(s.operator == "<" for s in dev[name].specifier), dev[name]
        assert dev[name].specifier.contains(version(name))  # the installed one still fits


def test_nothing_outside_bench_imports_matplotlib() -> None:
    for folder in ("boride", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            assert "import matplotlib" not in text or path == Path(__file__), path


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], click.Command]]:
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


def _help(*args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # unwrapped: a name may be cut at a line's end


def test_every_help_shows_the_variables_its_options_read() -> None:
    serve = _help("serve")
    assert "[env var: BORIDE_TOKEN]" in serve
    assert "env var: BORIDE_TOKEN_FILE" in serve and "env var: BORIDE_REGISTRY" in serve
    assert "BORIDE_DOCKER_MEMORY" in serve  # --runtime names its runtimes' settings
    assert "env var: BORIDE_WORKER_TOKEN" in _help("front")
    assert "env var: BORIDE_CACHE_DIR" in _help("cache", "info")
    seen = 0
    for path, command in _commands(main):
        text = _help(*path)
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                names = [param.envvar] if isinstance(param.envvar, str) else param.envvar
                for name in names:
                    assert f"env var: {name}" in text, (path, name)
                    seen += 1
    assert seen >= 8
    top = _help()
    for setting in SETTINGS:
        assert setting.name in top, setting.name


def test_openapi_declares_the_bearer_token_and_stays_readable_with_one(tmp_path: Path) -> None:
    token = "s3cret-token-of-the-package-test"
    with running_server(ServerConfig(token=token, work_root=tmp_path)) as server, \
            server.client() as http:
        answer = http.get("/openapi.json")
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        assert http.head("/openapi.json").status_code == 200
        docs = http.get("/docs")
        assert docs.status_code == 200 and "/openapi.json" in docs.text
        assert http.get("/redoc").status_code == 200
        # every other route still needs the token; so does anything but reading the docs
        assert problem(http.get("/metrics"), 401)["title"] == "Unauthorized"
        problem(http.post("/openapi.json"), 401)
        problem(http.get("/docs/anything"), 401)
        problem(http.post("/executor", json={}), 401)
        auth = {"Authorization": f"Bearer {token}"}
        assert http.get("/metrics", headers=auth).status_code == 200
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    paths = doc["paths"]
    assert "security" not in paths["/"]["get"]  # the health check needs no token
    for path, item in paths.items():
        if path == "/":
            continue
        for method, operation in item.items():
            assert operation.get("security") == [{"bearer": []}], (path, method)
    # without a token the scheme is there but optional (an empty alternative)
    plain = create_app(ServerConfig(work_root=tmp_path)).openapi()
    assert plain["components"]["securitySchemes"]["bearer"] == scheme
    assert plain["paths"]["/metrics"]["get"]["security"] == [{"bearer": []}, {}]
