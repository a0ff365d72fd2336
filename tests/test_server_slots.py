"""No build slot held forever (issue 21): ``boride serve`` bounds every build (600 s by
default, the CyanPrint CLI's own wait), and a build awaiting a component that never answers
holds no build slot, so other sessions' builds (and start-ups) go on at once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from boride.config import Limits, Timeouts
from boride.server import ServerConfig
from tests.helpers import archive_files, run_cli
from tests.test_server_cli import serving
from tests.test_server_support import (
    build_body,
    entry,
    metric,
    new_id,
    problem,
    running_server,
    template_body,
    wait_for,
    write_registry,
)

pytestmark = pytest.mark.usefixtures("no_leftovers")


def _registry(tmp_path: Path, *processors: dict[str, Any]
              ) -> tuple[Path, list[dict[str, Any]]]:
    """A registry of ``processors`` and of a template per processor (a folder of one file,
    the same for all), and those templates as a client sends them."""
    folder = tmp_path / "template"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "a.txt").write_text("alpha\n")
    tpls = [{"ref": f"me/t{i}", "version": 1, "id": new_id(), "path": str(folder)}
            for i in range(len(processors))]
    registry = write_registry(tmp_path / "r.yaml", processors=list(processors), templates=tpls)
    return registry, [template_body(t["id"], [p]) for t, p in zip(tpls, processors, strict=True)]


def _session(http: httpx.Client, template: dict[str, Any]) -> str:
    """A session whose processors run (``POST /executor``, as the CyanPrint CLI makes it)."""
    sid = new_id()
    r = http.post("/executor", json={"session_id": sid, "template": template,
                                     "merger": {"merger_id": new_id()}})
    assert r.status_code == 200 and r.json() == {"status": "OK"}, r.text
    return sid


def test_serve_bounds_a_build_by_600s_by_default() -> None:
    assert ServerConfig().timeouts.build == 600
    proc = run_cli("serve", "--help", in_process=True)
    assert proc.returncode == 0
    help_text = " ".join(proc.stdout.split())
    assert "--build-timeout FLOAT RANGE" in help_text
    assert "[default: 600.0; x>0]" in help_text.split("--build-timeout", 1)[1].split("--", 1)[0]


@pytest.mark.sandbox
def test_five_hung_builds_do_not_keep_a_sixth_sessions_build_waiting(tmp_path: Path) -> None:
    """5 sessions' builds whose processor accepts the call and never answers, more than
    --max-builds (4): a 6th session still starts its processor and builds at once, while
    the 5 are pending."""
    registry, (hung_template, ok_template) = _registry(
        tmp_path, entry("me/hang", "hang"), entry("me/ok", "ok_processor"))
    with serving("--registry", registry, "--work-root", tmp_path / "work",
                 "--max-builds", "4") as (_, url), \
            httpx.Client(base_url=url, timeout=120) as http:
        hung = [_session(http, hung_template) for _ in range(5)]
        answers: dict[str, httpx.Response] = {}

        def build(sid: str) -> None:
            with httpx.Client(base_url=url, timeout=None) as own:
                answers[sid] = own.post(f"/executor/{sid}",
                                        json=build_body(hung_template, [("me/hang", None)]))

        threads = [threading.Thread(target=build, args=(sid,)) for sid in hung]
        for t in threads:
            t.start()
        # all 5 builds asked for (on today's main 4 hold the slots and 1 waits for one)
        wait_for(lambda: metric(http, "boride_builds_in_flight")
                 + metric(http, "boride_builds_waiting") == 5)

        sid = _session(http, ok_template)  # its processor's start-up is not kept waiting
        r = http.post(f"/executor/{sid}", json=build_body(ok_template, [("me/ok", None)]))
        assert r.status_code == 200, r.text
        assert archive_files(r.content)["src/a.txt"] == b"alpha\n"
        assert answers == {} and all(t.is_alive() for t in threads)  # the 5 still pending
        # the metrics say where they are: in flight, awaiting their processor, no slot held
        wait_for(lambda: [metric(http, f"boride_{m}") for m in (
            "builds_in_flight", "builds_awaiting_components", "builds_waiting",
            "build_slots_held")] == [5, 5, 0, 0])
        assert answers == {}

        for s in hung:  # deleting a session cancels its build
            assert http.delete(f"/executor/{s}").json() == {"status": "OK"}
        for t in threads:
            t.join(60)
        assert [problem(answers[s], 409)["title"] for s in hung] == ["Build cancelled"] * 5
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}


@pytest.mark.sandbox
def test_a_hung_build_ends_at_the_build_timeout_naming_its_processor(tmp_path: Path) -> None:
    registry, (template,) = _registry(tmp_path, entry("me/hang", "hang"))
    with serving("--registry", registry, "--work-root", tmp_path / "work",
                 "--build-timeout", "3") as (_, url), \
            httpx.Client(base_url=url, timeout=120) as http:
        sid = _session(http, template)  # (started ahead: the 3 s are the call's)
        r = http.post(f"/executor/{sid}", json=build_body(template, [("me/hang", None)]))
        data = problem(r, 400)
        assert data["title"] == "Build failed"
        assert data["data"] == ["processor 'me/hang:1': its call had not answered when the "
                                "build's 3s timeout ran out"], data
        assert [metric(http, f"boride_{m}") for m in (
            "builds_in_flight", "builds_awaiting_components", "build_slots_held")] == [0, 0, 0]
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}


@pytest.mark.sandbox
def test_a_start_up_holds_a_slot_until_the_ready_timeout(tmp_path: Path) -> None:
    """Starting components is boride's work: a component that never becomes ready holds its
    start-up's slot, for at most the ready timeout; then the build waiting for it runs."""
    registry, (never_template, ok_template) = _registry(
        tmp_path, entry("me/never", "never_ready"), entry("me/ok", "ok_processor"))
    config = ServerConfig(registry=(str(registry),), work_root=tmp_path / "work",
                          limits=Limits(max_builds=1), timeouts=Timeouts(ready=4, build=600))
    with running_server(config) as server, server.client() as http:
        sid = _session(http, ok_template)
        started: list[httpx.Response] = []
        starting = threading.Thread(target=lambda: started.append(http.post(
            "/executor", json={"session_id": new_id(), "template": never_template,
                               "merger": {"merger_id": new_id()}})))
        starting.start()
        wait_for(lambda: metric(http, "boride_build_slots_held") == 1)
        built: list[httpx.Response] = []
        building = threading.Thread(target=lambda: built.append(http.post(
            f"/executor/{sid}", json=build_body(ok_template, [("me/ok", None)]))))
        building.start()
        wait_for(lambda: metric(http, "boride_builds_waiting") == 1)  # for the start-up's slot
        building.join(60)
        starting.join(60)
        assert "not ready after 4s" in started[0].text, started[0].text
        assert built[0].status_code == 200, built[0].text
        assert metric(http, "boride_build_slots_held") == 0
        http.delete(f"/executor/{sid}")
