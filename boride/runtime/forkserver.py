"""A session's fork server: Python components forked from an interpreter that has already
imported the component SDK.

Started by the local runtime (:mod:`boride.runtime.forking`) as ``bwrap ... python
forkserver.py`` in a sandbox that shows the host's files as boride sees them (it runs only
this code). It imports the SDK once (``cyanprintsdk``, when installed), then reads requests
from its standard input, a ``SOCK_SEQPACKET`` socket: a session's (one descriptor, the
session's socket), for which it forks a server of that session's own (:func:`serve` again,
on that socket), which has seen no other session's request; and, on a session's socket, a
component's: a JSON body with two descriptors, the component's log file and its control
socket. For each component it forks a *keeper* (the role of :mod:`nsinit`), which

* makes its own mount, network, IPC, UTS and PID namespaces and brings loopback up;
* forks the component (PID 1 of the new PID namespace), which builds, from the request's
  ``bwrap`` mount options, a new root holding only what that component's own sandbox would
  hold (:func:`build_root`: a fresh tmpfs, its ``/proc``, ``pivot_root``, the old root
  detached), is confined as :func:`nsinit.confine` confines a component (its own user,
  rlimits, ``no_new_privs``; every capability dropped) and runs the script as ``__main__``
  with its argv, cwd and environment;
* forwards the component's Unix socket to its port, and reports its exit code on the control
  socket; when that socket closes (boride stopped it, or died) it kills the component.

The server itself never runs a component's code and holds nothing but what every component
of the session gets anyway (its environment). When its standard input closes it exits; bwrap
(PID 1 of its namespace) follows and the kernel kills every keeper and component below.
Only the standard library is used here, plus :mod:`nsinit` from this folder.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import gc
import importlib.util
import json
import os
import signal
import socket
import struct
import sys
import traceback
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    sys.path.pop(0)  # this folder is boride's, not the components': never import from it

_spec = importlib.util.spec_from_file_location("_boride_nsinit", os.path.join(_HERE, "nsinit.py"))
assert _spec is not None and _spec.loader is not None
nsinit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nsinit)

# The SDKs' entry modules, imported when installed (cyanprintsdk's server is aiohttp's, all
# of which that import loads: nothing more is imported when a component starts or answers).
PRELOAD = ("cyanprintsdk.main",)

_CLONE = {"ns": 0x20000, "net": 0x40000000, "pid": 0x20000000, "ipc": 0x08000000,
          "uts": 0x04000000}
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT = 1, 2, 4, 32
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_MNT_DETACH = 2
_KEPT_FLAGS = 2 | 4 | 8 | 1024 | 2048  # nosuid, nodev, noexec, noatime, nodiratime (ST_ = MS_)
_PR_SET_PDEATHSIG, _PR_SET_NAME, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 1, 15, 47, 4
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 1
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
              "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx", "core": "/proc/kcore"}
_LIBC = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    _check(_LIBC.mount(source.encode() if source else None, target.encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None), f"mount {target}")


def _bind(source: str, target: str, *, readonly: bool) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "a").close()
    _mount(source, target, None, _MS_BIND | _MS_REC)
    if readonly:
        # the flags the source has must stay (in a user namespace they are locked)
        kept = os.statvfs(source).f_flag & _KEPT_FLAGS
        _mount(None, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | kept)


def _dev(target: str) -> None:
    """A ``/dev`` of the component's own, as bwrap's ``--dev`` makes one: a tmpfs holding
    the harmless devices (bound from the server's), ``pts``, an empty ``shm`` and the usual
    links."""
    os.makedirs(target, exist_ok=True)
    _mount("tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755")
    for name in _DEVICES:
        _bind(f"/dev/{name}", f"{target}/{name}", readonly=False)
    _bind("/dev/pts", f"{target}/pts", readonly=False)
    os.mkdir(f"{target}/shm")
    for name, to in _DEV_LINKS.items():
        os.symlink(to, f"{target}/{name}")


def build_root(options: list[str], root: str) -> None:
    """Mount, below ``root`` (an empty folder of the server's sandbox), what bwrap's mount
    ``options`` describe (those the component's own sandbox would get), then make it the
    root. Run in the component's process, the first of its PID namespace (``--proc``
    mounts that namespace's processes; it must be mounted while the old root, with a
    ``/proc`` fully visible, is still there)."""
    _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755")
    perms, size = "0755", None
    it = iter(options)
    for opt in it:
        if opt in ("--ro-bind", "--bind"):
            src, dst = next(it), next(it)
            _bind(src, root + dst, readonly=opt == "--ro-bind")
        elif opt == "--dir":
            os.makedirs(root + next(it), exist_ok=True)
        elif opt == "--perms":
            perms = next(it)
            continue
        elif opt == "--size":
            size = next(it)
            continue
        elif opt == "--tmpfs":
            dst = root + next(it)
            os.makedirs(dst, exist_ok=True)
            data = f"mode={perms}" + (f",size={size}" if size else "")
            _mount("tmpfs", dst, "tmpfs", _MS_NOSUID | _MS_NODEV, data)
        elif opt == "--symlink":
            target, dst = next(it), next(it)
            os.symlink(target, root + dst)
        elif opt == "--dev":
            _dev(root + next(it))
        elif opt == "--proc":
            dst = root + next(it)
            os.makedirs(dst, exist_ok=True)
            _mount("proc", dst, "proc", _MS_NOSUID | _MS_NODEV)
        elif opt == "--chdir":
            next(it)
        elif opt.startswith("--unshare") or opt in ("--die-with-parent", "--new-session"):
            pass
        else:
            raise OSError(0, f"fork server: unknown sandbox option {opt!r}")
        perms, size = "0755", None
    os.chdir(root)
    _check(_LIBC.syscall(_PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    _check(_LIBC.umount2(b".", _MNT_DETACH), "umount the old root")
    os.chdir("/")


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", _ioctl(s, _SIOCGIFFLAGS, request))[1]
        _ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | _IFF_UP, b""))


def _ioctl(s: socket.socket, op: int, arg: bytes) -> bytes:
    import fcntl
    return fcntl.ioctl(s, op, arg)


def own_user_namespace() -> None:
    """A user namespace of this process's own, its user mapped to itself: its processes are
    counted apart (``RLIMIT_NPROC``) and it holds no capability in the server's namespace."""
    uid, gid = os.getuid(), os.getgid()
    _check(_LIBC.unshare(0x10000000), "unshare the user namespace")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def drop_capabilities() -> None:
    """Every capability, also the ambient ones (the server's user may hold some in its user
    namespace when boride is not root)."""
    _check(_LIBC.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "ambient caps")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: all empty
    _check(_LIBC.capset(header, data), "capset")


def run_component(req: dict[str, Any], log_fd: int) -> None:
    """In the component's process (PID 1 of its namespace): its root (which becomes its
    keeper's too: they share the mount namespace), then confined, its script run as the
    interpreter would. Ends with SystemExit, as the interpreter ends a script."""
    os.setsid()
    try:
        _check(_LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        build_root(req["mounts"], req["new_root"])
    except OSError as exc:
        os.write(log_fd, f"boride: cannot start the forked component: {exc}\n".encode())
        os._exit(125)
    os.dup2(log_fd, 1)  # (first: the log may have been given descriptor 0)
    os.dup2(log_fd, 2)
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])  # before the switch of user: as nsinit does
    if req.get("uid") is not None:
        user = (req["uid"], req["gid"])
    else:  # boride's own user, in a user namespace of the component's own (as nsinit's)
        user = None
        own_user_namespace()
    try:
        nsinit.confine(user, req["memory"], req["pids"])  # (it says why it failed)
        drop_capabilities()
    except OSError:
        os._exit(125)
    script = req["argv"][1]
    # its name in ps and top (its command line stays the server's)
    _LIBC.prctl(_PR_SET_NAME, os.path.basename(script).encode()[:15], 0, 0, 0)
    sys.argv = req["argv"][1:]
    sys.path[0:0] = [os.path.dirname(os.path.realpath(script))]
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                      closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                      closefd=False)
    import runpy
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit:
        raise
    except BaseException as exc:  # as the interpreter prints it, without this module's frames
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename in (__file__, runpy.__file__):
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb)
        raise SystemExit(1) from None
    raise SystemExit(0)


