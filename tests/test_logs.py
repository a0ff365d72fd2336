"""Logs and trace ids as an operator sees them: real ``boride serve`` and ``boride front``
processes with ``--log-format json``, their stderr parsed line by line, the client's trace id
followed through the front to its worker, ``/metrics``, and ``boride run``'s logs."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from boride.server.problems import incoming_trace_id
from tests.conftest import PipelineFactory
from tests.helpers import _command, _environment, run_cli, start_cli
from tests.test_server_cli import free_port, wait_up
from tests.test_server_support import example_build, example_template, new_id

HEX32 = re.compile(r"[0-9a-f]{32}")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@contextmanager
def started(command: str, *args: str, log: Path, ready: str = "/", fmt: str = "json"
            ) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``boride COMMAND --port P ARGS --log-format FMT``, its stderr in ``log``; stopped
    with Ctrl-C at the end."""
    port = free_port()
    with log.open("w") as err:
        proc = start_cli(command, "--port", str(port), *args, "--log-format", fmt,
                         stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(proc, url, f"boride {command}", log.read_text, ready=ready, timeout=60)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def json_lines(log: Path) -> list[dict[str, Any]]:
    """Every line from the first JSON one (the start-up notes before are plain text) to
    uvicorn's last, each parsed and checked to carry the fields (click's "Aborted!" after
    Ctrl-C is no log line)."""
    lines = log.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("{"))
    last = max(i for i, line in enumerate(lines) if "Finished server process" in line)
    assert lines[last + 1:] in ([], ["", "Aborted!"]), lines[last + 1:]
    lines = lines[:last + 1]
    parsed = []
    for line in lines[first:]:
        entry = json.loads(line)  # every line: one JSON object
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        when = datetime.fromisoformat(entry["time"])
        assert when.utcoffset() == timedelta(0), entry["time"]  # UTC
        assert entry["level"] in ("debug", "info", "warning", "error", "critical")
        parsed.append(entry)
    return parsed


def access_lines(entries: list[dict[str, Any]], trace: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["logger"] == "boride.access" and e.get("trace_id") == trace]


def test_incoming_trace_ids() -> None:
    def of(**headers: str) -> str | None:
        return incoming_trace_id([(k.replace("_", "-").encode(), v.encode())
                                  for k, v in headers.items()])

    assert of(x_trace_id="abc-123") == "abc-123"
    assert of(x_trace_id="A_b-9" * 12 + "abcd") == "A_b-9" * 12 + "abcd"  # 64 characters
    for bad in ("", "a" * 65, "has space", "semi;colon", "é", "a\tb"):
        assert of(x_trace_id=bad) is None, bad
    assert of(traceparent=TRACEPARENT) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert of(x_trace_id="mine", traceparent=TRACEPARENT) == "mine"
    assert of(x_trace_id="bad one", traceparent=TRACEPARENT) == \
        "4bf92f3577b34da6a3ce929d0e0e4736"
    for bad in ("00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # all-zero trace id
                "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", "garbage"):
        assert of(traceparent=bad) is None, bad


