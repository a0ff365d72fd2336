"""The Docker runtime's engine operations as OpenTelemetry spans (issue 22): a real
``boride run --runtime docker`` sends, to the real OTLP receiver of tests/test_telemetry.py,
each container's create and start under its component's start span, and each round trip to
the session's helper within the build, all in the run's trace; the component's
``traceparent`` names its call's span."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.docker_helpers import image_of, managed_sessions
from tests.helpers import run_cli, write_pipeline
from tests.test_telemetry import receiver

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
    by_id = {s["id"]: s for s in spans}

    def ancestors(span: dict[str, Any]) -> list[str]:
        out = []
        while span["parent"] in by_id:
            span = by_id[span["parent"]]
            out.append(span["name"])
        return out

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
    assert all("build" in ancestors(s) and attr(s, "component") == "helper"
               for s in helper), helper
    merge = next(s for s in spans if s["name"] == "merge")
    assert next(s for s in helper if attr(s, "operation") == "POST /merge")["parent"] == \
        merge["id"]
    # the helper's own container too, within the build
    made = [s for s in spans if s["name"] == "container create"
            and attr(s, "component") == "helper"]
    assert made and all("build" in ancestors(s) for s in made)
    # the component's traceparent: its call's span, in the run's trace
    sent = json.loads((tmp_path / "out" / "headers.json").read_text())
    _, trace, parent, _ = sent["traceparent"].split("-")
    call = next(s for s in spans if s["name"] == "call processor me/probe")
    assert (trace, parent) == (root["trace"], call["id"])
