"""The first process of a local component's sandbox, between bubblewrap and the component.

Run by the local runtime as ``bwrap ... python -I .../nsinit.py ...`` inside the sandbox (own
network, PID, IPC and mount namespaces; bwrap has brought loopback up and is PID 1):

* starts the component as the sandbox user (when started as root: setuid to ``--uid``, in a user
  namespace of its own), with ``RLIMIT_NPROC``/``RLIMIT_DATA`` limits and ``no_new_privs``,
  its ``$HOME`` made first (owned by that user, in the sandbox's private ``/tmp``);
* forwards connections from a Unix socket (in the component's own socket folder, bound from the
  host) to ``127.0.0.1:<port>`` inside the sandbox;
* exits with the component's exit code when it ends, and as soon as its standard input closes:
  boride holds the other end, so when boride stops it (or dies in any way) this exits, bwrap
  (PID 1) follows, and the kernel kills every process left in the PID namespace.

Only the standard library is used here; it must start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import os
import resource
import signal
import subprocess
import sys

_CLONE_NEWUSER = 0x10000000
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38


# The C library, loaded here rather than in the child between fork and exec.
_LIBC = ctypes.CDLL(None, use_errno=True)


def _libc_call(name: str, *args: int) -> None:
    if getattr(_LIBC, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def become(uid: int, gid: int) -> None:
    """Switch to ``uid``/``gid`` (from root), in a user namespace of this process's own.

    The own user namespace makes ``RLIMIT_NPROC`` count this component's processes only
    (process counts are kept per user namespace), not every process of ``uid`` on the machine.
    """
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _libc_call("prctl", _PR_SET_DUMPABLE, 1, 0, 0, 0)  # else /proc/self/*_map stay root's
    _libc_call("unshare", _CLONE_NEWUSER)
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def confine(user: tuple[int, int] | None, memory: int, pids: int) -> None:
    """Run in the component's process just before it starts (``preexec_fn``)."""
    try:
        if user is not None:
            become(*user)
        home = os.environ.get("HOME", "")
        if home.startswith("/tmp/"):  # the sandbox's own /tmp: made here, as the component
            os.makedirs(home, mode=0o700, exist_ok=True)
        resource.setrlimit(resource.RLIMIT_NPROC, (pids, pids))
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
        _libc_call("prctl", _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    except OSError as exc:  # the parent only learns that preexec_fn failed: say why here
        os.write(2, f"boride: {exc}\n".encode())
        raise


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _forward(port: int, client_r: asyncio.StreamReader,
                   client_w: asyncio.StreamWriter) -> None:
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        client_w.close()  # not listening yet: the caller sees a closed connection and retries
        return
    try:
        await asyncio.gather(_pump(client_r, server_w), _pump(server_r, client_w))
    finally:
        for w in (server_w, client_w):
            w.close()


class _Ends(asyncio.Protocol, asyncio.SubprocessProtocol):
    """Sets ``ended`` when the component exits, or when this one's standard input closes
    (no task needed to wait for either: boride's own helpers are not importable here)."""

    def __init__(self, ended: asyncio.Future[None]) -> None:
        self.ended = ended

    def _end(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    def process_exited(self) -> None:
        self._end()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    exited, released = loop.create_future(), loop.create_future()
    user = (args.uid, args.gid) if args.uid is not None else None
    # cwd is entered before the switch of user: a folder only root may enter still works.
    child, _ = await loop.subprocess_exec(
        lambda: _Ends(exited), *args.command, cwd=args.cwd, stdin=subprocess.DEVNULL,
        stdout=None, stderr=None,
        preexec_fn=functools.partial(confine, user, args.memory, args.pids))
    server = await asyncio.start_unix_server(
        lambda r, w: _forward(args.port, r, w), path=args.socket)
    os.chmod(args.socket, 0o600)
    await loop.connect_read_pipe(lambda: _Ends(released), sys.stdin)
    await asyncio.wait([exited, released], return_when=asyncio.FIRST_COMPLETED)
    server.close()
    code = child.get_returncode()
    if code is None:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        code = 0
    else:
        code = code if code >= 0 else 128 - code
    # Leave at once: tearing the event loop down would only cancel forwarders noisily; bwrap
    # (PID 1) exits with us and the kernel ends everything else in the namespace.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="boride-nsinit")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cwd", required=True)
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    parser.add_argument("--memory", type=int, required=True)
    parser.add_argument("--pids", type=int, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    return args


def main() -> None:
    args = _arguments()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failure = {FileNotFoundError: 127, PermissionError: 126}
    try:
        code = asyncio.run(serve(args))
    except (FileNotFoundError, PermissionError) as exc:
        print(f"boride: cannot start {args.command[0]!r}: {exc.strerror}", file=sys.stderr,
              flush=True)
        code = failure[type(exc)]
    except subprocess.SubprocessError as exc:  # confine() failed in the child
        print(f"boride: cannot confine {args.command[0]!r}: {exc}", file=sys.stderr, flush=True)
        code = 125
    sys.stdout.flush()
    os._exit(code)

if __name__ == "__main__":
    main()
