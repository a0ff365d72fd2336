"""The cache of processor outputs (``boride run --cache``), with real components and builds.

A hit must give the very result a call would have given, and must call (start) nothing; every
change an output can depend on (the template, a step's config, the component's files) must
miss; a corrupt entry is a miss; concurrent builds share the cache; the size bound holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from boride import cache
from tests.conftest import COMPONENTS, EXAMPLES
from tests.helpers import (
    TEMPLATE_FILES,
    component,
    run_cli,
    run_json,
    start_cli,
    tree,
    write_pipeline,
)
from tests.test_local_pipeline import by_name

pytestmark = pytest.mark.usefixtures("no_leftovers")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A pipeline of two copies of ok_processor (their own files, in the pipeline's folder)
    and a plugin, over a small template."""
    tpl = tmp_path / "template"
    (tpl / "src").mkdir(parents=True)
    (tpl / "src" / "a.txt").write_text("alpha\n")
    (tpl / "README.md").write_text("# readme\n")
    for name in ("one", "two"):
        shutil.copy(COMPONENTS / "ok_processor.py", tmp_path / f"{name}.py")
    write_project(tmp_path, {"one": {"suffix": "+1"}, "two": {"suffix": "+2"}})
    return tmp_path


def write_project(folder: Path, configs: dict[str, Any], script: str | None = None,
                  **extra: Any) -> Path:
    """The project's pipeline file: a processor a config, running ``<its name>.py`` (or
    ``<script>.py``) from the project's folder (``extra[name]``: more of its keys), then the
    plugin; ``extra``'s other keys go to the top level."""
    steps = [{"name": n, "command": [sys.executable, f"{script or n}.py"], "config": c,
              "files": TEMPLATE_FILES, **extra.pop(n, {})} for n, c in configs.items()]
    plugin = {"name": "plug", "command": component("noop_plugin")}
    return write_pipeline(folder / "pipeline.yaml", "template", steps, plugins=[plugin],
                          **extra)


