"""boride's side of the fork servers (:mod:`boride.runtime.forkserver`).

A Python component whose command runs a script with boride's own interpreter need not pay
that interpreter's start and the SDK's import again: the local runtime keeps one fork server
process while it has sessions, which imports the SDK once and forks, for each session, a
server of the session's own (it has seen no other session's request); that one forks the
session's components. The
server's sandbox (:func:`server_sandbox`) shows the host as boride sees it: the server runs
only boride's code, and each child builds a root of its own from the component's own sandbox
binds before any of the component's code runs. Since the server needs nothing of the session,
``boride run`` starts one before it has even loaded itself (:func:`prestart`); the runtime
takes it (:func:`take`).

What boride holds for a forked component (:class:`Forked`) behaves as the process of an
unforked one: it can be waited for and released (the component is killed), and it ends when
boride dies. Only the standard library and boride's settings are imported here (prestart
runs before the rest of boride is loaded).
"""

from __future__ import annotations

import array
import atexit
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boride import settings
from boride.settings import SECRETS

if TYPE_CHECKING:  # (asyncio is imported where it is used: prestart runs before it is loaded)
    import asyncio

FORKSERVER = Path(__file__).with_name("forkserver.py")
HOME = "/tmp/home"  # the components' home, in the sandbox's private /tmp (made by nsinit)
_STOP_GRACE = 5.0
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


