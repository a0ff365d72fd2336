"""boride's side of a session's fork server (:mod:`boride.runtime.forkserver`).

A Python component whose command runs a script with boride's own interpreter need not pay
that interpreter's start and the SDK's import again: the local runtime starts one fork server
per session (when the session's components are known, :meth:`LocalRuntime.expect`), in a
sandbox showing what all of them may need, and asks it for each component. What boride holds
for a forked component (:class:`Forked`) behaves as the process of an unforked one: it can be
waited for and released (the component is killed), and it ends when boride dies.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from boride import aio

FORKSERVER = Path(__file__).with_name("forkserver.py")
NEW_ROOT = "/.boride-root"  # an empty folder of a server's sandbox: each keeper's root goes there
_STOP_GRACE = 5.0


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
        self._control = control
        self._loop = asyncio.get_running_loop()
        self._ended: asyncio.Future[int] = self._loop.create_future()
        self._data = b""
        self.returncode: int | None = None
        self._loop.add_reader(control.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            chunk = self._control.recv(64)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self._data += chunk
            return
        self._loop.remove_reader(self._control.fileno())
        words = self._data.split()
        # no code: the fork server ended before its keeper could tell (the session closed)
        ok = len(words) == 2 and words[1].lstrip(b"-").isdigit()
        self.returncode = int(words[1]) if ok else 137
        self._ended.set_result(self.returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._ended)

    def release(self) -> None:
        """Tell the keeper to end the component (it kills it at once)."""
        with contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if not self._ended.done():
            self._loop.remove_reader(self._control.fileno())
        self._control.close()


class ForkServer:
    """A running fork server: ``covers`` the folders its sandbox shows."""

    def __init__(self, process: asyncio.subprocess.Process, requests: socket.socket,
                 covers: frozenset[str]) -> None:
        self.process = process
        self.covers = covers
        self._requests = requests
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, sandbox: list[str], interpreter: str, env: dict[str, str],
                    log_path: Path, covers: Iterable[str]) -> ForkServer:
        """Start it: ``sandbox`` is its bwrap command line (without the program)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with open(log_path, "wb") as log:
                process = await asyncio.create_subprocess_exec(
                    *sandbox, interpreter, str(FORKSERVER), stdin=theirs.fileno(), stdout=log,
                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(process, ours, frozenset(covers))

    async def spawn(self, request: dict[str, Any], log_path: Path) -> Forked:
        """Ask for one component (``request``: see :mod:`forkserver`); its output goes to
        ``log_path``. :class:`OSError` when the server is gone."""
        body = json.dumps(request).encode()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            async with self._lock:
                await self._send(body, [log, theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            os.close(log)
            theirs.close()
        ours.setblocking(False)
        return Forked(ours)

    async def _send(self, body: bytes, fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        while True:
            try:
                self._requests.sendmsg([body], rights)
                return
            except BlockingIOError:  # the server is still importing: wait for room
                writable: asyncio.Future[None] = loop.create_future()
                loop.add_writer(self._requests, _set, writable)
                try:
                    await writable
                finally:
                    loop.remove_writer(self._requests)

    async def aclose(self) -> None:
        """Stop it: its standard input closes, and its sandbox, with every forked component
        still in it, ends."""
        self._requests.close()
        if await aio.race(self.process.wait(), timeout=_STOP_GRACE) is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 9)
            await self.process.wait()


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
