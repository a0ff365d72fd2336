"""No build slot held forever (issue 21): ``boride serve`` bounds every build (600 s by
default, the CyanPrint CLI's own wait), and a build awaiting a component that never answers
holds no build slot, so other sessions' builds (and start-ups) go on at once."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from boride import aio
from boride.config import Limits, Timeouts
from boride.pipeline import Admission
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


def _dev(tmp_path: Path) -> Path:
    dev = tmp_path / "dev"
    (dev / "t" / "src").mkdir(parents=True)
    (dev / "t" / "src" / "a.txt").write_text("alpha\n")
    return dev


def _try(http: httpx.Client, template: dict[str, Any], path: str) -> str:
    sid = new_id()
    r = http.post("/executor/try", json={
        "sessionId": sid, "localTemplateId": template["principal"]["id"], "source": "path",
        "path": path, "template": template})
    assert r.status_code == 200, r.text
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
    hang = entry("me/hang", "hang")
    ok = entry("me/ok", "ok_processor")
    registry = write_registry(tmp_path / "r.yaml", processors=[hang, ok])
    hung_template = template_body("local-hang", [hang])
    ok_template = template_body("local-ok", [ok])
    with serving("--registry", registry, "--dev-root", _dev(tmp_path), "--work-root",
                 tmp_path / "work", "--max-builds", "4") as (_, url), \
            httpx.Client(base_url=url, timeout=120) as http:
        hung = [_try(http, hung_template, "t") for _ in range(5)]
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

        sid = _try(http, ok_template, "t")  # (its build starts its processor, in a slot)
        r = http.post(f"/executor/{sid}", json=build_body(ok_template, [("me/ok", None)]))
        assert r.status_code == 200, r.text
        assert archive_files(r.content)["src/a.txt"] == b"alpha\n"
        assert answers == {} and all(t.is_alive() for t in threads)  # the 5 still pending
        # the metrics say where they are: in flight, awaiting their processor, no slot held
        assert metric(http, "boride_builds_in_flight") == 5
        assert metric(http, "boride_builds_awaiting_components") == 5
        assert metric(http, "boride_builds_waiting") == 0
        assert metric(http, "boride_build_slots_held") == 0

        for s in hung:  # deleting a session cancels its build
            assert http.delete(f"/executor/{s}").json() == {"status": "OK"}
        for t in threads:
            t.join(60)
        assert [problem(answers[s], 409)["title"] for s in hung] == ["Build cancelled"] * 5
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}


@pytest.mark.sandbox
def test_a_hung_build_ends_at_the_build_timeout_naming_its_processor(tmp_path: Path) -> None:
    hang = entry("me/hang", "hang")
    registry = write_registry(tmp_path / "r.yaml", processors=[hang])
    template = template_body("local-hang", [hang])
    with serving("--registry", registry, "--dev-root", _dev(tmp_path), "--work-root",
                 tmp_path / "work", "--build-timeout", "3") as (_, url), \
            httpx.Client(base_url=url, timeout=120) as http:
        sid = _try(http, template, "t")
        r = http.post(f"/executor/{sid}", json=build_body(template, [("me/hang", None)]))
        data = problem(r, 400)
        assert data["title"] == "Build failed"
        assert data["data"] == ["processor 'me/hang:1': its call had not answered when the "
                                "build's 3s timeout ran out"], data
        assert metric(http, "boride_builds_in_flight") == 0
        assert metric(http, "boride_builds_awaiting_components") == 0
        assert metric(http, "boride_build_slots_held") == 0
        assert http.delete(f"/executor/{sid}").json() == {"status": "OK"}


@pytest.mark.sandbox
def test_a_start_up_holds_a_slot_until_the_ready_timeout(tmp_path: Path) -> None:
    """Starting components is boride's work: a build's component that never becomes ready
    holds the build's slot, bounded by the ready timeout; then the build waiting for that slot
    runs."""
    never = entry("me/never", "never_ready")
    ok = entry("me/ok", "ok_processor")
    registry = write_registry(tmp_path / "r.yaml", processors=[never, ok])
    dev = _dev(tmp_path)
    config = ServerConfig(registry=(str(registry),), dev_root=dev, work_root=tmp_path / "work",
                          limits=Limits(max_builds=1), timeouts=Timeouts(ready=4, build=600))
    ok_template = template_body("local-ok", [ok])
    never_template = template_body("local-never", [never])
    with running_server(config) as server, server.client() as http:
        stuck = _try(http, never_template, str(dev / "t"))
        sid = _try(http, ok_template, str(dev / "t"))
        answers: dict[str, httpx.Response] = {}

        def build(sid: str, template: dict[str, Any], name: str) -> None:
            answers[name] = http.post(f"/executor/{sid}",
                                      json=build_body(template, [(name, None)]))

        starting = threading.Thread(target=build, args=(stuck, never_template, "me/never"))
        starting.start()
        wait_for(lambda: metric(http, "boride_build_slots_held") == 1)
        building = threading.Thread(target=build, args=(sid, ok_template, "me/ok"))
        building.start()
        wait_for(lambda: metric(http, "boride_builds_waiting") == 1)  # for the start-up's slot
        assert answers == {}
        building.join(60)
        starting.join(60)
        assert "not ready after 4s" in " ".join(problem(answers["me/never"], 400)["data"])
        assert answers["me/ok"].status_code == 200, answers["me/ok"].text
        assert metric(http, "boride_build_slots_held") == 0
        for s in (stuck, sid):
            http.delete(f"/executor/{s}")


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_build_holds_no_slot_while_one_of_its_calls_is_pending() -> None:
    slots = asyncio.Semaphore(1)
    build = Admission(slots)
    answer = [asyncio.Event(), asyncio.Event(), asyncio.Event()]

    async def call(i: int) -> None:
        async with build.awaiting():
            await answer[i].wait()

    async with build:
        assert build.held and slots.locked()
        calls = [aio.spawn(call(0)), aio.spawn(call(1))]
        await _settle()
        assert not build.held and not slots.locked()  # free for another build
        answer[0].set()
        await _settle()
        assert not build.held  # one call is still pending
        async with Admission(slots):  # another build holds the slot: this one waits for it
            answer[1].set()
            await _settle()
            assert not calls[1].done() and not build.held
            # a call beginning meanwhile: once the slot is got, it is given up again
            third = aio.spawn(call(2))
            await _settle()
        await _settle()
        assert not build.held and not slots.locked() and calls[1].done()
        answer[2].set()
        await third
        assert build.held and slots.locked()  # its last call answered: at work again
    assert not slots.locked()
