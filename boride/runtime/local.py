"""The embedded local runtime: each component is a local process in a bubblewrap sandbox.

CyanPrint SDK servers bind ``0.0.0.0`` on a fixed port, so eight processors at once need eight
network views. Each component runs under ``bwrap`` (bubblewrap) in new network, PID, IPC, UTS and
mount namespaces (plus a user namespace when boride is not root) that show it the file system the
way a container would: system folders, the Python installation and its own folder read-only, the
template read-only (processors), the session's work area writable (processors, plugins), a
private ``/tmp``, and nothing else of the host (no other session's files, no other component's
socket). :mod:`boride.runtime.nsinit` runs first in the sandbox: it starts the component as an
unprivileged user with process and memory limits and forwards a Unix socket in the component's
own socket folder to the component's port. boride talks HTTP over that socket. A Python
component run by boride's own interpreter is instead forked from its session's fork server
(:mod:`boride.runtime.forking`), in a root built from the same mount options, confined the
same way.

When boride runs as root each component instance runs as a user of its own
(:data:`~boride.config.COMPONENT_UIDS`): its folders in the area are its own (0700), the area's
top lets it reach them by name only, and what it answered is taken back
(:meth:`~boride.area.Area.take_back`), so no component reads or changes another's output. As
an ordinary user, every component runs as that user: the sandbox still keeps them from the
host and from each other's processes and sockets, but not from each other's folders.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from boride import aio, cache, diagnose, fsutil, settings, workdirs
from boride.area import HostArea
from boride.config import COMPONENT_UIDS, DEFAULT_MEMORY, DEFAULT_PIDS
from boride.protocol import plain_http
from boride.runtime import forking
from boride.runtime.base import (
    LOG_TAIL,
    BlobImage,
    ExitInfo,
    Instance,
    Runtime,
    RuntimeFailure,
    TemplateRefused,
    TemplateSource,
    UserPool,
    Workspace,
)
from boride.settings import parse_size
from boride.types import Component, Kind

_STOP_GRACE = 5.0
log = logging.getLogger(__name__)
#: A component's process: its own sandbox's (bwrap's), or a fork server's child.
Process = asyncio.subprocess.Process | forking.Forked
_SOCKET_DIR_MAX = 80  # leaves room for "/NNNN-processor/sock" within the 107-byte limit
_TMP_SIZE = 64 << 20  # the private /tmp, like the Docker runtime's
_SYSTEM = ("/usr", "/etc", "/opt")
_MERGED_USR = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_NSINIT = Path(__file__).with_name("nsinit.py")
_FORK_ROOT = ".fork-root"  # in a session's run folder: where keepers make their roots
_INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap), "
                 "or use --runtime docker")


def size_setting(size: int) -> str:
    """A size as :func:`~boride.settings.parse_size` reads it, in its largest whole unit
    (``64m``)."""
    for unit, shift in (("g", 30), ("m", 20), ("k", 10)):
        if size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


@dataclass(frozen=True)
class SandboxLimits:
    """What one component may take. ``memory``: bytes of data (heap and other private memory)
    per process (``RLIMIT_DATA``); ``pids``: processes and threads (``RLIMIT_NPROC``, counted
    per sandbox)."""

    memory: int
    pids: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SandboxLimits:
        """From ``BORIDE_LOCAL_MEMORY`` / ``BORIDE_LOCAL_PIDS`` (defaults 512m and 256)."""
        return cls(settings.get("BORIDE_LOCAL_MEMORY", env), settings.get("BORIDE_LOCAL_PIDS", env))


def short_parent() -> Path:
    """Where a session's socket folder goes when its work folder's path is too long for a
    socket's: the temp folder (``TMPDIR``) when its path is short, else ``/tmp``."""
    tmp = tempfile.gettempdir()
    return Path(tmp if len(tmp) <= _SOCKET_DIR_MAX - 40 else "/tmp")