def _end(future: asyncio.Future[str], why: str) -> None:
    if not future.done():
        future.set_result(why)


async def _keep(req: dict[str, Any], ctl: socket.socket, child: int) -> int:
    """Forward the component's socket to its port until it exits or ``ctl`` closes."""
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    pidfd = os.pidfd_open(child)
    loop.add_reader(pidfd, _end, ended, "exited")
    loop.add_reader(ctl.fileno(), _end, ended, "released")
    server = await asyncio.start_unix_server(
        lambda r, w: nsinit._forward(req["port"], r, w), path=req["socket"])
    os.chmod(req["socket"], 0o600)
    why = await ended
    server.close()
    if why == "released":
        os.kill(child, signal.SIGKILL)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def keeper(req: dict[str, Any], log_fd: int, ctl: socket.socket) -> None:
    """In the forked keeper: namespaces, the component's root, then the component."""
    code = 125
    _LIBC.prctl(_PR_SET_NAME, b"boride-keeper", 0, 0, 0)  # (its name in ps and top)
    try:
        _check(_LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        flags = 0
        for name in _CLONE.values():
            flags |= name
        _check(_LIBC.unshare(flags), "unshare")
        _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
        loopback_up()
        child = os.fork()
        if child == 0:  # (never back here but through SystemExit: the keeper's code is not its)
            ctl.close()
            try:
                run_component(req, log_fd)
            except SystemExit:
                raise
            except BaseException:  # what the interpreter would print, from its own stderr
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(1)
        os.close(log_fd)
        _tell_pid(ctl, child)
        code = asyncio.run(_keep(req, ctl, child))
        code = code if code >= 0 else 128 - code
    except SystemExit:
        raise
    except BaseException as exc:
        os.write(log_fd, f"boride: cannot start the forked component: {exc}\n".encode())
    _report(ctl, code)
    os._exit(0)


def _tell_pid(ctl: socket.socket, child: int) -> None:
    """Send boride the component's process id, as credentials: the kernel gives it to boride
    in boride's numbering (a keeper may name a process of its namespace: CAP_SYS_ADMIN)."""
    creds = struct.pack("iII", child, os.getuid(), os.getgid())
    with contextlib.suppress(OSError):  # (then boride only lacks the number)
        ctl.sendmsg([b"pid\n"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)])


