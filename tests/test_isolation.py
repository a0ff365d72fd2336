"""Each component's output is its own (issue 21, item 6), attacked for real on both runtimes.

Two processors of one build (``tests/components/tamper.py``): a victim that writes ``B.txt``
and waits, and an attacker that is told the names in the area's top (which it cannot list
itself any more) and tries the victim's folder while the victim is at work and again once it
has answered and stopped (the attack of the issue: appending to the victim's ``B.txt``). A
plugin then tries the processors' folders. The test drives the steps through mailboxes: a
folder of the pipeline's (bound read-only into the local sandboxes) or each container's
``/tmp`` (``docker exec``), and reads the components' signals from their folders (as root on
the host) or their ``/tmp``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from boride.model import load
from boride.pipeline import BuildOptions, build
from boride.runtime.base import Runtime
from boride.runtime.local import LocalRuntime
from tests.helpers import COMPONENTS, write_pipeline

as_root = pytest.mark.skipif(os.geteuid() != 0,
                             reason="as an ordinary user every local component is that user")

REFUSED = {"EACCES", "EPERM"}
WAIT = 60.0


def _until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


class Mailboxes:
    """How the test talks with the tamper components of one runtime."""

    def tell(self, role: str, word: str, text: str = "go") -> None:
        raise NotImplementedError

    def heard(self, role: str, word: str) -> bool:
        raise NotImplementedError

    def area_names(self, role: str) -> list[str]:
        """The names in the area's top (seen from ``role``'s side, by root)."""
        raise NotImplementedError

    def running(self, role: str) -> bool:
        raise NotImplementedError


class LocalMailboxes(Mailboxes):
    def __init__(self, inbox: Path, work: Path, tag: str) -> None:
        self.inbox, self.work, self.tag = inbox, work, tag

    def tell(self, role: str, word: str, text: str = "go") -> None:
        tmp = self.inbox / f".{word}.tmp"
        tmp.write_text(text)
        tmp.rename(self.inbox / word)

    def heard(self, role: str, word: str) -> bool:
        return any(self.work.glob(f"*/area/*/signal-{word}"))

    def area_names(self, role: str) -> list[str]:
        return sorted(p.name for p in self.work.glob("*/area/*"))

    def running(self, role: str) -> bool:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if role.encode() in args and self.tag.encode() in args:
                return True
        return False


class DockerMailboxes(Mailboxes):
    def __init__(self, names: dict[str, str]) -> None:
        from boride.runtime.docker import connect

        self.names = names  # role -> step name (its containers' component label)
        self.client = connect(timeout=60)

    def _container(self, role: str) -> str | None:
        from boride.runtime.docker import LABEL_COMPONENT

        found = self.client.api.containers(
            filters={"label": f"{LABEL_COMPONENT}={self.names[role]}"})
        return str(found[0]["Id"]) if found else None

    def _exec(self, role: str, *argv: str) -> tuple[int, str]:
        container = self._container(role)
        if container is None:
            return -1, ""
        exec_id = self.client.api.exec_create(container, list(argv), user="0:0")
        out = self.client.api.exec_start(exec_id["Id"])
        code = self.client.api.exec_inspect(exec_id["Id"])["ExitCode"]
        return int(code), out.decode() if isinstance(out, bytes) else str(out)

    def tell(self, role: str, word: str, text: str = "go") -> None:
        code, out = self._exec(role, "sh", "-c", 'mkdir -p /tmp/inbox && printf %s "$1" > '
                               '/tmp/inbox/.w && mv /tmp/inbox/.w "/tmp/inbox/$0"', word, text)
        assert code == 0, out

    def heard(self, role: str, word: str) -> bool:
        return self._exec(role, "test", "-e", f"/tmp/outbox/signal-{word}")[0] == 0

    def area_names(self, role: str) -> list[str]:
        code, out = self._exec(role, "ls", "-1", "/workspace/area")
        assert code == 0, out
        return sorted(out.split())

    def running(self, role: str) -> bool:
        return self._container(role) is not None


def drive(boxes: Mailboxes, errors: list[BaseException]) -> None:
    """The attack, step by step (in a thread, while the build runs)."""
    try:
        _until("the victim wrote B.txt", lambda: boxes.heard("victim", "victim-ready"))
        _until("the attacker is at work", lambda: boxes.heard("attacker", "attacker-ready"))
        boxes.tell("attacker", "dirs", " ".join(boxes.area_names("attacker")))
        _until("the attacker tried before", lambda: boxes.heard("attacker", "attacker-before"))
        boxes.tell("victim", "victim-answer")
        _until("the victim answered and stopped", lambda: not boxes.running("victim"))
        boxes.tell("attacker", "after")
        _until("the plugin is at work", lambda: boxes.heard("plugin", "plugin-ready"))
        boxes.tell("plugin", "plugin-dirs", " ".join(boxes.area_names("plugin")))
    except BaseException as exc:  # (the build then waits until its components give up)
        errors.append(exc)


def pipeline(tmp_path: Path, template: Path, tag: str, config: dict[str, Any], *,
             images: bool) -> Path:
    def step(role: str) -> dict[str, Any]:
        server = "plugin" if role == "plugin" else "processor"
        what: dict[str, Any]
        if images:  # (one image per role: steps of one image would share one instance)
            what = {"image": f"{TAMPER_IMAGE}-{role}"}
        else:
            what = {"command": [sys.executable, str(COMPONENTS / "tamper.py"), server, role,
                                tag]}
        return {"name": f"{role}{tag}", **what, "config": {**config, "role": role}}

    return write_pipeline(tmp_path / "pipeline.yaml", template,
                          [step("victim"), step("attacker")], plugins=[step("plugin")],
                          parallelism=2)


async def run_attack(runtime: Runtime, pipe: Path, boxes: Mailboxes, out: Path,
                     work: Path) -> dict[str, Any]:
    errors: list[BaseException] = []
    driver = threading.Thread(target=drive, args=(boxes, errors), daemon=True)
    driver.start()
    try:
        result = await build(load(pipe), runtime, BuildOptions(work_root=work, out=out))
    finally:
        await runtime.aclose()
    driver.join(timeout=WAIT)
    assert not errors, f"{errors[0]}; the build: {result.errors}"
    assert result.ok, result.errors
    return {"B": (next(out.rglob("B.txt"))).read_text(),
            "files": sorted(p.name for p in out.rglob("*") if p.is_file()),
            "attack": json.loads(next(out.rglob("attack-report.json")).read_text()),
            "plugin": json.loads(next(out.rglob("plugin-report.json")).read_text())}


def check_isolated(found: dict[str, Any]) -> None:
    attack, plugin = found["attack"], found["plugin"]
    # The attack of the issue: the victim's output is as it wrote it.
    assert found["B"] == "B\n", found["B"]
    assert "A-was-here.txt" not in found["files"]
    # The area's top cannot be listed; the victim's folder can be neither listed, read nor
    # changed, while the victim is at work or after it answered.
    assert attack["area"] in REFUSED, attack
    tried = [*attack["before"].values(), *attack["after"].values()]
    assert tried and all(outcome in REFUSED for t in tried for outcome in t.values()), attack
    # The plugin sees only its tree: not the area, no processor's folder.
    assert plugin["area"] in REFUSED, plugin
    assert plugin["seen"] and all(o in REFUSED for s in plugin["seen"].values()
                                  for o in s.values()), plugin
    assert attack["uid"] != plugin["uid"] and 0 not in (attack["uid"], plugin["uid"])


@pytest.mark.sandbox
@pytest.mark.usefixtures("both_starts")
@as_root
async def test_processor_cannot_reach_a_siblings_output_locally(tmp_path: Path,
                                                               template: Path) -> None:
    tag = uuid.uuid4().hex[:10]
    inbox = tmp_path / "mailbox"
    inbox.mkdir()
    pipe = pipeline(tmp_path, template, tag, {"inbox": str(inbox), "outbox": None},
                    images=False)
    work = tmp_path / "work"
    work.mkdir()
    found = await run_attack(LocalRuntime(), pipe, LocalMailboxes(inbox, work, tag),
                             tmp_path / "out", work)
    check_isolated(found)


TAMPER_IMAGE = "local/boride-test-tamper:isolation"  # + "-victim", "-attacker", "-plugin"
ROLES = ("victim", "attacker", "plugin")
SDK_IMAGE = "boride/cyanprint-python:2.2.0"  # (docker/build_images.py's: the SDK installed)


@pytest.fixture
def tamper_image() -> Any:
    from tests.docker_helpers import build_test_image, remove_test_images

    source = (COMPONENTS / "tamper.py").read_text()
    for role in ROLES:
        server = "plugin" if role == "plugin" else "processor"
        build_test_image(f"{TAMPER_IMAGE}-{role}",
                         f"FROM {SDK_IMAGE}\nCOPY tamper.py /app/tamper.py\n"
                         f'CMD ["python3", "/app/tamper.py", "{server}", "{role}"]\n',
                         {"tamper.py": source})
    yield
    remove_test_images(*(f"{TAMPER_IMAGE}-{r}" for r in ROLES))


@pytest.mark.docker
async def test_processor_cannot_reach_a_siblings_output_on_docker(
        tmp_path: Path, template: Path, tamper_image: None) -> None:
    from boride.runtime.docker import DockerRuntime

    tag = uuid.uuid4().hex[:10]
    pipe = pipeline(tmp_path, template, tag, {"inbox": "/tmp/inbox", "outbox": "/tmp/outbox"},
                    images=True)
    boxes = DockerMailboxes({r: f"{r}{tag}" for r in ROLES})
    found = await run_attack(DockerRuntime(), pipe, boxes, tmp_path / "out", tmp_path / "work")
    check_isolated(found)


def test_each_instance_of_a_session_gets_a_user_of_its_own() -> None:
    from boride.runtime.base import RuntimeFailure, UserPool

    pool = UserPool(range(1000, 1003))
    first, second = pool.take(), pool.take()
    assert first == (1000, 1000) and second == (1001, 1001)
    pool.give_back(first)
    assert pool.take() == (1002, 1002)  # a uid given back comes last (its leftovers go first)
    assert pool.take() == first
    with pytest.raises(RuntimeFailure, match="more than 3 components"):
        pool.take()
    pool.give_back(second)
    pool.hold(1001)  # (an adopted instance's)
    with pytest.raises(RuntimeFailure):
        pool.take()