def reclaim_folders(work_root: Path | None = None) -> list[Path]:
    """Remove the work folders (below ``work_root``, else the temp folder) and socket folders
    that a killed boride left (:mod:`boride.workdirs`: never a living one's); those removed."""
    parents = dict.fromkeys([work_root or Path(tempfile.gettempdir()), short_parent()])
    return [p for parent in parents for p in workdirs.reclaim(parent)]


def _namespaces() -> list[str]:
    # As root no user namespace: nsinit must stay root (in the host's user namespace) to
    # switch the component to its own user, whose files the host then sees as that user's.
    flags = ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
             "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    return flags if os.geteuid() == 0 else ["--unshare-user", *flags]


def _system_binds() -> list[str]:
    """The host's programs and libraries, read-only; /dev, /proc and a private /tmp."""
    args: list[str] = []
    for path in _SYSTEM:
        if os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in _MERGED_USR:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return [*args, "--dev", "/dev", "--proc", "/proc",
            "--perms", "1777", "--size", str(_TMP_SIZE), "--tmpfs", "/tmp"]


@functools.cache
def sandbox_problem() -> str | None:
    """Why components cannot be sandboxed on this machine, or None when they can."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return f"the local runtime needs bubblewrap ('bwrap' not found): {_INSTALL_HINT}"
    try:
        proc = subprocess.run([bwrap, *_namespaces(), *_system_binds(), "true"],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run bwrap: {exc}"
    if proc.returncode != 0:
        why = proc.stderr.strip() or f"exit code {proc.returncode}"
        hint = ("run as root, or enable unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces), "
                "or use --runtime docker")
        return f"the local runtime cannot create its sandbox ({why}): {hint}"
    return None


def _prefix(executable: str) -> str:
    """The installation an executable belongs to: ``/opt/x`` for ``/opt/x/bin/python``."""
    folder = os.path.dirname(executable)
    return os.path.dirname(folder) if os.path.basename(folder) == "bin" else folder


def _outside_system(paths: list[str]) -> list[str]:
    """The paths the system binds do not cover (and never ``/``), without repeats or paths
    inside another one."""
    kept: list[str] = []
    for path in sorted(set(paths), key=len):
        if path == "/" or any(fsutil.is_within(path, root) for root in (*_SYSTEM, *kept)):
            continue
        kept.append(path)
    return kept


@functools.cache
def _python_dirs() -> tuple[str, ...]:
    """boride's Python installation and import path: ``python3`` in a pipeline file is boride's
    interpreter (see forking.component_env). boride's working folder (``sys.path[0]`` under
    ``-m``) is not among them."""
    cwd = os.getcwd()
    dirs = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            _prefix(os.path.realpath(sys.executable))]
    dirs += [p for p in sys.path if p and p != cwd and os.path.isdir(p)]
    return tuple(_outside_system([os.path.abspath(d) for d in dirs]))


def _command_dirs(command: tuple[str, ...], cwd: Path, exe: str | None) -> list[str]:
    """What a component's command needs to be seen: its folder, the folders of absolute paths
    it names (``python3 /x/tool.py``) and the installation of its program."""
    dirs = [str(cwd)]
    dirs += [os.path.dirname(a) for a in command if a.startswith("/") and os.path.isfile(a)]
    if exe is not None:
        dirs += [_prefix(os.path.abspath(exe)), _prefix(os.path.realpath(exe))]
    return dirs


def _closed_to_others(target: str, readonly: list[str]) -> str | None:
    """The first folder on the way to ``target`` that others (nobody) may not enter, counting
    only host folders (those from the outermost read-only bind above it down to it)."""
    above = [d for d in readonly if fsutil.is_within(target, d)]
    start = min(above, key=len) if above else target
    path = Path(target)
    chain = [path, *path.parents]
    for folder in reversed(chain[:len(chain) - len(Path(start).parents)]):
        with contextlib.suppress(OSError):
            if folder.stat().st_mode & 0o005 != 0o005:
                return str(folder)
    return None


def _mount(option: str, path: str) -> list[str]:
    """bwrap options mounting ``path`` at the same place in the sandbox. The folders leading to
    it are made first with ``--dir``: bwrap would make them private to root (0700), which would
    lock the component user out."""
    parent = os.path.dirname(path)
    made = ["--dir", parent] if parent != "/" else []
    return [*made, option, path] if option == "--tmpfs" else [*made, option, path, path]


def _ro_binds(paths: list[str]) -> list[str]:
    return [arg for p in paths if os.path.exists(p) for arg in _mount("--ro-bind", p)]


def template_folder(template: TemplateSource) -> Path:
    """The template's folder on this machine; a :class:`HostFolder` must really lie below its
    root (links resolved) and be a folder."""
    if isinstance(template, Path):
        return template.resolve()
    if isinstance(template, BlobImage):
        raise TemplateRefused(f"the template's files come only as the image {template.image}, "
                              "which the local runtime cannot unpack: use --runtime docker, or "
                              "give the template's folder as a 'path' in the registry file")
    folder = Path(os.path.realpath(template.path))
    if not fsutil.is_within(str(folder), os.path.realpath(template.root)):
        raise TemplateRefused(f"{template.path!r} is not below {template.root}")
    if not folder.is_dir():
        raise TemplateRefused(f"{template.path!r} is not a folder")
    return folder


def template_folder_problem(template: TemplateSource) -> str | None:
    """Why :func:`template_folder` refuses ``template``, or None."""
    try:
        template_folder(template)
    except TemplateRefused as exc:
        return str(exc)
    return None


def _find_executable(command: tuple[str, ...], cwd: Path, env: dict[str, str]) -> str | None:
    exe = command[0]
    if "/" in exe:
        path = cwd / exe
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(exe, path=env["PATH"])


class LocalInstance(Instance):
    """A component's sandboxed process. The watch for its exit is a task the instance owns
    (:meth:`close`, once the process has ended, waits for it)."""

    def __init__(self, component: Component, process: Process,
                 socket_path: Path, log_path: Path, user: tuple[int, int] | None = None) -> None:
        self.component = component
        self.user = user
        self.process = process
        self.socket_path = socket_path
        self.log_path = log_path
        transport = httpx.AsyncHTTPTransport(uds=str(socket_path), verify=plain_http())
        self.client = httpx.AsyncClient(transport=transport,
                                        base_url=f"http://{component.kind.value}",
                                        timeout=None)
        self._tasks = aio.TaskGroup(f"instance {component.name!r}")
        self._exit: asyncio.Task[ExitInfo] | None = None
        self._closed = False

    async def wait_exit(self) -> ExitInfo:
        if self._exit is None:
            if self._closed:  # stopped: the process has ended
                return await self._watch()
            self._exit = self._tasks.start_soon(self._watch(), name="exit watch")
        return await asyncio.shield(self._exit)  # one watch for every waiter

    async def close(self) -> None:
        """Once the process has ended: let the exit watch end too (it is about to; waited
        for, not cancelled, so that no waiter sees a cancellation), then refuse a new one."""
        self._closed = True
        try:
            await self._tasks.join()
        finally:
            await self._tasks.aclose()

    async def _watch(self) -> ExitInfo:
        code = await self.process.wait()
        tail = self.log_tail(LOG_TAIL)
        # no cgroup, no OOM kill: an allocation past RLIMIT_DATA is refused, and what the
        # component printed about it says so (a MemoryError, V8's heap out of memory, ...)
        ran_out = self.memory_limit if diagnose.out_of_memory(tail) else None
        return ExitInfo(code if code >= 0 else None, tail, memory_limit=ran_out)

    def log_tail(self, lines: int = LOG_TAIL) -> list[str]:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                tail = deque(f, maxlen=lines)
        except OSError:
            return []
        return [line.rstrip("\n") for line in tail]


class LocalRuntime(Runtime):
    """Components as local processes, each in its own sandbox; see the module docstring.

    ``limits``: what each component may take (default: :meth:`SandboxLimits.from_env`).
    """

    name = "local"

    def __init__(self, *, limits: SandboxLimits | None = None, fork: bool | None = None) -> None:
        self._limits_problem: str | None = None
        if limits is None:
            try:
                limits = SandboxLimits.from_env(os.environ)
            except ValueError as exc:  # reported by problems(), before anything starts
                self._limits_problem = f"the local runtime's limits: {exc}"
                limits = SandboxLimits(parse_size(DEFAULT_MEMORY), DEFAULT_PIDS)
        self.limits = limits
        self.env = forking.component_env()
        # As root each component runs as a user of its own (its session's UserPool);
        # otherwise as boride's own user (no other choice).
        self.own_users = os.geteuid() == 0
        self._users: dict[str, UserPool] = {}  # session -> its components' users
        self._seq = itertools.count()
        self._roots: dict[str, Path] = {}  # session -> its work folder (area and run below)
        self._areas: dict[str, HostArea] = {}
        self._run_dirs: dict[str, Path] = {}  # session -> folder of sockets and logs
        self._socket_dirs: dict[str, workdirs.OwnedFolder] = {}  # session -> short socket folder
        self._owners: dict[LocalInstance, str] = {}  # running instance -> its session
        self.fork: bool = settings.get("BORIDE_LOCAL_FORK") if fork is None else fork
        self._root: forking.ForkServer | None = None  # while any session has a fork server
        self._forks: dict[str, forking.SessionForks] = {}  # session -> its fork server

    async def problems(self, components: list[Component]) -> list[str]:
        found: list[str] = []
        sandbox = await aio.to_thread(sandbox_problem)  # runs bwrap once: off the loop
        found += [p for p in (sandbox, self._limits_problem) if p is not None]
        for c in components:
            if not c.command:
                found.append(f"{c.kind.value} {c.name!r}: no 'command' to run it locally")
                continue
            cwd = c.cwd or Path.cwd()
            if _find_executable(c.command, cwd, self.env) is None:
                found.append(f"{c.kind.value} {c.name!r}: command {c.command[0]!r} not found "
                             f"(cwd {cwd})")
        return found

    async def identity(self, component: Component, *, skip: Sequence[Path] = ()) -> str | None:
        if not component.command:
            return None
        cwd = component.cwd or Path.cwd()
        return await aio.to_thread(cache.local_identity, component.command, cwd,
                                       skip=skip)

    async def template_problem(self, source: TemplateSource) -> str | None:
        return template_folder_problem(source)

    async def open_workspace(self, session_id: str, template: TemplateSource,
                             root: Path | None, *, area: bool = True,
                             note: Mapping[str, str] | None = None) -> Workspace:
        assert root is not None, "the local runtime's areas are host folders"
        tpl = template_folder(template)
        for sub in ("area", "run"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        # Components must reach their own folders below it; with users of their own, only
        # by name (its list, and every other folder in it, are closed to them).
        os.chmod(root / "area", 0o711 if self.own_users else 0o755)
        folder = (root / "area").resolve()  # (made also without ``area``: it costs nothing)
        run = (root / "run").resolve()
        if len(str(run)) > _SOCKET_DIR_MAX:
            # Unix socket paths are limited to 107 bytes: use a short private folder instead.
            owned = workdirs.OwnedFolder(short_parent())
            run = owned.path
            self._socket_dirs[session_id] = owned
        self._roots[session_id] = root.resolve()
        self._run_dirs[session_id] = run
        (run / _FORK_ROOT).mkdir(mode=0o700, exist_ok=True)
        self._areas[session_id] = HostArea(folder, tpl, own_users=self.own_users)
        self._users[session_id] = UserPool(COMPONENT_UIDS)
        return Workspace(session_id, self._areas[session_id] if area else None)

    def _hidden(self, session_id: str, readonly: list[str]) -> list[str]:
        """Hide the work folder of every session (this one's area is bound again after), then
        bind again what was read-only below it (a component folder holding the work folder)."""
        root = self._roots[session_id]
        mask = str(root.parent)
        if any(fsutil.is_within(d, mask) for d in _SYSTEM + _MERGED_USR):
            mask = str(root)
        # A work folder right below /tmp (boride's default) masks the private /tmp: make it
        # again as _system_binds does, writable by the component.
        tmpfs = ["--perms", "1777", "--size", str(_TMP_SIZE), "--tmpfs", mask] \
            if mask == "/tmp" else _mount("--tmpfs", mask)
        return [*tmpfs,
                *_ro_binds([d for d in readonly if fsutil.is_within(d, mask)])]

    def _check_reachable(self, path: str, readonly: list[str]) -> None:
        closed = _closed_to_others(path, readonly) if self.own_users else None
        if closed is not None:
            raise RuntimeFailure(f"components run as users of their own (uids from "
                                 f"{COMPONENT_UIDS[0]}) when boride runs as root, and they may "
                                 f"not enter {closed}: allow others in (chmod o+rx), or run "
                                 "boride as an ordinary user")

    def _readonly(self, component: Component) -> list[str]:
        """The host folders (and files) ``component``'s sandbox shows read-only."""
        assert component.command
        cwd = component.cwd or Path.cwd()
        exe = _find_executable(component.command, cwd, self.env)
        return _outside_system([*_python_dirs(), str(_NSINIT),
                                *_command_dirs(component.command, cwd, exe)])

    def _mounts(self, workspace: Workspace, component: Component, socket_dir: Path) -> list[str]:
        """The ``bwrap`` mount options that show ``component`` only what it needs (also what
        a fork server's keeper builds the root of a forked component from)."""
        readonly = self._readonly(component)
        args = [*_system_binds(), *_ro_binds(readonly),
                *self._hidden(workspace.session_id, readonly)]
        host = self._areas[workspace.session_id]
        tpl, area = host.template, host.root
        if component.kind in (Kind.PROCESSOR, Kind.TEMPLATE):
            self._check_reachable(tpl, readonly)
            args += _mount("--ro-bind", tpl)
        if component.kind in (Kind.PROCESSOR, Kind.PLUGIN):
            args += _mount("--bind", area)
        return [*args, *_mount("--bind", str(socket_dir))]

    async def expect(self, workspace: Workspace, components: Sequence[Component]) -> None:
        """Give the session its fork server now when some of ``components`` can be forked
        (the SDK is imported while the session gets ready): see :mod:`boride.runtime.forking`."""
        if any(self._forkable(c) for c in components):
            await self._forks_of(workspace)

    def _forkable(self, component: Component) -> bool:
        if not (self.fork and component.fork and component.command):
            return False
        cwd = component.cwd or Path.cwd()
        exe = _find_executable(component.command, cwd, self.env)
        return forking.forkable(component.command, cwd, exe, sys.executable)

    async def _forks_of(self, workspace: Workspace) -> forking.SessionForks:
        """The session's fork server, made on first use by the runtime's fork server process
        (started, or taken: :func:`forking.take`, while any session has one; another one
        when it died)."""
        forks = self._forks.get(workspace.session_id)
        root = self._root
        if root is not None and not root.running():
            log.warning("the fork server ended (exit code %s); starting another",
                        root.process.returncode)
            root = self._root = None
        if forks is not None and forks.root is root:
            return forks
        if root is None:
            root = self._root = forking.take(sys.executable, self.env)
        forks = self._forks[workspace.session_id] = await root.open_session()
        return forks

    async def start(self, workspace: Workspace, component: Component) -> Instance:
        assert component.command, "checked by problems()"
        run = self._run_dirs[workspace.session_id]
        stem = f"{next(self._seq):04d}-{component.kind.value}"
        socket_dir, log_path = run / stem, run / f"{stem}.log"
        socket_dir.mkdir(mode=0o700)
        socket_path = socket_dir / "sock"
        mounts = self._mounts(workspace, component, socket_dir)
        own = self._users[workspace.session_id].take() if self.own_users else None
        try:
            if self._forkable(component):
                request = self._request(component, mounts, socket_path, own, run)
                process: Process = await self._fork(workspace, request, log_path)
            else:
                process = await self._spawn(component, mounts, socket_path, log_path, own)
        except BaseException:
            self._users[workspace.session_id].give_back(own)
            raise
        instance = LocalInstance(component, process, socket_path, log_path, own)
        instance.memory_limit = size_setting(self.limits.memory)
        self._owners[instance] = workspace.session_id
        return instance

    async def _fork(self, workspace: Workspace, request: dict[str, object], log_path: Path
                    ) -> forking.Forked:
        try:
            return await (await self._forks_of(workspace)).spawn(request, log_path)
        except OSError as exc:  # the session's server died: another one, once
            log.warning("session %s: its fork server is gone (%s); starting another",
                        workspace.session_id, exc)
            self._forks.pop(workspace.session_id).close()
            return await (await self._forks_of(workspace)).spawn(request, log_path)

    def _request(self, component: Component, mounts: list[str], socket_path: Path,
                 own: tuple[int, int] | None, run: Path) -> dict[str, object]:
        """What a fork server needs to fork ``component`` (see :mod:`forkserver`)."""
        assert component.command
        return {"argv": list(component.command), "cwd": str(component.cwd or Path.cwd()),
                "env": self.env, "port": component.kind.port, "socket": str(socket_path),
                "uid": own[0] if own else None, "gid": own[1] if own else None,
                "memory": self.limits.memory, "pids": self.limits.pids,
                "mounts": mounts, "new_root": str(run / _FORK_ROOT)}

    async def _spawn(self, component: Component, mounts: list[str], socket_path: Path,
                     log_path: Path, own: tuple[int, int] | None
                     ) -> asyncio.subprocess.Process:
        """Start ``component`` in a sandbox of its own, through nsinit."""
        assert component.command
        user = ["--uid", str(own[0]), "--gid", str(own[1])] if own else []
        argv = [
            "bwrap", *_namespaces(), *mounts, "--chdir", "/",
            sys.executable, "-I", str(_NSINIT),
            "--socket", str(socket_path), "--port", str(component.kind.port),
            "--cwd", str(component.cwd or Path.cwd()), *user,
            "--memory", str(self.limits.memory), "--pids", str(self.limits.pids),
            "--", *component.command,
        ]
        with open(log_path, "wb") as log:
            return await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, start_new_session=True)

    async def stop(self, instance: Instance) -> None:
        assert isinstance(instance, LocalInstance)
        proc = instance.process
        await instance.client.aclose()
        if isinstance(proc, forking.Forked):
            proc.release()  # its keeper kills it at once
            if await aio.race(proc.wait(), timeout=_STOP_GRACE) is None:
                log.warning("component %r: its keeper did not end it; it ends with the "
                            "session's fork server", instance.component.name)
            proc.close()
        elif proc.returncode is None:
            # Closing its stdin tells nsinit to exit; bwrap (PID 1 of the namespace) follows,
            # which kills everything in the namespace.
            if proc.stdin is not None:
                proc.stdin.close()
            if await aio.race(proc.wait(), timeout=_STOP_GRACE) is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                await proc.wait()
        elif proc.stdin is not None:
            proc.stdin.close()
        await instance.close()
        session = self._owners.pop(instance, None)
        if session in self._users:  # (its process has ended: its user is free again)
            self._users[session].give_back(instance.user)
        with contextlib.suppress(FileNotFoundError):
            instance.socket_path.unlink()
        with contextlib.suppress(OSError):
            instance.socket_path.parent.rmdir()

    async def close_workspace(self, workspace: Workspace) -> None:
        forks = self._forks.pop(workspace.session_id, None)
        if forks is not None:
            forks.close()
        if not self._forks and self._root is not None:  # (the last session with one)
            root, self._root = self._root, None
            await root.aclose()
        self._areas.pop(workspace.session_id, None)
        self._users.pop(workspace.session_id, None)
        self._roots.pop(workspace.session_id, None)
        self._run_dirs.pop(workspace.session_id, None)
        short = self._socket_dirs.pop(workspace.session_id, None)
        if short is not None:
            try:
                await aio.to_thread(fsutil.remove_tree, short.path)
            finally:
                short.release()
