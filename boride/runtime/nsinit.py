"""The first process inside a local component's private namespaces.

Run by the local runtime as ``unshare ... --pid --fork python -m boride.runtime.nsinit ...``, so
this is PID 1 of a fresh PID namespace with its own network (and mount) namespace:

* brings the loopback interface up, so the component can bind ``0.0.0.0:<port>`` as if alone;
* optionally re-mounts paths read-only (the template, for processors);
* starts the component and forwards connections from a Unix socket (in the session's folder, on
  the host's file system) to ``127.0.0.1:<port>`` inside the namespace;
* exits with the component's exit code when it ends, and as soon as its standard input closes:
  boride holds the other end, so when boride stops it (or dies in any way) this exits. Being
  PID 1, its exit makes the kernel kill every process left in the namespace: nothing survives.

Only the standard library is used here; it must start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import signal
import socket
import struct
import sys

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_NOATIME = 1024
_MS_NODIRATIME = 2048
_MS_BIND = 4096
_MS_REC = 16384
_MS_RELATIME = 1 << 21
# statvfs f_flag bits (ST_*) and the mount flag (MS_*) each one must be carried over as: a
# read-only remount inside a user namespace must keep the flags the outer mount locked.
_ST_TO_MS = {1: _MS_RDONLY, 2: _MS_NOSUID, 4: _MS_NODEV, 8: _MS_NOEXEC, 1024: _MS_NOATIME,
             2048: _MS_NODIRATIME, 4096: _MS_RELATIME}


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def bind_readonly(path: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_void_p]
    target = os.fsencode(path)
    if libc.mount(target, target, None, _MS_BIND | _MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind mount of {path}: {os.strerror(err)}")
    kept = 0
    for st, ms in _ST_TO_MS.items():
        if os.statvfs(path).f_flag & st:
            kept |= ms
    flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | kept
    if libc.mount(None, target, None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"read-only remount of {path}: {os.strerror(err)}")


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


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def serve(args: argparse.Namespace) -> int:
    child = await asyncio.create_subprocess_exec(
        *args.command, cwd=args.cwd, stdin=asyncio.subprocess.DEVNULL)
    server = await asyncio.start_unix_server(
        lambda r, w: _forward(args.port, r, w), path=args.socket)
    os.chmod(args.socket, 0o600)
    exited = asyncio.ensure_future(child.wait())
    released = asyncio.ensure_future(_stdin_closed())
    await asyncio.wait([exited, released], return_when=asyncio.FIRST_COMPLETED)
    server.close()
    if not exited.done():
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        code = 0
    else:
        code = exited.result()
        code = code if code >= 0 else 128 - code
    # Leave at once: tearing the event loop down would only cancel forwarders noisily, and the
    # kernel ends everything else in the namespace when PID 1 exits.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    parser = argparse.ArgumentParser(prog="boride-nsinit")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cwd", required=True)
    parser.add_argument("--readonly", action="append", default=[])
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # PID 1 ignores it otherwise
    try:
        loopback_up()
        for path in args.readonly:
            bind_readonly(path)
    except OSError as exc:
        print(f"boride: cannot isolate the component: {exc}", file=sys.stderr, flush=True)
        sys.exit(125)
    try:
        code = asyncio.run(serve(args))
    except FileNotFoundError as exc:
        print(f"boride: cannot start {args.command[0]!r}: {exc.strerror}", file=sys.stderr,
              flush=True)
        code = 127
    except PermissionError as exc:
        print(f"boride: cannot start {args.command[0]!r}: {exc.strerror}", file=sys.stderr,
              flush=True)
        code = 126
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
