"""What components answer is checked on Docker too (issue 21, items 4 and 6), with a real
container of ``tests/components/answers.py`` (an image this module builds and removes): a
container killed by its memory limit says so (the engine's ``OOMKilled``), a resolver's answer
for another path is refused by the merge in the session's helper, an answer over the bound
fails the call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from boride.model import load
from boride.pipeline import BuildOptions, BuildResult, build
from boride.runtime.base import TemplateSource, Workspace
from boride.runtime.docker import DockerRuntime
from tests.docker_helpers import build_test_image, remove_test_images, session_leftovers
from tests.helpers import COMPONENTS, write_pipeline

pytestmark = pytest.mark.docker

IMAGE = "local/boride-test-answers-checks:1"  # this module's own, removed after it


class RecordingRuntime(DockerRuntime):
    """The Docker runtime, remembering the sessions it opened (to look for leftovers)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sessions: list[str] = []

    async def open_workspace(self, session_id: str, template: TemplateSource,
                             root: Path | None, **kwargs: Any) -> Workspace:
        self.sessions.append(session_id)
        return await super().open_workspace(session_id, template, root, **kwargs)


@pytest.fixture(scope="module")
def answers_image() -> Iterator[str]:
    build_test_image(IMAGE, "FROM boride/python-base:3.11\nCOPY answers.py /app/answers.py\n"
                            "USER 65534:65534\nENTRYPOINT [\"python3\", \"/app/answers.py\"]\n",
                     {"answers.py": (COMPONENTS / "answers.py").read_bytes()})
    try:
        yield IMAGE
    finally:
        remove_test_images(IMAGE)


@pytest.fixture
async def runtime() -> AsyncIterator[RecordingRuntime]:
    rt = RecordingRuntime(memory="64m")
    try:
        yield rt
    finally:
        await rt.aclose()
        for session in rt.sessions:
            assert session_leftovers(session) == [], f"session {session} left things behind"


async def run_build(pipeline: Path, runtime: RecordingRuntime, tmp_path: Path) -> BuildResult:
    return await build(load(pipeline), runtime, BuildOptions(work_root=tmp_path / "work"))


def errors_of(result: BuildResult) -> dict[str, str]:
    return {c.name: c.error or "" for c in result.components}


async def test_a_container_killed_by_its_memory_limit_says_so(
        tmp_path: Path, template: Path, answers_image: str, runtime: RecordingRuntime) -> None:
    pipeline = write_pipeline(tmp_path / "p.yaml", template, [
        {"name": "greedy", "image": answers_image, "config": {"allocate_mb": 256}},
        ("good", "ok_processor", {})], images=True)
    res = await run_build(pipeline, runtime, tmp_path)
    assert res.status == "failed"
    assert errors_of(res)["greedy"].startswith(
        "died during its call: killed by its memory limit (64m)"), errors_of(res)["greedy"]
    assert errors_of(res)["good"] == ""


async def test_a_resolver_answering_for_another_path_is_refused_by_the_helper(
        tmp_path: Path, template: Path, answers_image: str, runtime: RecordingRuntime) -> None:
    pipeline = write_pipeline(
        tmp_path / "p.yaml", template,
        [("first", "ok_processor", {"suffix": "[1]"}), ("second", "ok_processor",
                                                        {"suffix": "[2]"})],
        resolvers=[{"name": "pick", "image": answers_image, "files": ["src/a.txt"],
                    "config": {"path": "README.md"}}], images=True)
    res = await run_build(pipeline, runtime, tmp_path)
    expected = "answered for another path: expected 'src/a.txt', got 'README.md'"
    assert res.errors == [f"merge: conflict 'src/a.txt', resolver 'pick': {expected}"]
    assert errors_of(res)["pick"] == f"on 'src/a.txt': {expected}"


async def test_an_answer_over_the_bound_fails_the_call(
        tmp_path: Path, template: Path, answers_image: str, runtime: RecordingRuntime) -> None:
    pipeline = write_pipeline(tmp_path / "p.yaml", template, [
        {"name": "huge", "image": answers_image, "config": {"huge_mb": 50}}], images=True)
    res = await run_build(pipeline, runtime, tmp_path)
    assert res.status == "failed"
    assert errors_of(res)["huge"].startswith("POST /api/process answered more than 1 MiB")