def build(project: Path, *args: str | Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    out = project / "out"
    proc, data = run_json(project / "pipeline.yaml", "--out", out, "--force", "--cache",
                          "--cache-dir", project / "cache", *args, tmpdir=project / "work")
    assert proc.returncode == 0, proc.stderr
    assert data["status"] == "ok", data["errors"]
    return data, tree(out)


def cached(data: dict[str, Any]) -> dict[str, bool]:
    return {n: c["cached"] for n, c in by_name(data).items()}


def entries(project: Path) -> list[Path]:
    return sorted((project / "cache").glob("*/entries/*/*"))


@pytest.mark.sandbox
def test_an_unchanged_build_calls_no_processor_and_gives_the_same_result(project: Path) -> None:
    first, result = build(project)
    assert cached(first) == {"one": False, "two": False, "plug": False}
    assert len(entries(project)) == 2
    second, again = build(project)
    assert cached(second) == {"one": True, "two": True, "plug": False}
    assert again == result
    assert result["src/a.txt"] == b"alpha\n+2"  # the last processor wins


@pytest.mark.sandbox
def test_a_template_edit_misses(project: Path) -> None:
    build(project)
    (project / "template" / "src" / "a.txt").write_text("ALPHA\n")
    data, result = build(project)
    assert cached(data) == {"one": False, "two": False, "plug": False}
    assert result["src/a.txt"].startswith(b"ALPHA\n")
    # a file no glob selects is in the key too (processors may read any template file)
    (project / "template" / "notes").write_text("x")
    data, _ = build(project)
    assert cached(data)["one"] is False


@pytest.mark.sandbox
def test_a_config_edit_misses_for_that_step_only(project: Path) -> None:
    build(project)
    write_project(project, {"one": {"suffix": "+1"}, "two": {"suffix": "+TWO"}})
    data, result = build(project)
    assert cached(data) == {"one": True, "two": False, "plug": False}
    assert result["src/a.txt"] == b"alpha\n+TWO"


@pytest.mark.sandbox
def test_a_component_change_misses(project: Path) -> None:
    build(project)
    script = project / "one.py"
    script.write_text(script.read_text().replace('suffix = str(config.get("suffix", ""))',
                                                 'suffix = str(config.get("suffix", "")) + "!"'))
    data, result = build(project)
    assert cached(data)["one"] is False
    assert result["README.md"] == b"# readme\n+2"
    # a new file in the folder the component runs in is a change too (it may import it)
    (project / "helper_module.py").write_text("X = 1\n")
    data, _ = build(project)
    assert cached(data) == {"one": False, "two": False, "plug": False}


@pytest.mark.sandbox
def test_a_corrupt_entry_is_a_miss_and_is_replaced(project: Path) -> None:
    _, result = build(project)
    for entry in entries(project):
        raw = bytearray(entry.read_bytes())
        raw[len(raw) // 3] ^= 0xFF
        entry.write_bytes(bytes(raw))
    truncated = entries(project)[0]
    truncated.write_bytes(truncated.read_bytes()[:10])
    data, again = build(project)
    assert cached(data) == {"one": False, "two": False, "plug": False}
    assert again == result
    # replaced by good entries, which the next build uses
    data, _ = build(project)
    assert cached(data) == {"one": True, "two": True, "plug": False}


@pytest.mark.sandbox
def test_a_step_can_opt_out(project: Path) -> None:
    write_project(project, {"one": {"suffix": "+1"}, "two": {"suffix": "+2"}},
                   two={"cache": False})
    build(project)
    data, _ = build(project)
    assert cached(data) == {"one": True, "two": False, "plug": False}
    assert len(entries(project)) == 1


@pytest.mark.sandbox
def test_the_pipeline_file_can_turn_it_on_and_no_cache_off(project: Path) -> None:
    write_project(project, {"one": {}, "two": {}}, cache=True)
    env_args = ("--cache-dir", project / "cache")
    for _ in range(2):
        proc, data = run_json(project / "pipeline.yaml", "--out", project / "out", "--force",
                              *env_args, tmpdir=project / "work")
        assert proc.returncode == 0, proc.stderr
    assert cached(data)["one"] is True
    proc, data = run_json(project / "pipeline.yaml", "--out", project / "out", "--force",
                          "--no-cache", *env_args, tmpdir=project / "work")
    assert cached(data)["one"] is False


@pytest.mark.sandbox
def test_two_builds_at_once_share_the_cache(project: Path, tmp_path_factory: Any) -> None:
    # (the results go outside the pipeline's folder, the folder the components run in: a new
    # result there would be a change of every local component)
    results_dir = tmp_path_factory.mktemp("results")

    def start(n: int) -> subprocess.Popen[str]:
        return start_cli("run", project / "pipeline.yaml", "--out", results_dir / f"out{n}",
                         "--cache", "--cache-dir", project / "cache", "--json",
                         tmpdir=project / "work")

    (project / "work").mkdir()
    for round_ in range(2):
        procs = [start(2 * round_ + n) for n in range(2)]
        results = [p.communicate(timeout=240) for p in procs]
        for p, (stdout, stderr) in zip(procs, results, strict=True):
            assert p.returncode == 0, stderr
            assert json.loads(stdout)["status"] == "ok"
    outs = [tree(results_dir / f"out{n}") for n in range(4)]
    assert all(o == outs[0] for o in outs)
    # every entry is whole (two writers of one key: the last rename wins, both complete)
    store = cache.Cache(project / "cache")
    assert len(entries(project)) == 2
    for entry in entries(project):
        f = store.open(entry.name)
        assert f is not None, f"{entry} is not intact"
        f.close()
    assert not list((project / "cache").glob("*/tmp/*"))


def test_the_size_bound_removes_the_least_recently_used(tmp_path: Path) -> None:
    import asyncio

    store = cache.Cache(tmp_path / "c", max_bytes=3 * 1100)

    async def chunks(data: bytes) -> Any:
        yield data

    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5)]
    for i, key in enumerate(keys):
        asyncio.run(store.put(key, chunks(bytes([i]) * 1000)))
        entry = store._path(key)
        os.utime(entry, ns=(time.time_ns(), time.time_ns() - (10 - i) * 10**9))
    used = store.open(keys[0])  # read now: the most recently used
    assert used is not None and used.read(1000) == b"\0" * 1000
    used.close()
    assert store.trim() == 2
    left = {k for k in keys if store._path(k).exists()}
    assert left == {keys[0], keys[3], keys[4]}
    assert store.info().bytes <= store.max_bytes