def _report(ctl: socket.socket, code: int) -> None:
    with contextlib.suppress(OSError):  # (boride stopped listening: nobody to tell)
        ctl.sendall(f"exit {code}\n".encode())


def _receive(server: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    fds = array.array("i")
    msg, ancdata, _, _ = server.recvmsg(1 << 20, socket.CMSG_SPACE(2 * fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if not msg:
        for fd in fds:
            os.close(fd)
        return None
    return json.loads(msg), list(fds)


def serve(server: socket.socket) -> None:
    """Answer the requests on ``server``: a component to fork (two descriptors: its log and
    its control socket), or, from the first server only, a session's (``{"session": true}``
    and its socket): a server of its own for that session's components, forked from this
    one, which has never seen another session's request."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # keepers are reaped by the kernel
    while (got := _receive(server)) is not None:
        req, fds = got
        if req.get("session") is True and len(fds) == 1:
            _fork_session(server, fds[0])
            continue
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            continue
        log_fd, ctl_fd = fds
        pid = os.fork()
        if pid == 0:
            server.close()
            keeper(req, log_fd, socket.socket(fileno=ctl_fd))
        os.close(log_fd)
        os.close(ctl_fd)
        del req


def _fork_session(server: socket.socket, fd: int) -> None:
    """A session's own server (it ends when its socket closes, or when this one dies)."""
    if os.fork() == 0:
        server.close()
        os.dup2(os.open("/dev/null", os.O_RDONLY), 0)  # (descriptors given later: never 0)
        _check(_LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        _LIBC.prctl(_PR_SET_NAME, b"boride-forksess", 0, 0, 0)
        serve(socket.socket(fileno=fd))
        os._exit(0)
    os.close(fd)


def preload() -> None:
    for name in PRELOAD:
        if importlib.util.find_spec(name.partition(".")[0]) is None:
            continue
        try:
            __import__(name)
        except Exception as exc:  # the components then import it themselves
            print(f"boride fork server: cannot preload {name}: {exc}", file=sys.stderr)


def main() -> None:
    server = socket.socket(fileno=0)
    _LIBC.prctl(_PR_SET_NAME, b"boride-forksrv", 0, 0, 0)
    gc.disable()  # (nothing the import makes is garbage worth a collection)
    preload()
    # What the import made is never collected again: a child's collections then never touch
    # (and so never copy) the pages the server shares with it.
    gc.freeze()
    gc.enable()
    sys.stdout.flush()
    sys.stderr.flush()
    serve(server)
    os._exit(0)


if __name__ == "__main__":
    main()