def test_serve_json_logs_carry_the_clients_trace_id(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    sid = new_id()
    with started("serve", log=log) as (_, url), httpx.Client(base_url=url, timeout=30) as http:
        r = http.post(f"/executor/{sid}", json=example_build(example_template()),
                      headers={"X-Trace-Id": "abc-123"})
        assert r.status_code == 404 and r.headers["x-trace-id"] == "abc-123"
        problem = r.json()
        assert problem["title"] == "Unknown session"
        assert problem["trace_id"] == problem["traceId"] == "abc-123"

        r = http.delete(f"/executor/{sid}", headers={"X-Trace-Id": "bad id; drop"})
        replaced = r.headers["x-trace-id"]
        assert HEX32.fullmatch(replaced), replaced  # a new one, never the invalid one

        r = http.post(f"/executor/{sid}/warm", json={},  # a 400 of the worker's own
                      headers={"traceparent": TRACEPARENT})
        assert r.status_code == 400
        assert r.headers["x-trace-id"] == r.json()["traceId"] == TRACEPARENT[3:35]

        metrics = http.get("/metrics").text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                 "process_open_fds"):
        assert re.search(rf"^{name} \d", metrics, re.M), name
    assert re.search(r'^boride_http_request_seconds_count\{method="POST",'
                     r'route="/executor/\{sessionId\}",status="404"\} 1\.0$', metrics, re.M)
    assert re.search(r'^boride_http_request_seconds_bucket\{le="0\.1",method="DELETE",'
                     r'route="/executor/\{sessionId\}",status="200"\} ', metrics, re.M)
    assert sid not in metrics  # route templates, never raw paths

    entries = json_lines(log)
    assert any(e["logger"] == "uvicorn.error" for e in entries)  # uvicorn's lines too
    mine = [e for e in entries if e.get("trace_id") == "abc-123"]
    assert any(e["logger"] == "boride.server" and "Unknown session" in e["message"]
               for e in mine), mine  # the problem's own line
    [access] = access_lines(entries, "abc-123")
    assert access["level"] == "info" and access["session"] == sid
    assert (access["method"], access["path"], access["status"]) == \
        ("POST", f"/executor/{sid}", 404)
    assert access["duration_ms"] >= 0
    assert [a["status"] for a in access_lines(entries, replaced)] == [200]
    assert not any("bad id" in json.dumps(e) for e in entries)
    assert [a["status"] for a in access_lines(entries, TRACEPARENT[3:35])] == [400]
    # one access line per request, boride's, none of uvicorn's own
    assert not any(e["logger"] == "uvicorn.access" for e in entries)


def test_the_clients_trace_id_holds_through_the_front(tmp_path: Path) -> None:
    worker_log, front_log = tmp_path / "worker.log", tmp_path / "front.log"
    sid = new_id()
    with started("serve", log=worker_log) as (_, worker), \
            started("front", "--worker", worker, "--interval", "0.2", log=front_log) as \
            (_, front), httpx.Client(base_url=front, timeout=30) as http:
        deadline = time.monotonic() + 30
        while not all(w["healthy"] for w in http.get("/workers").json()):
            assert time.monotonic() < deadline, "the worker never became healthy"
            time.sleep(0.05)
        # the worker refuses the body: its problem, relayed by the front
        r = http.post(f"/executor/{sid}/warm", json={}, headers={"X-Trace-Id": "client-1"})
        assert r.status_code == 400 and r.json()["title"] == "Failed to bind request"
        assert r.headers["x-trace-id"] == "client-1"
        assert r.json()["trace_id"] == r.json()["traceId"] == "client-1"
        # the front's own problem, with a traceparent
        r = http.delete(f"/executor/{sid}", headers={"traceparent": TRACEPARENT})
        assert r.headers["x-trace-id"] == TRACEPARENT[3:35]
        # no id given: the front's is the worker's too
        r = http.post(f"/executor/{sid}/warm", json={})
        given = r.headers["x-trace-id"]
        assert HEX32.fullmatch(given) and r.json()["traceId"] == given
        assert "boride_http_request_seconds" not in http.get("/metrics").text
        assert "process_resident_memory_bytes" in http.get("/metrics").text

    worker_entries, front_entries = json_lines(worker_log), json_lines(front_log)
    for entries in (worker_entries, front_entries):
        [access] = access_lines(entries, "client-1")
        assert (access["path"], access["status"], access["session"]) == \
            (f"/executor/{sid}/warm", 400, sid)
        assert [a["status"] for a in access_lines(entries, given)] == [400]
    placed = [e for e in front_entries if e.get("trace_id") == "client-1"
              and "placed on worker" in e["message"]]
    assert placed and placed[0]["logger"] == "boride.front"


