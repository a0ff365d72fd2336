"""Hostile components on the Docker runtime, performed for real.

A plugin leaves a thread in its container that keeps swapping a folder of the tree with a
symlink to a host folder. The next plugin's hand-over (boride, as root, giving the tree to the
container user) and the output must never reach the host folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from boride.model import load
from boride.pipeline import BuildOptions, build
from boride.runtime.docker import DockerRuntime
from tests.docker_helpers import session_leftovers
from tests.helpers import write_pipeline

pytestmark = [pytest.mark.docker,
              pytest.mark.skipif(os.geteuid() != 0, reason="the hand-over chowns only as root")]


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.mkdir()
    for n in range(40):
        (v / f"host-file-{n}").write_text("belongs to root\n")
    return v


@pytest.mark.parametrize("output", ["out", "archive"])
async def test_plugin_swapping_folders_cannot_reach_host_files(
        tmp_path: Path, template: Path, victim: Path, output: str) -> None:
    swap: dict[str, Any] = {"victim": str(victim), "files": 40, "seconds": 60}
    pipeline = write_pipeline(
        tmp_path / "pipeline.yaml", template, [("p", "ok_processor", {})],
        plugins=[("swapper", "swap_plugin", swap),
                 *[(f"next{n}", "noop_plugin", {}) for n in range(6)]], images=True)
    runtime = DockerRuntime()
    dest = tmp_path / ("result" if output == "out" else "result.tar.gz")
    try:
        result = await build(load(pipeline), runtime, BuildOptions(
            work_root=tmp_path / "work", **{output: dest}))
    finally:
        await runtime.aclose()
    owners = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in [victim, *victim.iterdir()]}
    assert set(owners.values()) == {(0, 0)}, owners
    assert all(p.read_text() == "belongs to root\n" for p in victim.iterdir())
    # The output refuses the symlink to the host folder by name; nothing of it is written.
    assert not result.ok
    assert any("'lnk'" in e or "'sub'" in e for e in result.errors), result.errors
    assert not dest.exists()
    for session in [result.session]:
        assert session_leftovers(session) == []
