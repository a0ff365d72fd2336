"""The tests' one place for each thing: running the ``boride`` command line (``run_cli``,
``run_json``, ``start_cli``), writing a pipeline file (``write_pipeline``) and taking a snapshot
of a tree of files (``tree``) or of an archive's files (``archive_files``). Every test uses
these; none has a copy of its own."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ROOT / "tests" / "components"
EXAMPLES = ROOT / "examples"

# -- the command line ----------------------------------------------------------------------------

Arg = str | Path
CLI = (sys.executable, "-m", "boride")


def _command(args: Sequence[Arg], python: Sequence[Arg] | None) -> list[str]:
    head = [*map(str, python), "-m", "boride"] if python is not None else list(CLI)
    return [*head, *map(str, args)]


def _environment(env: Mapping[str, str] | None, tmpdir: Path | None,
                 inherit: bool) -> dict[str, str]:
    merged = {**(os.environ if inherit else {}), **(env or {})}
    if tmpdir is not None:
        tmpdir.mkdir(parents=True, exist_ok=True)
        merged["TMPDIR"] = str(tmpdir)
    return merged


def run_cli(*args: Arg, cwd: Path | None = None, env: Mapping[str, str] | None = None,
            tmpdir: Path | None = None, inherit_env: bool = True, input: str | None = None,
            timeout: float = 240, python: Sequence[Arg] | None = None,
            in_process: bool = False) -> subprocess.CompletedProcess[str]:
    """``boride ARGS`` to its end: its exit code (``returncode``), ``stdout`` and ``stderr``.

    By default a real process, ``python -m boride`` under this interpreter (``python``: another
    command to start it with, e.g. ``setpriv ... /usr/bin/python3``): a build starts component
    processes, installs signal handlers, reads ``TMPDIR`` once and may change its environment,
    none of which may happen inside the test run, and exit codes and signals are the real
    process's. ``env`` adds to (``inherit_env=False``: replaces) this process's environment;
    ``tmpdir`` is created and given as ``TMPDIR``, where the run's work areas go, so that a test
    can see they are gone.

    ``in_process=True`` calls the click command in this process (click's ``CliRunner``), which
    is faithful, and much faster, only for a command line refused before anything starts (bad
    arguments, exit code 2) or ``--help``; it takes neither ``cwd``, ``tmpdir`` nor ``python``.
    """
    if in_process:
        assert cwd is None and tmpdir is None and python is None and inherit_env, \
            "in_process takes no cwd, tmpdir, python or inherit_env"
        from click.testing import CliRunner

        from boride.cli import main

        argv = [str(a) for a in args]
        result = CliRunner().invoke(main, argv, input=input, env=dict(env or {}))
        return subprocess.CompletedProcess(["boride", *argv], result.exit_code, result.stdout,
                                           result.stderr)
    return subprocess.run(_command(args, python), env=_environment(env, tmpdir, inherit_env),
                          cwd=cwd, input=input, capture_output=True, text=True, timeout=timeout,
                          check=False)


def run_json(*args: Arg, **kw: Any) -> tuple[subprocess.CompletedProcess[str], Any]:
    """``boride run ARGS --json`` (``kw`` as for ``run_cli``): the process and its report; the
    test fails, showing stderr, when stdout is not JSON."""
    proc = run_cli("run", *args, "--json", **kw)
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"stdout is not JSON: {proc.stdout!r}\nstderr: {proc.stderr}")
    return proc, data


def start_cli(*args: Arg, cwd: Path | None = None, env: Mapping[str, str] | None = None,
              tmpdir: Path | None = None, stdout: int | IO[Any] | None = subprocess.PIPE,
              stderr: int | IO[Any] | None = subprocess.PIPE) -> subprocess.Popen[str]:
    """``boride ARGS`` started in a real process and left running, for a test that signals it,
    reads its output as it comes or runs several at once; ``cwd``, ``env`` and ``tmpdir`` as
    for ``run_cli``, ``stdout`` and ``stderr`` as for ``subprocess.Popen`` (text)."""
    return subprocess.Popen(_command(args, None), env=_environment(env, tmpdir, True), cwd=cwd,
                            stdout=stdout, stderr=stderr, text=True)


# -- pipeline files ------------------------------------------------------------------------------

TEMPLATE_FILES: list[dict[str, Any]] = [
    {"glob": "**/*.*", "exclude": ["**/*.bak"], "type": "template"}]
"""The ``files`` of every processor ``write_pipeline`` makes from a tuple (unless told)."""


def component(name: str) -> list[str]:
    """The command that runs ``tests/components/<name>.py`` on the local runtime."""
    return [sys.executable, str(COMPONENTS / f"{name}.py")]


def _runnable(what: str | Sequence[str], images: bool) -> dict[str, Any]:
    if not isinstance(what, str):
        return {"command": [str(a) for a in what]}
    if images:
        from tests.docker_helpers import image_of

        return {"image": image_of(what)}
    return {"command": component(what)}


Step = tuple[Any, ...] | dict[str, Any]


def write_pipeline(path: Path, template: Path | str, processors: Sequence[Step] = (),
                   resolvers: Sequence[Step] = (), plugins: Sequence[Step] = (), *,
                   images: bool = False, files: list[dict[str, Any]] | None = TEMPLATE_FILES,
                   **extra: Any) -> Path:
    """Write the pipeline file ``path`` over ``template`` and return it.

    A step is a dict, written as it is, or a tuple: ``(name, component, config)`` for
    processors and plugins, ``(name, component, files, config)`` for resolvers, where
    ``component`` is a ``tests/components`` stem (run as a command, or from its test image
    with ``images=True``) or a command (a list). Tuple processors read ``files`` (``None``:
    no ``files`` key). ``extra``: more top-level keys (``parallelism``, ...)."""

    def processor(step: Step) -> dict[str, Any]:
        if isinstance(step, dict):
            return step
        name, what, config = step
        globs = {} if files is None else {"files": files}
        return {"name": name, **_runnable(what, images), "config": config, **globs}

    def resolver(step: Step) -> dict[str, Any]:
        if isinstance(step, dict):
            return step
        name, what, paths, config = step
        return {"name": name, **_runnable(what, images), "files": paths, "config": config}

    def plugin(step: Step) -> dict[str, Any]:
        if isinstance(step, dict):
            return step
        name, what, config = step
        return {"name": name, **_runnable(what, images), "config": config}

    data: dict[str, Any] = {
        "template": str(template),
        "processors": [processor(s) for s in processors],
        "resolvers": [resolver(s) for s in resolvers],
        "plugins": [plugin(s) for s in plugins],
        **extra,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- snapshots of trees --------------------------------------------------------------------------

DIR = "<dir>"
"""A folder's entry in a ``tree`` snapshot."""


def tree(root: Path, *, dirs: bool = True, executable: bool = False, regular: bool = False,
         copy_modes: bool = False) -> dict[str, Any]:
    """Relative path -> what is there, for everything below ``root``, sorted: ``DIR`` for a
    folder, a file's content (bytes), or with ``executable`` (content, executable?).

    Links are followed (a link is what it leads to), unless ``regular``: then anything but a
    folder or a regular file (a link, a socket, ...) fails the test. ``copy_modes`` (implies
    ``regular``): every mode must be what a copy gives, folders 0755, files 0644 or 0755.
    ``dirs=False`` leaves the folders out."""
    regular = regular or copy_modes
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        st = path.lstat() if regular else path.stat()
        if stat.S_ISDIR(st.st_mode):
            assert not copy_modes or stat.S_IMODE(st.st_mode) == 0o755, rel
            if dirs:
                out[rel] = DIR
            continue
        if regular:
            assert stat.S_ISREG(st.st_mode), f"{rel} is not a regular file"
        assert not copy_modes or stat.S_IMODE(st.st_mode) in (0o644, 0o755), rel
        content = path.read_bytes()
        out[rel] = (content, bool(st.st_mode & 0o111)) if executable else content
    return out


def archive_files(archive: bytes | Path, *, strip: str = "") -> dict[str, bytes]:
    """Name -> content of every regular file in a ``.tar.gz`` (its bytes, or a file), each name
    without ``strip`` at its start (``"./"`` for an archive made from ``.``)."""
    source = {"name": archive} if isinstance(archive, Path) else {"fileobj": io.BytesIO(archive)}
    with tarfile.open(mode="r:gz", **source) as tar:  # type: ignore[call-overload]
        return {m.name.removeprefix(strip): tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}