@pytest.mark.sandbox
def test_size_bound_in_a_build(project: Path) -> None:
    build(project, "--cache-size", "1")
    assert entries(project) == []  # each entry is larger than a byte: none is kept
    data, _ = build(project, "--cache-size", "1")
    assert cached(data)["one"] is False


@pytest.mark.sandbox
def test_cache_info_and_clear(project: Path) -> None:
    build(project)
    proc = run_cli("cache", "info", "--cache-dir", project / "cache", "--json",
                   tmpdir=project / "work")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["entries"] == 2 and info["bytes"] > 0
    proc = run_cli("cache", "clear", "--cache-dir", project / "cache", "--json",
                   tmpdir=project / "work")
    assert json.loads(proc.stdout)["removed"] == 2
    assert entries(project) == []
    data, _ = build(project)
    assert cached(data)["one"] is False


def test_bad_cache_size_is_a_usage_error(project: Path) -> None:
    proc = run_cli("run", project / "pipeline.yaml", "--cache", "--cache-size", "lots",
                   tmpdir=project / "work")
    assert proc.returncode == 2
    assert "--cache-size" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.sandbox
def test_the_bundled_example_with_the_cache(tmp_path: Path) -> None:
    args = ("--cache", "--cache-dir", tmp_path / "cache")
    for expect in (False, True):
        proc, data = run_json(EXAMPLES / "pipeline.yaml", "--out", tmp_path / "out", "--force",
                              *args, tmpdir=tmp_path / "work")
        assert proc.returncode == 0, proc.stderr
        assert cached(data)["upper"] is expect
        assert tree(tmp_path / "out") == tree(EXAMPLES / "expected")


@pytest.mark.sandbox
def test_the_api_reuses_outputs_across_sessions_per_token(tmp_path: Path) -> None:
    """A server with --cache: a second session's build of the example calls none of its three
    processors and streams the same archive; another token gets a cache of its own."""
    from boride.server import ServerConfig
    from tests.test_server_support import (
        EXAMPLE_REGISTRY,
        example_build,
        example_template,
        metric,
        new_id,
        running_server,
    )

    def session_build(http: Any, template: dict[str, Any]) -> bytes:
        sid = str(new_id())
        assert http.post(f"/executor/{sid}/warm", json=template).status_code == 200
        r = http.post(f"/executor/{sid}", json=example_build(template))
        assert r.status_code == 200, r.text
        assert http.delete(f"/executor/{sid}").status_code == 200
        return bytes(r.content)

    template = example_template()
    archives = []
    for token in ("tenant-a", "tenant-b"):
        config = ServerConfig(registry=(str(EXAMPLE_REGISTRY),), work_root=tmp_path / "work",
                              token=token, cache=cache.Cache(
                                  tmp_path / "cache", namespace=cache.cache_namespace(token)))
        with running_server(config) as server, server.client() as http:
            http.headers["authorization"] = f"Bearer {token}"
            archives.append(session_build(http, template))
            assert metric(http, "boride_cache_hits_total") == 0
            archives.append(session_build(http, template))
            assert metric(http, "boride_cache_hits_total") == 3
    assert len(set(archives)) == 1
    spaces = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert spaces == sorted(cache.cache_namespace(t) for t in ("tenant-a", "tenant-b"))
    assert not any("tenant" in s for s in spaces)  # the token itself is never written


