"""A full disk, for real (a small tmpfs): every message is bounded and says where it happened."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PipelineFactory
from tests.helpers import run_json

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
    proc, report = run_json(make_pipeline([("p", "ok_processor", {})]), "--out", out,
                            tmpdir=tmp_path / "work")
    assert proc.returncode == 1
    text = "\n".join(report["errors"])
    assert "No space left on device" in text and str(small_disk) in text, text
    assert len(proc.stderr) < 4000, proc.stderr
    assert not out.exists()
    assert [p.name for p in small_disk.iterdir()] == []  # no half-written staging folder


def test_archive_on_a_full_disk_names_the_archive(
        tmp_path: Path, make_pipeline: PipelineFactory, big_template: Path,
        small_disk: Path) -> None:
    dest = small_disk / "result.tar.gz"
    proc, report = run_json(make_pipeline([("p", "ok_processor", {})]), "--archive", dest,
                            tmpdir=tmp_path / "work")
    assert proc.returncode == 1
    text = "\n".join(report["errors"])
    assert f"cannot write the archive {dest}: No space left on device" in text, text
    assert len(proc.stderr) < 4000, proc.stderr
    assert [p.name for p in small_disk.iterdir()] == []


def test_a_full_work_area_is_named_as_the_cause(
        tmp_path: Path, make_pipeline: PipelineFactory, big_template: Path,
        small_disk: Path) -> None:
    proc, report = run_json(make_pipeline([("p", "ok_processor", {})]), "--out",
                            tmp_path / "out", tmpdir=small_disk)
    assert proc.returncode == 1, (report, proc.stderr)
    text = "\n".join(report["errors"])
    assert "the work area's file system is full" in text, text
    assert len(proc.stderr) < 6000, proc.stderr
