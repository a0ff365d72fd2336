"""A failing component's own words reach the user: its error line and last output, bounded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from boride import diagnose
from tests.conftest import COMPONENTS, PipelineFactory
from tests.helpers import run_json

PYTHON_TRACE = """\
INFO:     127.0.0.1 - "GET / HTTP/1.1" 200 OK
Error handling request
Traceback (most recent call last):
  File "/usr/lib/python3/site-packages/aiohttp/web_protocol.py", line 452, in _handle_request
    resp = await request_handler(request)
  File "/app/p.py", line 9, in process
    open("/workspace/area/x/out.txt", "w").write(data)
OSError: [Errno 28] No space left on device
"""

BUN_TRACE = """\
ReferenceError: Can't find variable: color
""" + "".join(f"      at render{n} (/app/src/index.ts:{n}:7)\n" for n in range(24))


def test_python_exception_line_is_found() -> None:
    lines = PYTHON_TRACE.splitlines()
    assert diagnose.error_line(lines) == "OSError: [Errno 28] No space left on device"
    text = diagnose.summary(lines)
    assert 'File "' not in text and "resp = await" not in text


def test_message_above_frames_is_found_and_frames_are_left_out() -> None:
    lines = BUN_TRACE.splitlines()
    assert diagnose.error_line(lines) == "ReferenceError: Can't find variable: color"
    text = diagnose.summary(lines)
    assert " at " not in text
    assert len(text.splitlines()) <= 2 + diagnose.MAX_LINES


def test_summary_is_bounded() -> None:
    lines = ["x" * 100_000] * 1000 + ["ValueError: " + "y" * 100_000]
    text = diagnose.summary(lines)
    assert len(text) < 3 * diagnose.MAX_LINES * diagnose.MAX_WIDTH
    assert diagnose.error_line([]) is None and diagnose.summary([]) == ""


@pytest.mark.sandbox
@pytest.mark.usefixtures("no_leftovers")
def test_http_500_shows_the_exception_the_component_raised(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    proc, report = run_json(make_pipeline([("a", "fail_500", {})]), "--out", tmp_path / "out",
                            tmpdir=tmp_path)
    assert proc.returncode == 1
    (error,) = report["errors"]  # type: ignore[misc]
    assert "HTTP 500" in error
    assert ("its error: RuntimeError: fail_500: deliberate failure inside the processor "
            "function") in error
    assert "its error: RuntimeError" in proc.stderr


@pytest.mark.sandbox
@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_a_component_dying_with_a_js_stack_shows_the_message_not_the_frames(
        tmp_path: Path, make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline([("a", [shutil.which("node"), COMPONENTS / "crash_node.js"], {})])
    proc, report = run_json(pipeline, "--out", tmp_path / "out", tmpdir=tmp_path)
    assert proc.returncode == 1
    (error,) = report["errors"]  # type: ignore[misc]
    assert "died during its call" in error
    assert "its error: ReferenceError: Can't find variable: color" in error
    assert " at deep " not in error and len(error.splitlines()) <= 3 + diagnose.MAX_LINES
