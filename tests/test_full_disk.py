"""A full disk, for real (a small tmpfs): every message is bounded and says where it happened."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PipelineFactory

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("no_leftovers"),
              pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")]


def fill(folder: Path) -> None:
    """Use up every byte of ``folder``'s file system."""
    with open(folder / "filler", "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
            f.flush()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs",
                           str(mount)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def run(tmp_path: Path, pipeline: Path, *args: str, tmpdir: Path | None = None
        ) -> tuple[int, dict[str, Any], str]:
    work = tmpdir or tmp_path / "work"
    work.mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "boride", "run", str(pipeline), "--json",
                           *args], env={**os.environ, "TMPDIR": str(work)},
                          capture_output=True, text=True, timeout=240, check=False)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


@pytest.fixture
def big_template(template: Path) -> Path:
    for n in range(400):
        (template / "many" / f"d{n % 20}").mkdir(parents=True, exist_ok=True)
        (template / "many" / f"d{n % 20}" / f"file{n}.bin").write_bytes(os.urandom(4000))
    return template


def test_out_on_a_full_disk_is_one_short_message(
        tmp_path: Path, make_pipeline: PipelineFactory, big_template: Path,
        small_disk: Path) -> None:
    out = small_disk / "result"
    code, report, stderr = run(tmp_path, make_pipeline([("p", "ok_processor", {})]),
                               "--out", str(out))
    assert code == 1
    text = "\n".join(report["errors"])
    assert "No space left on device" in text and str(small_disk) in text, text
    assert len(stderr) < 4000, stderr
    assert not out.exists()
    assert [p.name for p in small_disk.iterdir()] == []  # no half-written staging folder


def test_archive_on_a_full_disk_names_the_archive(
        tmp_path: Path, make_pipeline: PipelineFactory, big_template: Path,
        small_disk: Path) -> None:
    dest = small_disk / "result.tar.gz"
    code, report, stderr = run(tmp_path, make_pipeline([("p", "ok_processor", {})]),
                               "--archive", str(dest))
    assert code == 1
    text = "\n".join(report["errors"])
    assert f"cannot write the archive {dest}: No space left on device" in text, text
    assert len(stderr) < 4000, stderr
    assert [p.name for p in small_disk.iterdir()] == []


def test_a_full_work_area_is_named_as_the_cause(
        tmp_path: Path, make_pipeline: PipelineFactory, big_template: Path,
        small_disk: Path) -> None:
    code, report, stderr = run(tmp_path, make_pipeline([("p", "ok_processor", {})]),
                               "--out", str(tmp_path / "out"), tmpdir=small_disk)
    assert code == 1, (report, stderr)
    text = "\n".join(report["errors"])
    assert "the work area's file system is full" in text, text
    assert len(stderr) < 6000, stderr
