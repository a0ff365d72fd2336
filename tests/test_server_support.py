"""Helpers of the ``boride serve`` tests (no tests here): a real uvicorn server on a free
loopback port in a thread, registry files of real cyanprintsdk components, the bodies a Go
coordinator client sends."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml
from fastapi import FastAPI

from boride.server import ServerConfig, Service, create_app
from tests.conftest import COMPONENTS, EXAMPLES

PROBLEM_FIELDS = {"title", "status", "detail", "type", "trace_id", "traceId", "data"}


@dataclass
class Running:
    url: str
    app: FastAPI

    @property
    def service(self) -> Service:
        service = self.app.state.service
        assert isinstance(service, Service)
        return service

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 120.0), **kw)


def _uvicorn(app: FastAPI) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                         timeout_graceful_shutdown=5))


@contextmanager
def running_server(config: ServerConfig | None = None, **kw: Any) -> Iterator[Running]:
    """``create_app(config)`` served by uvicorn on 127.0.0.1 (a free port) in a thread; on exit
    the server shuts down the way ``boride serve`` does on SIGTERM (lifespan clean-up)."""
    app = create_app(config or ServerConfig(), **kw)
    servers = [_uvicorn(app)]

    async def serve_all() -> None:
        await asyncio.gather(*(s.serve() for s in servers))

    thread = threading.Thread(target=asyncio.run, args=(serve_all(),), name="uvicorn",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not all(s.started for s in servers):
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    urls = [f"http://127.0.0.1:{s.servers[0].sockets[0].getsockname()[1]}" for s in servers]
    try:
        yield Running(urls[0], app)
    finally:
        for s in servers:
            s.should_exit = True
        thread.join(60)
        assert not thread.is_alive(), "the server did not stop"


def component(name: str) -> list[str]:
    return [sys.executable, str(COMPONENTS / f"{name}.py")]


def new_id() -> str:
    return str(uuid.uuid4())


def write_registry(path: Path, *, processors: list[dict[str, Any]] = (),  # type: ignore[assignment]
                   plugins: list[dict[str, Any]] = (),  # type: ignore[assignment]
                   resolvers: list[dict[str, Any]] = (),  # type: ignore[assignment]
                   templates: list[dict[str, Any]] = ()) -> Path:  # type: ignore[assignment]
    path.write_text(yaml.safe_dump({"processors": list(processors), "plugins": list(plugins),
                                    "resolvers": list(resolvers),
                                    "templates": list(templates)}, sort_keys=False))
    return path


def entry(ref: str, script: str | list[str], version: int = 1, id_: str | None = None,
          **extra: Any) -> dict[str, Any]:
    command = component(script) if isinstance(script, str) else script
    return {"ref": ref, "version": version, "id": id_ or new_id(), "command": command, **extra}


def pinned(e: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """How a template pins a registry entry."""
    return {"id": e["id"], "version": e["version"], "createdAt": "", "description": "",
            "dockerReference": "", "dockerTag": "", **extra}


def template_body(template_id: str, processors: list[dict[str, Any]] = (),  # type: ignore[assignment]
                  plugins: list[dict[str, Any]] = (),  # type: ignore[assignment]
                  resolvers: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """A ``TemplateVersionRes`` as the Go coordinator's clients send it."""
    return {
        "principal": {"id": template_id, "version": 1, "createdAt": "", "description": "",
                      "properties": {"blobDockerReference": "", "blobDockerTag": "",
                                     "templateDockerReference": "", "templateDockerTag": ""}},
        "template": {"id": new_id(), "name": "t", "project": "", "source": "", "email": "",
                     "tags": None, "description": "", "readme": "", "userId": ""},
        "processors": [pinned(p) for p in processors],
        "plugins": [pinned(p) for p in plugins],
        "templates": None,
        "resolvers": list(resolvers),
    }


GLOB = {"root": None, "glob": "**/*.*", "exclude": ["**/*.bak"], "type": "template"}


def build_body(template: dict[str, Any], processors: list[tuple[str, Any]],
               plugins: list[tuple[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    return {"template": template, "merger_id": new_id(), "cyan": {
        "processors": [{"name": n, "config": c, "files": [GLOB]} for n, c in processors],
        "plugins": [{"name": n, "config": c} for n, c in plugins]}}


# --- the bundled example, as a Go coordinator client would drive it ------------------------

EXAMPLE_REGISTRY = EXAMPLES / "registry.yaml"


def example_template() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE_REGISTRY.read_text())
    body = template_body(data["templates"][0]["id"], data["processors"], data["plugins"])
    concat = data["resolvers"][0]
    body["resolvers"] = [pinned(concat, config={"separator": "----\n"}, files=["src/**"])]
    return body


def example_build(template: dict[str, Any]) -> dict[str, Any]:
    """The build of examples/pipeline.yaml, with versioned and versionless names."""
    return {"template": template, "merger_id": new_id(), "cyan": {
        "processors": [
            {"name": "boride/upper", "config": {}, "files": [
                {"root": None, "glob": "src/**/*.txt", "exclude": ["src/lib/**"],
                 "type": "template"}]},
            {"name": "boride/substitute:1", "config": {"name": "cyan"}, "files": [
                {"root": None, "glob": "**/*.txt", "exclude": ["assets/**"], "type": "template"},
                {"root": None, "glob": "**/*.md", "exclude": ["docs/draft.md"],
                 "type": "template"},
                {"root": None, "glob": "LICENSE", "exclude": ["**/*.bak"], "type": "template"},
                {"root": None, "glob": "assets/*", "exclude": ["assets/*.tmp"],
                 "type": "copy"}]},
            {"name": "boride/license",
             "config": {"holder": "The Boride Authors", "year": 2025, "spdx": "MIT"},
             "files": [{"root": None, "glob": "LICENSE", "exclude": ["**/*.bak"],
                        "type": "template"}]}],
        "plugins": [{"name": "boride/stamp",
                     "config": {"stamp": "generated by the boride example"}}]}}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The problem details of an error answer, checked for shape."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    data = response.json()
    assert set(data) == PROBLEM_FIELDS, data
    assert data["status"] == status
    assert data["type"].endswith(f"/{status}")
    assert isinstance(data["data"], list) and data["data"], data
    assert all(isinstance(x, str) for x in data["data"])
    assert data["trace_id"] == data["traceId"] == response.headers["x-trace-id"]
    return data


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """One sample of the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return float(sample.value)
    raise KeyError(name)


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        time.sleep(interval)