def test_text_lines_name_the_trace_id_once(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    sid = new_id()
    with started("serve", log=log, fmt="text") as (_, url), \
            httpx.Client(base_url=url, timeout=30) as http:
        r = http.post(f"/executor/{sid}", json=example_build(example_template()),
                      headers={"X-Trace-Id": "once-123"})
        assert r.status_code == 404, r.text
    lines = [line for line in log.read_text().splitlines() if "once-123" in line]
    problem = [line for line in lines if "Unknown session" in line]
    assert problem and lines, log.read_text()
    assert all(line.count("once-123") == 1 for line in lines), lines
    assert all(f"trace_id=once-123 session={sid}" in line for line in lines), lines


def test_probes_log_at_debug_and_the_rest_at_info(tmp_path: Path) -> None:
    worker_log, front_log = tmp_path / "worker.log", tmp_path / "front.log"
    sid = new_id()
    with started("serve", "--log-level", "debug", log=worker_log) as (_, worker), \
            started("front", "--worker", worker, "--interval", "0.2", log=front_log), \
            httpx.Client(base_url=worker, timeout=30) as http:
        def checks() -> int:  # the front's checks of the worker answered so far
            return worker_log.read_text().count('"path": "/worker", "status": 200')

        deadline = time.monotonic() + 60
        while checks() < 3:
            assert time.monotonic() < deadline, worker_log.read_text()[-2000:]
            time.sleep(0.1)
        assert http.get("/").status_code == 200
        assert http.head("/worker").status_code == 405  # a probe that fails: worth seeing
        assert http.post(f"/executor/{sid}", json={}).status_code in (400, 404)
    entries = [e for e in json_lines(worker_log) if e["logger"] == "boride.access"]
    probes = [e for e in entries if e["path"] in ("/", "/worker") and e["status"] == 200]
    assert len(probes) >= 4 and all(e["level"] == "debug" for e in probes), probes
    others = [e for e in entries if e not in probes]
    assert {(e["method"], e["path"]) for e in others} == {
        ("HEAD", "/worker"), ("POST", f"/executor/{sid}")}, others
    assert all(e["level"] == "info" for e in others), others


def test_run_logs_json_lines(tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline([("first", "ok_processor", {"suffix": "[1]"})])
    proc = run_cli("run", pipeline, "--out", tmp_path / "out", "--json", "--log-level",
                   "debug", "--log-format", "json", tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["components"]  # stdout: the build's JSON only
    entries = [json.loads(line) for line in proc.stderr.splitlines()]  # stderr: logs only
    assert entries and all({"time", "level", "logger", "message"} <= e.keys()
                           for e in entries)
    calls = [e for e in entries if e["logger"] == "httpx" and "api/process" in e["message"]]
    assert calls and all(e.get("component") == "first" for e in calls), calls  # its call
    # from the environment, and quiet by default: no INFO lines unless asked for
    proc = run_cli("run", pipeline, "--out", tmp_path / "out2", "--json",
                   env={"BORIDE_LOG_LEVEL": "INFO", "BORIDE_LOG_FORMAT": "json"},
                   tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    assert all(json.loads(line) for line in proc.stderr.splitlines())
    assert "DEBUG" not in proc.stderr and '"debug"' not in proc.stderr


def test_run_logs_go_above_the_live_table(tmp_path: Path, make_pipeline: PipelineFactory
                                          ) -> None:
    """On a terminal, ``boride run`` draws a live table on stderr: each log line comes out
    whole on a line of its own above it, never written into the table's last line."""
    pipeline = make_pipeline([("first", "ok_processor", {"suffix": "[1]"})])
    master, slave = pty.openpty()
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(
            _command(["run", pipeline, "--out", tmp_path / "out", "--log-level", "debug",
                      "--log-format", "json"], None),
            env=_environment({"TERM": "xterm", "COLUMNS": "120"}, tmp_path / "work", True),
            stdin=subprocess.DEVNULL, stdout=devnull, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal's other end closed: the process is gone
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait() == 0, out.decode(errors="replace")[-2000:]
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode())
    lines = re.split(r"\r\n|\r|\n", screen)
    assert any(line.startswith("first ") and "processor" in line for line in lines)  # table
    logged = [line for line in lines if '{"time"' in line]
    assert len(logged) > 3
    for line in logged:
        assert line.startswith('{"time"'), line  # not glued to the table's last line
        json.loads(line)


@pytest.mark.parametrize(("name", "value"), [("BORIDE_LOG_FORMAT", "xml"),
                                             ("BORIDE_LOG_LEVEL", "loud")])
def test_a_bad_log_setting_is_refused_in_one_line(name: str, value: str) -> None:
    for command in ("run", "serve", "front"):
        proc = run_cli(command, *(["pipeline.yaml"] if command == "run" else []),
                       env={name: value})
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"boride: {name}: ") and repr(value) in proc.stderr
