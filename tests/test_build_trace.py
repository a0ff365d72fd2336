"""A timeline per API build on request (issue 22): ``POST /executor/{id}?trace=true`` keeps the
build's Trace Event file, ``GET /executor/{id}/trace`` answers it, through ``boride front``
too; one per session (the last), never another session's, gone with the session, behind the
token like every other route."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_front import (
    AUTH,
    EXPECTED,
    create_flow,
    healthy,
    running_front,
    worker_config,
)
from tests.test_server_support import (
    example_build,
    example_template,
    new_id,
    problem,
    running_server,
)
from tests.test_trace_file import Trace, check_nesting, check_slots, end

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("no_leftovers")]
PROCESSORS = ("boride/upper", "boride/substitute", "boride/license")


def trace_of(http: httpx.Client, sid: str, tmp_path: Path) -> Trace:
    r = http.get(f"/executor/{sid}/trace")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    path = tmp_path / f"{sid}.json"
    path.write_text(r.text)
    return Trace(path)


def check_build(trace: Trace, parallelism: int) -> None:
    """Every stage of a served build on the build's row, inside the build; every processor
    and the plugin called once within its stage, the merge within its own."""
    check_nesting(trace)
    build = trace.one("build", "build")
    assert build["args"]["status"] == "ok"
    stages: dict[str, dict[str, Any]] = {}
    for name in ("start", "process", "merge", "plugins"):
        e = stages[name] = trace.one("build", name)
        assert build["ts"] <= e["ts"] and end(e) <= end(build) + 1e-3
    assert stages["process"]["ts"] >= end(stages["start"]) - 1e-3
    assert stages["plugins"]["ts"] >= end(stages["merge"]) - 1e-3

    def within(e: dict[str, Any], stage: str) -> None:
        s = stages[stage]
        assert s["ts"] <= e["ts"] + 1e-3 and end(e) <= end(s) + 1e-3, (e, s)

    for row, stage in [*((f"processor {p}:1", "process") for p in PROCESSORS),
                       ("plugin boride/stamp:1", "plugins")]:
        step = row.partition(" ")[2]  # (the version the template pins)
        calls = trace.row(row)
        assert [e["name"] for e in calls] == [f"call {step}"], (row, list(trace.rows))
        within(calls[0], stage)
        assert calls[0]["args"]["step"] == step and calls[0]["args"]["cached"] is False
        assert len(calls[0]["args"]["config"]) == 12
    resolves = trace.row("resolver boride/concat:1")  # the example's two conflicts
    assert sorted(e["args"]["path"] for e in resolves) == ["src/farewell.txt",
                                                           "src/greeting.txt"]
    for e in resolves:
        within(e, "merge")
    within(trace.one("merge", "merge"), "merge")
    for e in trace.row("merge"):
        within(e, "merge")  # (each resolver call too)
    assert len(check_slots(trace, parallelism)) >= len(PROCESSORS) + 1


def test_a_traced_build_s_timeline_through_the_front_and_no_other(tmp_path: Path) -> None:
    with running_server(worker_config(tmp_path, "a")) as worker, \
            running_front([worker.url]) as front, front.client() as http:
        healthy(http, 1)
        template = example_template()
        plain, traced = new_id(), new_id()
        assert create_flow(http, template, plain) == EXPECTED
        # an untraced build keeps nothing
        p = problem(http.get(f"/executor/{plain}/trace"), 404)
        assert p["title"] == "No trace" and f"/executor/{plain}?trace=true" in p["detail"]
        assert create_flow(http, template, traced) == EXPECTED  # (started, then built)
        with http.stream("POST", f"/executor/{traced}?trace=true",
                         json=example_build(template)) as r:
            assert r.status_code == 200, r.read()
            assert b"".join(r.iter_bytes()) == EXPECTED
        parallelism = worker.service.config.limits.build_parallelism()
        check_build(trace_of(http, traced, tmp_path), parallelism)
        # the other session still has none, and the worker answers as the front does
        assert problem(http.get(f"/executor/{plain}/trace"), 404)["title"] == "No trace"
        with worker.client(headers=AUTH) as direct:
            check_build(trace_of(direct, traced, tmp_path), parallelism)
            # behind the token, like every route of a session
            with worker.client() as anonymous:
                assert anonymous.get(f"/executor/{traced}/trace").status_code == 401
        # a later untraced build leaves the last traced one's
        first = http.get(f"/executor/{traced}/trace").json()
        with http.stream("POST", f"/executor/{traced}", json=example_build(template)) as r:
            assert r.status_code == 200 and b"".join(r.iter_bytes()) == EXPECTED
        assert http.get(f"/executor/{traced}/trace").json() == first
        # a traced one replaces it
        with http.stream("POST", f"/executor/{traced}?trace=1",
                         json=example_build(template)) as r:
            assert r.status_code == 200 and b"".join(r.iter_bytes()) == EXPECTED
        again = http.get(f"/executor/{traced}/trace").json()
        assert again != first
        check_build(Trace(_saved(tmp_path, again)), parallelism)
        # what a client sends never reaches another session's: only its own id's is read
        for bad in ("..%2F" + traced, traced + "%2F..", "x" * 65, "-" + traced):
            assert http.get(f"/executor/{bad}/trace").status_code in (400, 404), bad
        assert problem(http.get(f"/executor/{new_id()}/trace"), 404)["title"] == \
            "Unknown session"
        # gone with its session
        assert http.delete(f"/executor/{traced}").json() == {"status": "OK"}
        assert problem(http.get(f"/executor/{traced}/trace"), 404)["title"] == \
            "Unknown session"
        assert http.delete(f"/executor/{plain}").json() == {"status": "OK"}


def _saved(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "again.json"
    path.write_text(json.dumps(data))
    return path
