"""The embedded local runtime: each component is a local process in its own namespaces.

CyanPrint SDK servers bind ``0.0.0.0`` on a fixed port, so eight processors at once need eight
network views. Each component runs under ``unshare`` in a new network, mount and PID namespace
(plus a user namespace when not root) with :mod:`boride.runtime.nsinit` as PID 1, which brings
loopback up, makes the template read-only for processors, starts the component and forwards a
Unix socket in the session folder to the component's port. boride talks HTTP over that socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

import httpx

from boride.runtime.base import LOG_TAIL, ExitInfo, Instance, Runtime, Workspace
from boride.types import Component, Kind

_STOP_GRACE = 5.0
_SOCKET_DIR_MAX = 80  # leaves room for "/NNNN-processor.sock" within the 107-byte limit


@functools.cache
def namespace_flags() -> tuple[str, ...]:
    """The ``unshare`` options that isolate a component here (root needs no user namespace)."""
    base = ("--net", "--mount", "--pid", "--fork", "--kill-child")
    return base if os.geteuid() == 0 else ("--user", "--map-root-user", *base)


@functools.cache
def namespace_problem() -> str | None:
    """Why components cannot be isolated on this machine, or None when they can."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "the local runtime needs the 'unshare' command (Debian/Ubuntu package util-linux)"
    try:
        proc = subprocess.run([unshare, *namespace_flags(), "true"], capture_output=True,
                              text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run unshare: {exc}"
    if proc.returncode != 0:
        why = proc.stderr.strip() or f"exit code {proc.returncode}"
        hint = ("run as root, or enable unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces), "
                "or use --runtime docker")
        return f"the local runtime cannot create namespaces ({why}): {hint}"
    return None


def component_env() -> dict[str, str]:
    """The environment of local components: boride's own, with its interpreter first on PATH,
    so that ``python3`` in a pipeline file means the environment boride runs in."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _find_executable(command: tuple[str, ...], cwd: Path, env: dict[str, str]) -> str | None:
    exe = command[0]
    if "/" in exe:
        path = cwd / exe
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(exe, path=env["PATH"])


class LocalInstance(Instance):
    def __init__(self, component: Component, process: asyncio.subprocess.Process,
                 socket_path: Path, log_path: Path) -> None:
        self.component = component
        self.process = process
        self.socket_path = socket_path
        self.log_path = log_path
        transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
        self.client = httpx.AsyncClient(transport=transport,
                                        base_url=f"http://{component.kind.value}",
                                        timeout=None)
        self._exit: asyncio.Future[ExitInfo] | None = None

    async def wait_exit(self) -> ExitInfo:
        if self._exit is None:
            self._exit = asyncio.ensure_future(self._watch())
        return await asyncio.shield(self._exit)

    async def _watch(self) -> ExitInfo:
        code = await self.process.wait()
        return ExitInfo(code if code >= 0 else None, self.log_tail(LOG_TAIL))

    def log_tail(self, lines: int = 20) -> list[str]:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                tail = deque(f, maxlen=lines)
        except OSError:
            return []
        return [line.rstrip("\n") for line in tail]


class LocalRuntime(Runtime):
    """Components as local processes; see the module docstring."""

    name = "local"

    def __init__(self, *, readonly_template: bool = True) -> None:
        # readonly_template=False exists for tests of the template-change detection.
        self.readonly_template = readonly_template
        self.env = component_env()
        self._seq = itertools.count()
        self._run_dirs: dict[str, Path] = {}  # session -> folder of sockets and logs
        self._socket_dirs: dict[str, Path] = {}  # session -> short folder made for sockets

    async def problems(self, components: list[Component]) -> list[str]:
        found: list[str] = []
        ns = namespace_problem()
        if ns is not None:
            found.append(ns)
        for c in components:
            if not c.command:
                found.append(f"{c.kind.value} {c.name!r}: no 'command' to run it locally")
                continue
            cwd = c.cwd or Path.cwd()
            if _find_executable(c.command, cwd, self.env) is None:
                found.append(f"{c.kind.value} {c.name!r}: command {c.command[0]!r} not found "
                             f"(cwd {cwd})")
        return found

    async def open_workspace(self, session_id: str, template: Path, root: Path) -> Workspace:
        for sub in ("area", "run"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        area = (root / "area").resolve()
        run = (root / "run").resolve()
        if len(str(run)) > _SOCKET_DIR_MAX:
            # Unix socket paths are limited to 107 bytes: use a short private folder instead.
            run = Path(tempfile.mkdtemp(prefix="boride-", dir="/tmp"))
            self._socket_dirs[session_id] = run
        self._run_dirs[session_id] = run
        tpl = template.resolve()
        return Workspace(session_id, tpl, area, str(tpl), str(area))

    async def start(self, workspace: Workspace, component: Component) -> Instance:
        assert component.command, "checked by problems()"
        run = self._run_dirs[workspace.session_id]
        stem = f"{next(self._seq):04d}-{component.kind.value}"
        socket_path, log_path = run / f"{stem}.sock", run / f"{stem}.log"
        cwd = component.cwd or Path.cwd()
        readonly = ["--readonly", str(workspace.host_template)] if (
            component.kind is Kind.PROCESSOR and self.readonly_template) else []
        argv = [
            "unshare", *namespace_flags(), "--",
            sys.executable, "-m", "boride.runtime.nsinit",
            "--socket", str(socket_path), "--port", str(component.kind.port),
            "--cwd", str(cwd), *readonly, "--", *component.command,
        ]
        with open(log_path, "wb") as log:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, start_new_session=True)
        return LocalInstance(component, process, socket_path, log_path)

    async def stop(self, instance: Instance) -> None:
        assert isinstance(instance, LocalInstance)
        proc = instance.process
        with contextlib.suppress(Exception):
            await instance.client.aclose()
        if proc.returncode is None:
            # Closing its stdin tells nsinit (PID 1 of the namespace) to exit, which kills
            # everything in the namespace.
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), _STOP_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                await proc.wait()
        elif proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(FileNotFoundError):
            instance.socket_path.unlink()

    async def close_workspace(self, workspace: Workspace) -> None:
        self._run_dirs.pop(workspace.session_id, None)
        short = self._socket_dirs.pop(workspace.session_id, None)
        if short is not None:
            shutil.rmtree(short, ignore_errors=True)
