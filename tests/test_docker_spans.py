"""The Docker runtime's engine operations as OpenTelemetry spans (issue 22): a real
``boride run --runtime docker`` sends, to the real OTLP receiver of tests/test_telemetry.py,
each container's create and start under its component's start span, and each round trip to
the session's helper within the build, all in the run's trace; the component's
``traceparent`` names its call's span. Served, what a request starts without a build is
under the request's span."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.docker_helpers import image_of, managed_sessions
from tests.helpers import run_cli, write_pipeline
from tests.test_server_cli import serving
from tests.test_server_support import new_id, template_body, write_registry
from tests.test_telemetry import (
    CLIENT_SPAN,
    ancestors,
    otel_env,
    probe_build,
    probe_session,
    receiver,
)

pytestmark = pytest.mark.docker


def test_container_and_helper_operations_are_spans_of_the_build(tmp_path: Path) -> None:
    template = tmp_path / "template"
    template.mkdir()
    (template / "a.txt").write_text("a")
    pipeline = write_pipeline(tmp_path / "pipeline.yaml", template,
                              [("me/probe", "headers_probe", None)],
                              plugins=[("me/plug", "noop_plugin", {})], images=True)
    before = managed_sessions()
    work = tmp_path / "work"
    work.mkdir()
    with receiver() as (endpoint, spans):
        proc = run_cli("run", pipeline, "--runtime", "docker", "--out", tmp_path / "out",
                       "--json", tmpdir=work, timeout=300,
                       env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                            "NO_PROXY": "127.0.0.1"})
        assert proc.returncode == 0, proc.stderr
    assert managed_sessions() - before == set()
    root = next(s for s in spans if s["name"] == "boride run")
    assert {s["trace"] for s in spans} == {root["trace"]}  # one trace, the run's

    def above(span: dict[str, Any]) -> list[str]:
        return [a["name"] for a in ancestors(span, spans)]

    def attr(span: dict[str, Any], key: str) -> str:
        return str(span["attrs"][f"boride.{key}"].string_value)

    for name, kind, component in (("me/probe", "processor", "headers_probe"),
                                  ("me/plug", "plugin", "noop_plugin")):
        start = next(s for s in spans if s["name"] == f"start {kind} {name}")
        ops = {attr(s, "operation"): s for s in spans
               if s["name"].startswith("container ") and attr(s, "component") == name}
        assert {"create", "start"} <= ops.keys(), [s["name"] for s in spans]
        for op in ops.values():  # children of its component's start, within it
            assert op["parent"] == start["id"], (op, start)
            assert start["start"] <= op["start"] <= op["end"] <= start["end"]
            assert attr(op, "image") == image_of(component)
            assert op["kind"] == 3 and op["status"] != 2  # CLIENT, not an error
        assert ops["create"]["end"] <= ops["start"]["start"]
    helper = [s for s in spans if s["name"].startswith("helper ")]
    trips = {attr(s, "operation") for s in helper}
    assert {"POST /dirs", "POST /merge"} <= trips, trips
    assert all("build" in above(s) and attr(s, "component") == "helper"
               for s in helper), helper
    merge = next(s for s in spans if s["name"] == "merge")
    assert next(s for s in helper if attr(s, "operation") == "POST /merge")["parent"] == \
        merge["id"]
    # the helper's own container too, within the build
    made = [s for s in spans if s["name"] == "container create"
            and attr(s, "component") == "helper"]
    assert made and all("build" in above(s) for s in made)
    # the component's traceparent: its call's span, in the run's trace
    sent = json.loads((tmp_path / "out" / "headers.json").read_text())
    _, trace, parent, _ = sent["traceparent"].split("-")
    call = next(s for s in spans if s["name"] == "call processor me/probe")
    assert (trace, parent) == (root["trace"], call["id"])


def test_served_on_docker_the_request_holds_what_it_starts_and_the_build_its_own(
        tmp_path: Path) -> None:
    probe = {"ref": "me/probe", "version": 1, "id": new_id(), "image": image_of("headers_probe")}
    registry = write_registry(tmp_path / "r.yaml", processors=[probe])
    dev = tmp_path / "dev"
    (dev / "t").mkdir(parents=True)
    (dev / "t" / "a.txt").write_text("a")
    before = managed_sessions()
    opened, built = "1" * 32, "2" * 32
    with receiver() as (endpoint, spans), \
            otel_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_SERVICE_NAME="docker"), \
            serving("--runtime", "docker", "--registry", registry, "--dev-root", dev,
                    "--work-root", tmp_path / "work") as (proc, url):
        template = template_body("local-p", [probe])
        sid = new_id()
        with httpx.Client(base_url=url, timeout=300) as http:
            probe_session(http, sid, template, f"00-{opened}-{CLIENT_SPAN}-01")
            got = probe_build(http, sid, template, f"00-{built}-{CLIENT_SPAN}-01",
                              "?trace=true")
            timeline = http.get(f"/executor/{sid}/trace").json()
            assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    assert managed_sessions() - before == set()

    def above(span: dict[str, Any]) -> list[str]:
        return [a["name"] for a in ancestors(span, spans)]

    def ops(trace: str, component: str) -> list[dict[str, Any]]:
        return [s for s in spans if s["trace"] == trace and s["name"].startswith(
            ("container ", "helper ")) and
            s["attrs"]["boride.component"].string_value == component]

    # the try's helper is made under its request's span (no build runs)
    helper = ops(opened, "helper")
    assert {"container create", "container start"} <= {s["name"] for s in helper}, helper
    assert all("POST /executor/try" in above(s) for s in helper), helper
    # the build starts the probe (under its start span) and works through the helper
    mine = ops(built, "me/probe:1") or ops(built, "me/probe")
    start = next(s for s in spans if s["trace"] == built and s["name"].startswith(
        "start processor me/probe"))
    assert {s["name"] for s in mine} >= {"container create", "container start"}, mine
    assert all(s["parent"] == start["id"] for s in mine), (mine, start)
    trips = ops(built, "helper")
    assert "helper POST /dirs" in {s["name"] for s in trips}, trips
    assert all("POST /executor/{sessionId}" in above(s) for s in trips), trips
    # during the build under its spans; the output's archive streams after it, in the request
    assert all("build" in above(s) for s in trips if s["name"] in (
        "helper POST /dirs", "helper GET /names", "helper POST /merge")), trips
    assert "build" not in above(next(s for s in trips if s["name"] ==
                                         "helper POST /archive"))
    call = next(s for s in spans if s["trace"] == built and s["name"].startswith(
        "call processor me/probe"))
    assert got["traceparent"].split("-")[1:3] == [built, call["id"]]
    rows = {e["args"]["name"] for e in timeline["traceEvents"] if e["name"] == "thread_name"}
    assert any(r.startswith("processor me/probe") for r in rows), rows
