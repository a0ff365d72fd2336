"""What components answer is checked (issue 21, items 4 and 6), with real components
(``tests/components/answers.py``) on the local runtime: a resolver answering for another path
is refused, an answer over the bound is refused without being read whole, a component that
ran out of memory says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PipelineFactory
from tests.helpers import CLI, component, run_json

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("no_leftovers")]

ANSWERS = "answers"


def by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in data["components"]}


def test_a_resolver_answering_for_another_path_fails_the_build_naming_both(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline(
        [("first", "ok_processor", {"suffix": "[1]"}), ("second", "ok_processor",
                                                        {"suffix": "[2]"})],
        resolvers=[("pick", [*component(ANSWERS), "5553"], ["src/a.txt"],
                    {"path": "README.md"})])
    proc, data = run_json(pipeline, "--out", tmp_path / "out", tmpdir=tmp_path / "work")
    assert proc.returncode == 1, proc.stderr
    expected = "answered for another path: expected 'src/a.txt', got 'README.md'"
    assert data["errors"] == [f"merge: conflict 'src/a.txt', resolver 'pick': {expected}"]
    pick = by_name(data)["pick"]
    assert pick["status"] == "failed" and pick["error"] == f"on 'src/a.txt': {expected}"
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_resolver_answering_for_its_own_path_succeeds(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline(
        [("first", "ok_processor", {"suffix": "[1]"}), ("second", "ok_processor",
                                                        {"suffix": "[2]"})],
        resolvers=[("pick", [*component(ANSWERS), "5553"], ["src/a.txt"],
                    {"path": "./src//a.txt"})])
    proc, _ = run_json(pipeline, "--out", tmp_path / "out", tmpdir=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "src" / "a.txt").read_text() == "alpha\n[1]+alpha\n[2]"
    assert (tmp_path / "out" / "README.md").read_text() == "# readme\n[2]"
