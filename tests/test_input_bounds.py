"""Pipeline and registry files within bounds: a "billion laughs" file, an alias cycle, a file
nested too deep and a file too big are refused at once, exit 2, in one line naming the file,
by ``boride run`` and ``boride serve --registry``; a file with a few anchors still works."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from tests.helpers import run_cli


def laughs(kind: str) -> str:
    """A 1 KB file whose aliases expand to 9**9 (387 million) strings, below ``kind``'s keys
    (pipeline: a processor's config; registry: merge keys, which PyYAML flattens)."""
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    if kind == "pipeline":
        return ("template: .\nprocessors:\n  - name: p\n    command: [python3, p.py]\n"
                "    config:\n" + "".join(f"      {line}\n" for line in levels))
    maps = ["m0: &m0 {" + ", ".join(f"k{j}: lol" for j in range(9)) + "}"]
    maps += [f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 9) + "]}" for i in range(1, 9)]
    return "".join(f"{line}\n" for line in [*levels, *maps]) + "processors: []\n"


def refused(proc: subprocess.CompletedProcess[str], path: Path, words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and words in lines[0], proc.stderr


def run_file(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # generous: today a billion laughs runs minutes (the test's own timeout ends it)
    return run_cli("run", path, "--out", tmp_path / "out", tmpdir=tmp_path / "work",
                   timeout=120)


def serve_registry(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("serve", "--registry", path, "--port", "0", tmpdir=tmp_path / "work",
                   timeout=120)


def test_billion_laughs_is_refused_at_once(tmp_path: Path) -> None:
    pipeline = tmp_path / "laughs.yaml"
    pipeline.write_text(laughs("pipeline"))
    registry = tmp_path / "laughs-registry.yaml"
    registry.write_text(laughs("registry"))
    assert len(pipeline.read_bytes()) < 1024 and len(registry.read_bytes()) < 2048
    refused(run_file(pipeline, tmp_path), pipeline, "aliases expand to more than")
    refused(serve_registry(registry, tmp_path), registry, "aliases expand to more than")
    assert not (tmp_path / "out").exists()


def test_alias_cycles_and_deep_nesting_are_refused(tmp_path: Path) -> None:
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("template: .\nprocessors: &p [{name: p, command: [x], config: *p}]\n")
    refused(run_file(cycle, tmp_path), cycle, "cycle")
    deep = tmp_path / "deep.yaml"
    deep.write_text("template: .\nprocessors: " + "[" * 5000 + "]" * 5000 + "\n")
    refused(run_file(deep, tmp_path), deep, "levels deep")
    registry = tmp_path / "deep-registry.yaml"
    registry.write_text("processors: " + "[" * 5000 + "]" * 5000 + "\n")
    refused(serve_registry(registry, tmp_path), registry, "levels deep")


def test_files_too_big_are_refused_before_they_are_read(tmp_path: Path) -> None:
    padding = "# " + "x" * 1022 + "\n"  # 1 KiB lines of comment: valid YAML all along
    pipeline = tmp_path / "big.yaml"
    pipeline.write_text("template: .\nprocessors: [{name: p, command: [x]}]\n"
                        + padding * 2048)
    refused(run_file(pipeline, tmp_path), pipeline, "larger than 1 MiB")
    registry = tmp_path / "big-registry.json"  # JSON is YAML: the same bounds
    registry.write_text(json.dumps({"processors": [], "x": ["y" * 1000] * 2048}))
    refused(serve_registry(registry, tmp_path), registry, "larger than 1 MiB")
    # not a regular file (a FIFO would block the read forever)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    refused(run_file(fifo, tmp_path), fifo, "not a regular file")


def test_a_few_anchors_and_a_file_near_the_bound_still_work(tmp_path: Path) -> None:
    from boride.inputs import MAX_FILE
    from boride.model import load
    from boride.registry import FileRegistry

    text = """\
template: .
processors:
  - name: a
    command: [python3, a.py]
    config: &config {greeting: hello, names: [x, y, z], deep: {more: [1, 2, 3]}}
    files: &files [{glob: "**/*", exclude: ["**/*.bak"]}]
  - {name: b, command: [python3, b.py], config: *config, files: *files}
  - {name: c, command: [python3, c.py], config: [*config, *config], files: *files}
"""
    pipeline = tmp_path / "anchors.yaml"
    pipeline.write_text(text + "#" * (MAX_FILE - len(text) - 1) + "\n")
    assert pipeline.stat().st_size == MAX_FILE
    loaded = load(pipeline)
    a, b, c = loaded.processors
    assert a.config == b.config == {"greeting": "hello", "names": ["x", "y", "z"],
                                    "deep": {"more": [1, 2, 3]}}
    assert c.config == [a.config, a.config] and a.files == b.files == c.files
    entry = {"ref": "me/p", "version": 1, "id": "p1", "command": ["python3", "p.py"]}
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({"processors": [entry]}).replace(
        "- command:", "- &p1\n  command:") + "plugins: [{<<: *p1, ref: me/q, id: q1}]\n")
    assert len(FileRegistry.load(registry)._by_id) == 2
    as_json = tmp_path / "registry.json"
    as_json.write_text(json.dumps({"processors": [entry]}))
    assert len(FileRegistry.load(as_json)._by_id) == 1
