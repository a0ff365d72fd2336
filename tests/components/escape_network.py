"""escape_network: a cyanprintsdk processor that tries to reach what it must not.

``config.tcp``: ``[[host, port], ...]`` to connect to (boride's API, other host services).
It also looks for the Unix sockets of the other components of its session (in the session's
``run`` folder, two levels above its writeDir, and in ``/tmp/boride-*``, where boride puts them
when that path is too long) and connects to each, sending an HTTP request.

It writes ``network-report.json`` into ``writeDir``: ``{"tcp": {"host:port": result},
"unix": {path: result}}``, result ``"connected"`` or the error; it never fails the call.
"""

import json
import socket
import stat
from pathlib import Path

from cyanprintsdk.domain.core.cyan_script_model import CyanProcessorInput
from cyanprintsdk.domain.core.fs.cyan_fs_helper import CyanFileHelper
from cyanprintsdk.domain.processor.output import ProcessorOutput
from cyanprintsdk.main import start_processor_with_fn

REPORT = "network-report.json"


def try_connect(family: int, address: object) -> str:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(address)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            first = s.recv(100).split(b"\r\n")[0].decode(errors="replace")
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return f"connected ({first})"


def sockets(write_dir: Path) -> list[Path]:
    roots = [write_dir.parent.parent / "run", *Path("/tmp").glob("boride-*")]
    found = []
    for root in roots:
        try:
            found += [p for p in root.rglob("*") if stat.S_ISSOCK(p.lstat().st_mode)]
        except OSError as e:
            print(f"cannot list {root}: {e}", flush=True)  # not there, or not ours to see
    return found


async def process(i: CyanProcessorInput, fs: CyanFileHelper) -> ProcessorOutput:
    config = i.config if isinstance(i.config, dict) else {}
    tcp = {f"{h}:{p}": try_connect(socket.AF_INET, (h, int(p))) for h, p in config.get("tcp", [])}
    unix = {str(p): try_connect(socket.AF_UNIX, str(p)) for p in sockets(Path(i.write_dir))}
    Path(i.write_dir, REPORT).write_text(json.dumps({"tcp": tcp, "unix": unix}))
    return ProcessorOutput(directory=i.write_dir)


if __name__ == "__main__":
    start_processor_with_fn(process)
