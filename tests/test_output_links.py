"""One rule for links in every output (--out and --archive), through `boride run`:
a link leading outside the result is refused, naming its path; a link inside is kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PipelineFactory

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("no_leftovers")]

OUTSIDE = {"evil": "/etc/passwd", "etc": "/etc", "up": "../../../../../../etc/hostname"}
INSIDE = {"docs/readme-link": "../README.md", "src/same": "a.txt", "alias": "src"}


def run(tmp_path: Path, pipeline: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "boride", "run", str(pipeline), "--json",
                           *args], env={**os.environ, "TMPDIR": str(work)}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240, check=False)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def pipeline_with_links(make_pipeline: PipelineFactory, links: dict[str, str]) -> Path:
    return make_pipeline([("p", "ok_processor", {})],
                         plugins=[("links", "link_plugin", {"links": links})])


@pytest.mark.parametrize("output", ["--out", "--archive"])
def test_links_leading_outside_are_refused(tmp_path: Path, make_pipeline: PipelineFactory,
                                           output: str) -> None:
    dest = tmp_path / ("result" if output == "--out" else "result.tar.gz")
    code, report, _ = run(tmp_path, pipeline_with_links(make_pipeline, {**OUTSIDE, **INSIDE}),
                          output, str(dest))
    assert code == 1, report
    text = "\n".join(report["errors"])
    for name in OUTSIDE:
        assert repr(name) in text, text
    for name in INSIDE:
        assert repr(name) not in text, text
    assert "unexpected error" not in text
    assert not dest.exists()
    assert not any(p.name.startswith(".result") for p in tmp_path.iterdir())


def test_links_inside_are_kept_in_both_outputs(tmp_path: Path,
                                               make_pipeline: PipelineFactory) -> None:
    code, report, _ = run(tmp_path, pipeline_with_links(make_pipeline, INSIDE),
                          "--out", str(tmp_path / "result"),
                          "--archive", str(tmp_path / "result.tar.gz"))
    assert code == 0, report
    out = tmp_path / "result"
    for rel, target in INSIDE.items():
        assert (out / rel).is_symlink()
        assert os.readlink(out / rel) == target
        assert (out / rel).resolve().is_relative_to(out.resolve())
    with tarfile.open(tmp_path / "result.tar.gz") as tar:
        links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
    assert links == INSIDE
