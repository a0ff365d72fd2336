"""OpenTelemetry traces (boride/telemetry.py) seen by a real OTLP/HTTP receiver in the test:
a real ``boride serve`` exports the request's span under the client's ``traceparent``, the
build's, its stages' and each component call's, and the component itself got a
``traceparent`` of that trace; a failing component's span says why. Unconfigured, boride
sends nothing and does not even import OpenTelemetry."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from tests.helpers import run_cli, start_cli, write_pipeline
from tests.test_server_cli import free_port, serving
from tests.test_server_support import (
    build_body,
    entry,
    new_id,
    template_body,
    wait_for,
    write_registry,
)

ROOT = Path(__file__).resolve().parent.parent
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@contextmanager
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An OTLP/HTTP traces receiver on loopback: its endpoint and the spans it got (decoded
    from the protobuf), each a dict with the service name."""
    spans: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            assert self.path == "/v1/traces", self.path
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        spans.append({
                            "service": attrs.get("service.name"), "name": s.name,
                            "trace": s.trace_id.hex(), "id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(), "kind": s.kind,
                            "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                            "status": s.status.code, "message": s.status.message,
                            "attrs": {a.key: a.value for a in s.attributes}})
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", spans
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def otel_env(**env: str) -> Iterator[None]:
    """The environment ``serving`` starts ``boride serve`` with (it inherits ours)."""
    keys = [*env, "NO_PROXY", "no_proxy"]
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(env, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def files_of(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}


@pytest.mark.sandbox
@pytest.mark.usefixtures("no_leftovers")


def probe_session(http: httpx.Client, sid: str, template: dict[str, Any],
                  traceparent: str | None = None) -> None:
    """``POST /executor/try`` of the probe's template (``local-p``, folder ``t``)."""
    r = http.post("/executor/try", headers={"traceparent": traceparent} if traceparent else {},
                  json={"sessionId": sid, "localTemplateId": "local-p", "source": "path",
                        "path": "t", "template": template})
    assert r.status_code == 200, r.text


def probe_build(http: httpx.Client, sid: str, template: dict[str, Any], traceparent: str,
                query: str = "") -> dict[str, Any]:
    """A build of the probe in session ``sid``: the headers its call was sent with."""
    r = http.post(f"/executor/{sid}{query}", json=build_body(template, [("me/probe", None)]),
                  headers={"traceparent": traceparent})
    assert r.status_code == 200, r.text
    got: dict[str, Any] = json.loads(files_of(r.content)["headers.json"])
    return got

def ancestors(span: dict[str, Any], spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The spans above ``span`` among ``spans``, its parent first."""
    by_id = {s["id"]: s for s in spans}
    out = []
    while span["parent"] in by_id:
        span = by_id[span["parent"]]
        out.append(span)
    return out

def test_serve_exports_the_request_the_build_and_the_component_call_in_the_clients_trace(
        tmp_path: Path) -> None:
    probe = entry("me/probe", "headers_probe")
    registry = write_registry(tmp_path / "r.yaml", processors=[probe])
    dev = tmp_path / "dev"
    (dev / "t").mkdir(parents=True)
    (dev / "t" / "a.txt").write_text("a")
    parent = f"00-{TRACE}-{CLIENT_SPAN}-01"
    with receiver() as (endpoint, spans), \
            otel_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_SERVICE_NAME="boride-test"), \
            serving("--registry", registry, "--dev-root", dev, "--work-root",
                    tmp_path / "work") as (proc, url):
        template = template_body("local-p", [probe])
        sid = new_id()
        with httpx.Client(base_url=url, timeout=120) as http:
            probe_session(http, sid, template)
            got = probe_build(http, sid, template, parent)
            # a failing call: its span carries the component's error
            r = http.post(f"/executor/{sid}", json=build_body(
                template, [("me/probe", {"fail": "probe says no"})]),
                headers={"traceparent": f"00-{'1' * 32}-{CLIENT_SPAN}-01"})
            assert r.status_code >= 400, r.text
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGTERM, output
    # the component was called with a traceparent of the client's trace
    assert got["traceparent"].split("-")[1] == TRACE, got
    mine = [s for s in spans if s["trace"] == TRACE]
    assert all(s["service"] == "boride-test" for s in spans)
    names = {s["name"] for s in mine}
    request = next(s for s in mine if s["name"] == "POST /executor/{sessionId}")
    assert request["parent"] == CLIENT_SPAN and request["kind"] == 2  # SERVER
    assert request["attrs"]["http.route"].string_value == "/executor/{sessionId}"
    assert request["attrs"]["http.response.status_code"].int_value == 200
    build = next(s for s in mine if s["name"] == "build")
    # (FastAPI's own spans may come between)
    assert request["id"] in [a["id"] for a in ancestors(build, mine)]
    stages = [s for s in mine if s["name"].startswith("stage ")]
    assert stages and all(s["parent"] == build["id"] for s in stages), names
    call = next(s for s in mine if s["name"].startswith("call processor me/probe"))
    assert call["parent"] in {s["id"] for s in stages}
    assert call["attrs"]["boride.step"].string_value.startswith("me/probe")
    assert request["start"] <= build["start"] <= call["start"] <= call["end"] <= build["end"]
    assert build["end"] <= request["end"]
    # the component's traceparent names its call's span (a child of the build's stage)
    assert got["traceparent"].split("-")[2] == call["id"], (got, call)
    assert call["kind"] == 3  # CLIENT
    failed = [s for s in spans if s["trace"] == "1" * 32]
    bad = next(s for s in failed if s["name"].startswith("call processor me/probe"))
    assert bad["status"] == 2 and "probe says no" in bad["message"], bad  # ERROR
    assert next(s for s in failed if s["name"] == "build")["status"] == 2


@pytest.mark.sandbox
def test_run_exports_the_build_and_nothing_when_exporting_is_off(tmp_path: Path) -> None:
    template = tmp_path / "template"
    template.mkdir()
    (template / "a.txt").write_text("a")
    pipeline = write_pipeline(tmp_path / "pipeline.yaml", template,
                              [("me/probe", "headers_probe", None)])
    with receiver() as (endpoint, spans):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "NO_PROXY": "127.0.0.1"}
        off = run_cli("run", pipeline, "--out", tmp_path / "off",
                      env={**env, "OTEL_TRACES_EXPORTER": "none"})
        assert off.returncode == 0, off.stderr
        assert spans == []
        on = run_cli("run", pipeline, "--out", tmp_path / "on", env=env)
        assert on.returncode == 0, on.stderr
    names = {s["name"] for s in spans}
    assert {"build", "call processor me/probe", "start processor me/probe"} <= names, names
    assert len({s["trace"] for s in spans}) == 1
    sent = json.loads((tmp_path / "on" / "headers.json").read_text())
    assert sent["traceparent"].split("-")[1] == spans[0]["trace"]
    call = next(s for s in spans if s["name"] == "call processor me/probe")
    assert sent["traceparent"].split("-")[2] == call["id"]  # its parent: its call's span


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_unconfigured_boride_does_not_import_opentelemetry() -> None:
    proc = python(
        "import sys, boride.cli, boride.protocol\n"
        "from boride import telemetry\n"
        "assert telemetry.setup() is False and telemetry.headers() == {}\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
        "from boride.server.app import create_app\n"
        "from boride.front.app import create_front_app\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk',\n"
        "                                                      'opentelemetry.exporter'))))\n")
    assert proc.returncode == 0, proc.stderr
    # (FastAPI itself imports opentelemetry's API in the server; the SDK stays out)
    assert proc.stdout.split("\n")[:2] == ["[]", "[]"], proc.stdout


def test_configured_but_not_installed_warns_in_one_line_and_stays_off() -> None:
    proc = python("import sys; sys.modules['opentelemetry.sdk'] = None\n"
                  "from boride import telemetry\n"
                  "print(telemetry.setup(), telemetry.enabled())\n",
                  OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False False"
    assert proc.stderr.count("\n") == 1 and "boride[otel]" in proc.stderr, proc.stderr
    proc = python("from boride import telemetry; print(telemetry.setup())",
                  OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
                  OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    assert proc.stdout.strip() == "False" and "only http/protobuf" in proc.stderr


@contextmanager
def front_serving(worker: str, **env: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real ``boride front`` over ``worker``, once it sees the worker healthy."""
    port = free_port()
    proc = start_cli("front", "--port", str(port), "--worker", worker, env=env,
                     stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                return any(w["healthy"] for w in httpx.get(url + "/workers", timeout=1).json())
            except httpx.HTTPError:
                return False
        wait_for(up)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.sandbox
@pytest.mark.usefixtures("no_leftovers")
def test_one_trace_from_the_client_through_the_front_and_the_worker_to_the_component(
        tmp_path: Path) -> None:
    probe = entry("me/probe", "headers_probe")
    registry = write_registry(tmp_path / "r.yaml", processors=[probe])
    dev = tmp_path / "dev"
    (dev / "t").mkdir(parents=True)
    with receiver() as (endpoint, spans), \
            otel_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_SERVICE_NAME="worker"), \
            serving("--registry", registry, "--dev-root", dev, "--work-root",
                    tmp_path / "work") as (worker, worker_url), \
            front_serving(worker_url, OTEL_SERVICE_NAME="front") as (front, url):
        template = template_body("local-p", [probe])
        sid = new_id()
        with httpx.Client(base_url=url, timeout=120) as http:
            probe_session(http, sid, template)
            got = probe_build(http, sid, template, f"00-{TRACE}-{CLIENT_SPAN}-01")
        for proc in (front, worker):
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    assert got["traceparent"].split("-")[1] == TRACE
    mine = [s for s in spans if s["trace"] == TRACE]
    at_front = next(s for s in mine if s["service"] == "front"
                    and s["name"] == "POST /executor/{sessionId}")
    assert at_front["parent"] == CLIENT_SPAN
    at_worker = next(s for s in mine if s["service"] == "worker"
                     and s["name"] == "POST /executor/{sessionId}")
    assert at_worker["parent"] == at_front["id"]
    assert any(s["service"] == "worker" and s["name"].startswith("call processor me/probe")
               for s in mine)


def test_an_unreachable_collector_costs_one_error_line_not_the_command() -> None:
    with receiver() as (endpoint, _):
        pass  # (its port, now closed)
    proc = python("from boride import telemetry\n"
                  "assert telemetry.setup()\n"
                  "with telemetry.span('x'):\n"
                  "    pass\n",
                  OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="1",
                  NO_PROXY="127.0.0.1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Failed to export" in proc.stderr, proc.stderr


@pytest.mark.sandbox
@pytest.mark.usefixtures("no_leftovers")
def test_run_watch_exports_each_build_in_its_own_trace(tmp_path: Path) -> None:
    template = tmp_path / "template"
    template.mkdir()
    (template / "a.txt").write_text("a")
    pipeline = write_pipeline(tmp_path / "pipeline.yaml", template,
                              [("me/probe", "headers_probe", None)])
    with receiver() as (endpoint, spans):
        proc = start_cli("run", pipeline, "--out", tmp_path / "out", "--watch", "--json",
                         "--cache-dir", tmp_path / "cache",
                         env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "NO_PROXY": "127.0.0.1"})
        try:
            assert proc.stdout is not None
            first = json.loads(proc.stdout.readline())
            assert first["build"] == 1 and first["status"] == "ok", first
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    build = next(s for s in spans if s["name"] == "build")
    root = next(s for s in spans if s["name"] == "boride run --watch")
    assert build["parent"] == root["id"] and build["trace"] == root["trace"]
    assert any(s["name"] == "call processor me/probe" and s["trace"] == root["trace"]
               for s in spans)
    sent = json.loads((tmp_path / "out" / "headers.json").read_text())
    assert sent["traceparent"].split("-")[1] == root["trace"]