def component_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of local components: boride's own (``environ``, default this
    process's) without its secrets (:data:`SECRETS`), with its interpreter first on PATH, so
    that ``python3`` in a pipeline file means the environment boride runs in, and a home of
    their own (the host's is not in the sandbox): a component may write to its home or
    cache, as in a container."""
    env = {k: v for k, v in (os.environ if environ is None else environ).items()
           if k not in SECRETS}
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["HOME"] = HOME
    return env


def server_sandbox() -> list[str]:
    """The ``bwrap`` command line of a fork server: the host's files as boride sees them, its
    own ``/dev`` and ``/proc``, its own network, PID, IPC and UTS namespaces; dying with
    boride. As an ordinary user in a user namespace where it may make namespaces."""
    user = [] if os.geteuid() == 0 else ["--unshare-user", "--cap-add", "ALL"]
    return ["bwrap", *user, "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session",
            "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--chdir", "/"]


def same_interpreter(exe: str, interpreter: str) -> bool:
    """Whether ``exe`` starts ``interpreter`` as it is (the same binary from the same folder,
    so the same installation and virtual environment)."""
    try:
        return (os.path.realpath(exe) == os.path.realpath(interpreter)
                and Path(exe).parent.resolve() == Path(interpreter).parent.resolve())
    except OSError:
        return False


def forkable(command: tuple[str, ...], cwd: Path, exe: str | None, interpreter: str) -> bool:
    """Whether ``command`` (found as ``exe``) is ``interpreter`` running a script file, with no
    interpreter option before it (``python3 -m x``, ``-c``, ``-X``: they start as always)."""
    if exe is None or len(command) < 2 or command[1].startswith("-"):
        return False
    return same_interpreter(exe, interpreter) and (cwd / command[1]).is_file()


class Forked:
    """A forked component, as boride sees it: its control socket says its exit code; closing
    it kills the component. (Made in the event loop: a reader waits for the code.)"""

    def __init__(self, control: socket.socket) -> None:
        import asyncio

        self._control = control
        self._loop = asyncio.get_running_loop()
        self._ended: asyncio.Future[int] = self._loop.create_future()
        self._data = b""
        self.returncode: int | None = None
        self.pid: int | None = None  # the component's, as this machine numbers it, once told
        self._loop.add_reader(control.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            chunk, ancillary, _, _ = self._control.recvmsg(64, socket.CMSG_SPACE(_UCRED.size))
        except BlockingIOError:
            return
        except OSError:
            chunk, ancillary = b"", []
        for level, kind, data in ancillary:
            # the keeper's "pid" line carries the component's process id as credentials,
            # which the kernel numbers in this process's namespace
            # (every later segment carries the keeper's own: only the first counts)
            if ((level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
                    and self.pid is None and chunk.startswith(b"pid")):
                self.pid = _UCRED.unpack(data[:_UCRED.size])[0]
        if chunk:
            self._data += chunk
            return
        self._loop.remove_reader(self._control.fileno())
        words = self._data.split()[-2:]  # ("pid", then "exit N")
        # no code: the fork server ended before its keeper could tell (the session closed)
        ok = len(words) == 2 and words[0] == b"exit" and words[1].lstrip(b"-").isdigit()
        self.returncode = int(words[1]) if ok else 137
        self._ended.set_result(self.returncode)

    async def wait(self) -> int:
        import asyncio

        return await asyncio.shield(self._ended)

    def release(self) -> None:
        """Tell the keeper to end the component (it kills it at once)."""
        with contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if not self._ended.done():
            self._loop.remove_reader(self._control.fileno())
        self._control.close()


class _Channel:
    """A request socket to a fork server (``SOCK_SEQPACKET``: one message per request, with
    the descriptors it hands over); one request at a time."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._lock: asyncio.Lock | None = None  # (made in the event loop)

    async def send(self, request: dict[str, Any], fds: list[int]) -> None:
        """:class:`OSError` when the server is gone."""
        import asyncio

        body = json.dumps(request).encode()
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        loop = asyncio.get_running_loop()
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            while True:
                try:
                    self.sock.sendmsg([body], rights)
                    return
                except BlockingIOError:  # the server is still importing: wait for room
                    writable: asyncio.Future[None] = loop.create_future()
                    loop.add_writer(self.sock, _set, writable)
                    try:
                        await writable
                    finally:
                        loop.remove_writer(self.sock)


class SessionForks:
    """A session's fork server (forked from the process's :class:`ForkServer`): it forks that
    session's components and nothing else."""

    def __init__(self, channel: _Channel, root: ForkServer) -> None:
        self._channel = channel
        self.root = root

    async def spawn(self, request: dict[str, Any], log_path: Path) -> Forked:
        """Ask for one component (``request``: see :mod:`forkserver`); its output goes to
        ``log_path``. :class:`OSError` when the server is gone."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            await self._channel.send(request, [log, theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            os.close(log)
            theirs.close()
        ours.setblocking(False)
        return Forked(ours)

    def close(self) -> None:
        """It ends, with the components it forked that still run."""
        self._channel.sock.close()


class ForkServer:
    """A running fork server process, started with ``env`` by ``interpreter``: it forks a
    server per session (:meth:`open_session`), which forks the session's components."""

    def __init__(self, process: subprocess.Popen[bytes], requests: socket.socket,
                 interpreter: str, env: dict[str, str]) -> None:
        self.process = process
        self.interpreter = interpreter
        self.env = env
        self._channel = _Channel(requests)

    @classmethod
    def launch(cls, interpreter: str, env: dict[str, str], log_path: str = os.devnull
               ) -> ForkServer:
        """Start one (it imports the SDK while boride goes on; requests wait for it)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    [*server_sandbox(), interpreter, str(FORKSERVER)], stdin=theirs.fileno(),
                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(process, ours, interpreter, env)

    def running(self) -> bool:
        return self.process.poll() is None

    async def open_session(self) -> SessionForks:
        """A server of its own for a session. :class:`OSError` when this one is gone."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            await self._channel.send({"session": True}, [theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return SessionForks(_Channel(ours), self)

    async def aclose(self) -> None:
        """Stop it: its standard input closes, and its sandbox, with every session's server
        and forked component still in it, ends."""
        import asyncio

        self._channel.sock.close()
        deadline = time.monotonic() + _STOP_GRACE
        while self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.process.poll() is None:
            self.kill()

    def close_now(self) -> None:
        """Stop it without waiting (it ends once it reads that its standard input closed)."""
        self._channel.sock.close()

    def kill(self) -> None:
        """Kill it now and wait for its sandbox (bwrap, whose death takes the rest)."""
        self._channel.sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 9)
        self.process.wait()


_spare: ForkServer | None = None  # started by prestart, for the first session to take


def prestart() -> None:
    """Start a fork server now, before boride has loaded the rest of itself, for the first
    session of this process to take; nothing when forking is off or bubblewrap is missing
    (the session then starts one, or says why it cannot)."""
    global _spare
    try:
        wanted = bool(settings.get("BORIDE_LOCAL_FORK"))
    except settings.SettingError:  # reported as the command starts
        return
    if _spare is None and wanted and shutil.which("bwrap") is not None:
        with contextlib.suppress(OSError):
            _spare = ForkServer.launch(sys.executable, component_env())
            atexit.register(_drop_spare)


def _drop_spare() -> None:
    """At exit, a fork server no session took (a refused command line, a failed start) is
    killed and waited for: nothing of boride outlives it."""
    global _spare
    spare, _spare = _spare, None
    if spare is not None:
        spare.kill()


def take(interpreter: str, env: dict[str, str]) -> ForkServer:
    """A fork server for a session: the one prestarted, when it runs ``interpreter`` with
    ``env``, else a new one."""
    global _spare
    spare, _spare = _spare, None
    if spare is not None:
        if (spare.interpreter, spare.env) == (interpreter, env) and spare.process.poll() is None:
            return spare
        spare.close_now()
    return ForkServer.launch(interpreter, env)


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