@pytest.mark.docker
async def test_on_docker_the_key_is_the_image_id(tmp_path: Path) -> None:
    """On Docker a component is its image's id: a hit while the tag names the same image, a
    miss once the tag names another image."""
    import docker

    from boride.model import load
    from boride.pipeline import BuildOptions
    from boride.pipeline import build as run_build
    from boride.runtime.docker import DockerRuntime, connect

    client: docker.DockerClient = connect()
    tag = f"local/boride-cache-test-{os.getpid()}:1"
    client.images.get("local/boride-example-upper:1").tag(tag)
    shutil.copytree(EXAMPLES / "template", tmp_path / "template")
    data = yaml.safe_load((EXAMPLES / "pipeline.yaml").read_text())
    data["template"] = str(tmp_path / "template")
    data["processors"][0]["image"] = tag
    write_pipeline(tmp_path / "pipeline.yaml", **data)
    store = cache.Cache(tmp_path / "cache")
    runtime = DockerRuntime()
    try:
        async def once(n: int) -> dict[str, bool]:
            res = await run_build(load(tmp_path / "pipeline.yaml"), runtime, BuildOptions(
                cache=store, out=tmp_path / f"out{n}", work_root=tmp_path / "work"))
            assert res.ok, res.errors
            return {c.name: c.cached for c in res.components}

        assert (await once(0))["upper"] is False
        assert await once(1) == {"upper": True, "substitute": True, "license": True,
                                 "concat": False, "stamp": False}
        assert tree(tmp_path / "out1") == tree(EXAMPLES / "expected")
        client.images.get("local/boride-example-license:1").tag(tag)  # same name, new image
        assert (await once(2))["upper"] is False
        assert tree(tmp_path / "out2") != tree(EXAMPLES / "expected")
    finally:
        await runtime.aclose()
        client.images.remove(tag)


@pytest.mark.sandbox
def test_many_hits_at_once(project: Path) -> None:
    """More cached outputs unpacked at once than the event loop's thread pool has threads (it
    once deadlocked: each unpack held a thread waiting for chunks read by another)."""
    write_project(project, {f"p{i}": {"files": {f"own-{i}.txt": str(i)}} for i in range(12)},
                  script="one", parallelism=12)
    _, first = build(project, "--timeout", "120")
    again, second = build(project, "--timeout", "120")
    assert all(c["cached"] for c in again["components"] if c["kind"] == "processor")
    assert second == first
    assert all(f"own-{i}.txt" in second for i in range(12))


@pytest.mark.sandbox
async def test_an_edit_during_the_build_takes_back_what_it_stored(project: Path) -> None:
    """An author saving the template while processors run (a watch build): their outputs may
    come from either version, so none of them stays in the cache."""
    from boride.model import load
    from boride.pipeline import BuildOptions
    from boride.pipeline import build as run_build
    from boride.runtime.local import LocalRuntime
    from boride.types import Status

    write_project(project, {"one": {"suffix": "+1"}, "two": {"suffix": "+2", "delay": 3}})
    store = cache.Cache(project / "cache")
    running: asyncio.Event = asyncio.Event()

    def on_event(stage: str, name: str | None, status: Status) -> None:
        if stage == "process" and name == "two" and status == Status.RUNNING:
            running.set()

    runtime = LocalRuntime()
    task = asyncio.ensure_future(run_build(load(project / "pipeline.yaml"), runtime, BuildOptions(
        cache=store, work_root=project / "work", on_event=on_event,
        cache_skip=(project / "pipeline.yaml",))))
    try:
        await asyncio.wait_for(running.wait(), 120)
        await asyncio.sleep(0.5)  # 'one' (no delay) is done and stored by now
        (project / "template" / "README.md").write_text("# edited meanwhile\n")
        await task
    finally:
        await runtime.aclose()
    assert entries(project) == []
    data, result = build(project)
    assert cached(data) == {"one": False, "two": False, "plug": False}
    assert result["README.md"] == b"# edited meanwhile\n+2"
