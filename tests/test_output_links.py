"""One rule for links in every output (--out and --archive), through `boride run`:
a link leading outside the result is refused, naming its path; a link inside is kept."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from tests.conftest import PipelineFactory
from tests.helpers import run_json

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("no_leftovers")]

OUTSIDE = {"evil": "/etc/passwd", "etc": "/etc", "up": "../../../../../../etc/hostname"}
INSIDE = {"docs/readme-link": "../README.md", "src/same": "a.txt", "alias": "src"}


def pipeline_with_links(make_pipeline: PipelineFactory, links: dict[str, str]) -> Path:
    return make_pipeline([("p", "ok_processor", {})],
                         plugins=[("links", "link_plugin", {"links": links})])


@pytest.mark.parametrize("output", ["--out", "--archive"])
def test_links_leading_outside_are_refused(tmp_path: Path, make_pipeline: PipelineFactory,
                                           output: str) -> None:
    dest = tmp_path / ("result" if output == "--out" else "result.tar.gz")
    proc, report = run_json(pipeline_with_links(make_pipeline, {**OUTSIDE, **INSIDE}), output,
                            dest, tmpdir=tmp_path / "work", cwd=tmp_path)
    assert proc.returncode == 1, report
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
    proc, report = run_json(pipeline_with_links(make_pipeline, INSIDE),
                            "--out", tmp_path / "result", "--archive", tmp_path / "result.tar.gz",
                            tmpdir=tmp_path / "work", cwd=tmp_path)
    assert proc.returncode == 0, report
    out = tmp_path / "result"
    for rel, target in INSIDE.items():
        assert (out / rel).is_symlink()
        assert os.readlink(out / rel) == target
        assert (out / rel).resolve().is_relative_to(out.resolve())
    with tarfile.open(tmp_path / "result.tar.gz") as tar:
        links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
    assert links == INSIDE
