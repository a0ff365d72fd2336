"""Every ``BORIDE_*`` variable is checked before a command starts anything: a bad value is one
line naming the variable, exit 2, never a traceback, for every command (and the daemon's)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_cli, write_pipeline


def bad_values(tmp_path: Path) -> list[tuple[str, str]]:
    """(variable, a value boride must refuse) for every setting."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x\n")
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    return [
        ("BORIDE_CACHE", "maybe"),
        ("BORIDE_CACHE_DIR", str(a_file)),
        ("BORIDE_CACHE_SIZE", "lots"), ("BORIDE_CACHE_SIZE", "0"),
        ("BORIDE_DOCKER_CPUS", "abc"), ("BORIDE_DOCKER_CPUS", "0"),
        ("BORIDE_DOCKER_CPUS", "-1"), ("BORIDE_DOCKER_CPUS", "nan"),
        ("BORIDE_DOCKER_CPUS", "inf"),
        ("BORIDE_DOCKER_MEMORY", "lots"), ("BORIDE_DOCKER_MEMORY", "1k"),
        ("BORIDE_DOCKER_MEMORY", "-5m"),
        ("BORIDE_DOCKER_PIDS", "-1"), ("BORIDE_DOCKER_PIDS", "0"),
        ("BORIDE_DOCKER_PIDS", "1.5"), ("BORIDE_DOCKER_PIDS", "many"),
        ("BORIDE_DOCKER_PULL", "sometimes"),
        ("BORIDE_HELPER_IMAGE", "not an image"), ("BORIDE_HELPER_IMAGE", "Boride/Serve"),
        ("BORIDE_HELPER_TOKEN", "a b"),
        ("BORIDE_LOCAL_MEMORY", "lots"), ("BORIDE_LOCAL_MEMORY", "1m"),
        ("BORIDE_LOCAL_PIDS", "-1"), ("BORIDE_LOCAL_PIDS", "0"),
        ("BORIDE_REGISTRY", str(tmp_path / "no-such-registry.yaml")),
        ("BORIDE_REGISTRY", "ftp://example.org/registry"),
        ("BORIDE_TOKEN", "has a space in it"),
        ("BORIDE_TOKEN_FILE", str(tmp_path / "no-such-token")),
        ("BORIDE_TOKEN_FILE", str(empty)),
        ("BORIDE_WORKER_TOKEN", "tab\there"),
        ("BORIDE_WORKER_TOKEN_FILE", str(tmp_path)),
    ]


def commands(tmp_path: Path) -> list[list[str]]:
    """A command line of each command; each would fail otherwise, or start, later: the
    variable must be what it names."""
    return [["run", str(tmp_path / "missing.yaml")],
            ["run", str(tmp_path / "missing.yaml"), "--runtime", "docker"],
            ["serve", "--host", "0.0.0.0"],
            ["front"],
            ["clean"],
            ["cache", "info", "--cache-dir", str(tmp_path / "cache")]]


def one_line_naming(proc: object, name: str) -> None:
    returncode, stdout, stderr = (getattr(proc, a) for a in ("returncode", "stdout", "stderr"))
    assert returncode == 2, (returncode, stdout, stderr)
    assert "Traceback" not in stderr + stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"boride: {name}: "), stderr


def test_every_bad_value_is_refused_by_every_command(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BORIDE_HELPER_IMAGE", raising=False)
    for name, value in bad_values(tmp_path):
        for argv in commands(tmp_path):
            one_line_naming(run_cli(*argv, env={name: value}, in_process=True), name)


def test_the_issues_cases_in_real_processes(tmp_path: Path) -> None:
    template = tmp_path / "template"
    template.mkdir()
    pipeline = write_pipeline(tmp_path / "pipeline.yaml", template,
                              [("p", "ok_processor", {})])
    cases = [("BORIDE_DOCKER_CPUS", "abc", ["--runtime", "docker"]),
             ("BORIDE_DOCKER_MEMORY", "lots", ["--runtime", "docker"]),
             ("BORIDE_LOCAL_PIDS", "-1", [])]
    for name, value, extra in cases:
        proc = run_cli("run", pipeline, "--out", tmp_path / "out", *extra, env={name: value},
                       tmpdir=tmp_path / "work")
        one_line_naming(proc, name)
        assert not (tmp_path / "out").exists()
    # serve and front, and the daemon's commands (the image's entry point), as processes
    for argv in (["serve", "--runtime", "local", "--port", "0"],
                 ["front", "--worker", "http://127.0.0.1:9"]):
        one_line_naming(run_cli(*argv, env={"BORIDE_DOCKER_PIDS": "-1"}, timeout=60),
                        "BORIDE_DOCKER_PIDS")
    env = {**os.environ, "BORIDE_DOCKER_MEMORY": "lots",
           "DOCKER_HOST": "unix:///nonexistent.sock"}  # (never the shared engine)
    for argv in (["start"], ["worker"], ["front"], ["setup"]):
        proc = subprocess.run([sys.executable, "-m", "boride.daemon", *argv], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        one_line_naming(proc, "BORIDE_DOCKER_MEMORY")


def test_help_still_works_with_a_bad_variable() -> None:
    proc = run_cli("run", "--help", env={"BORIDE_DOCKER_CPUS": "abc"}, in_process=True)
    assert proc.returncode == 0 and "PIPELINE" in proc.stdout


def test_values_parse_alike_for_both_runtimes() -> None:
    from boride import settings
    from boride.runtime.docker.settings import DockerSettings
    from boride.runtime.local import SandboxLimits

    for text, size in (("512m", 512 << 20), ("1g", 1 << 30), ("1G", 1 << 30),
                       ("64MiB", 64 << 20), ("8388608", 8 << 20)):
        local = SandboxLimits.from_env({"BORIDE_LOCAL_MEMORY": text})
        docker = DockerSettings.from_env(env={"BORIDE_DOCKER_MEMORY": text})
        assert local.memory == docker.memory == size
    docker = DockerSettings.from_env(env={"BORIDE_DOCKER_CPUS": "0.5", "BORIDE_DOCKER_PIDS": "64",
                                          "BORIDE_DOCKER_PULL": "yes"})
    assert (docker.cpus, docker.pids, docker.pull) == (0.5, 64, True)
    assert DockerSettings.from_env(env={}).memory == 512 << 20  # the defaults, parsed too
    assert settings.get("BORIDE_DOCKER_PULL", {"BORIDE_DOCKER_PULL": "off"}) is False
    assert settings.get("BORIDE_TOKEN", {"BORIDE_TOKEN": ""}) is None  # empty: not set
    with pytest.raises(settings.SettingError, match=r"^BORIDE_HELPER_TOKEN: "):
        settings.get("BORIDE_HELPER_TOKEN", {"BORIDE_HELPER_TOKEN": "a b"})
    settings.check_environment({})  # nothing set: every default is good


def test_the_readme_lists_every_setting() -> None:
    from boride.settings import SETTINGS

    readme = (ROOT / "README.md").read_text()
    rows = set(re.findall(r"^\| `(BORIDE_[A-Z_]+)` \|", readme, re.M))
    assert rows == {s.name for s in SETTINGS}
