"""probe_api: a processor that tries to drive boride's own API from inside its container
(issue 8 item 5: components must not be able to call the coordinator).

``config``:
  ``port``: int            the port boride serves on
  ``hosts``: [str]         addresses to try (the component adds its default gateway, read
                           from /proc/net/route, first)
  ``token``: str | null    sent as ``Authorization: Bearer`` on a second round of every call
  ``calls``: [[method, path, body | null]]   made in this order, for each host

It writes ``probe.json`` into ``writeDir``: one object per call, ``{"host", "method",
"path", "auth", "status", "title", "error"}`` (``status`` null and ``error`` set when the
connection failed), and never fails itself.
"""

import asyncio
import json
import socket
import struct
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cyanprintsdk.domain.core.cyan_script_model import CyanProcessorInput
from cyanprintsdk.domain.core.fs.cyan_fs_helper import CyanFileHelper
from cyanprintsdk.domain.processor.output import ProcessorOutput
from cyanprintsdk.main import start_processor_with_fn


def default_gateway() -> str | None:
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
    return None


def call(host: str, port: int, method: str, path: str, body: Any, token: str | None
         ) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{host}:{port}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    out: dict[str, Any] = {"host": host, "method": method, "path": path, "auth": bool(token),
                           "status": None, "title": None, "error": None}
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            out["status"] = response.status
            response.read()
    except urllib.error.HTTPError as exc:
        out["status"] = exc.code
        try:
            out["title"] = json.loads(exc.read()).get("title")
        except (ValueError, AttributeError):
            out["title"] = None
    except (OSError, ValueError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def probe(hosts: list[str], port: int, calls: list[Any], token: str | None
          ) -> list[dict[str, Any]]:
    results = []
    for host in hosts:
        for auth in (None, token) if token else (None,):
            for method, path, body in calls:
                results.append(call(host, port, method, path, body, auth))
    return results


async def process(i: CyanProcessorInput, fs: CyanFileHelper) -> ProcessorOutput:
    config = i.config if isinstance(i.config, dict) else {}
    gateway = default_gateway()
    hosts = list(dict.fromkeys(([gateway] if gateway else [])
                               + [str(h) for h in config.get("hosts") or []]))
    results = await asyncio.to_thread(probe, hosts, int(config.get("port", 9000)),
                                      list(config.get("calls") or []), config.get("token"))
    Path(i.write_dir, "probe.json").write_text(json.dumps(results, indent=1))
    return ProcessorOutput(directory=i.write_dir)


if __name__ == "__main__":
    start_processor_with_fn(process)
