"""boride's start-up imports only what a command needs (issue 23): ``--version`` and ``--help``
load no heavy library, a local run never loads the server's, Docker's or OpenTelemetry's.

Each case runs ``python -X importtime -m boride ...`` in a fresh interpreter and reads the
modules it imported from stderr (no timings asserted: the figures are bench/startup.py's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "pipeline.yaml"

#: libraries no command-line parsing needs
HEAVY = ("rich", "pydantic", "pydantic_core", "httpx", "httpcore", "yaml", "fastapi",
         "starlette", "uvicorn", "docker", "opentelemetry", "matplotlib", "asyncio", "zlib_ng",
         "wcmatch", "watchfiles", "prometheus_client", "anyio", "cyanprintsdk")
#: libraries of other commands and of the Docker runtime, never those of a local build
NOT_FOR_A_LOCAL_RUN = ("fastapi", "starlette", "uvicorn", "docker", "opentelemetry",
                       "matplotlib", "watchfiles", "prometheus_client", "cyanprintsdk")


def imported(*args: str, cwd: Path = ROOT) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The top-level packages ``boride ARGS`` imports, and how it ended."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BORIDE_"))}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "boride", *args],
                         capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    names = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    names.discard("package")  # the header line's "package"
    return names, out


@pytest.mark.parametrize("args", [("--version",), ("--help",), ("run", "--help"),
                                  ("serve", "--help"), ("front", "--help"),
                                  ("cache", "--help"), ("clean", "--help")])
def test_version_and_help_import_no_heavy_library(args: tuple[str, ...]) -> None:
    names, out = imported(*args)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "boride" in names and "click" in names  # (the import lines were read)
    assert sorted(names & set(HEAVY)) == []
    if args == ("--help",):  # still every setting and every command
        from boride.settings import SETTINGS

        for setting in SETTINGS:
            assert setting.name in out.stdout
        for command in ("run", "serve", "front", "cache", "clean"):
            assert f"  {command} " in out.stdout


def test_a_refused_run_loads_the_pipeline_and_nothing_of_the_build(tmp_path: Path) -> None:
    """``boride run`` stopped right after loading the pipeline (its --out folder is not empty):
    the model's libraries only, no HTTP client, no runtime, no server."""
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "f").write_text("x")
    names, out = imported("run", str(EXAMPLE), "--out", str(busy))
    assert out.returncode == 2 and "exists and is not empty" in out.stderr
    assert {"pydantic", "yaml"} <= names
    assert sorted(names & {"httpx", "httpcore", "asyncio", "zlib_ng", "wcmatch",
                           *NOT_FOR_A_LOCAL_RUN}) == []


@pytest.mark.sandbox
def test_a_local_build_imports_no_server_docker_or_telemetry(tmp_path: Path) -> None:
    names, out = imported("run", str(EXAMPLE), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "out").is_dir()
    assert {"httpx", "rich", "pydantic"} <= names  # (what a build does need)
    assert sorted(names & set(NOT_FOR_A_LOCAL_RUN)) == []
