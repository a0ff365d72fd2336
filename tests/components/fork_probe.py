"""fork_probe: a cyanprintsdk processor that looks at what it was given by the process it
came from (the fork server's tests).

At its first line it notes whether the SDK was already imported (then it was forked from a
fork server). In its call it writes ``fork-<config.name>.json`` into ``writeDir``: whether it
was preloaded, the processes it sees in ``/proc``, its uid, the mark another probe left on
the SDK's module (``config.name`` is left there by this one), and which of the patterns in
``config.look_for`` (regular expressions) match anywhere in its own memory or environment.
"""

import sys

PRELOADED = "cyanprintsdk.main" in sys.modules

import json  # noqa: E402 - after the look at sys.modules
import os  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import cyanprintsdk.main as sdk  # noqa: E402
from cyanprintsdk.domain.core.cyan_script_model import CyanProcessorInput  # noqa: E402
from cyanprintsdk.domain.core.fs.cyan_fs_helper import CyanFileHelper  # noqa: E402
from cyanprintsdk.domain.processor.output import ProcessorOutput  # noqa: E402
from cyanprintsdk.main import start_processor_with_fn  # noqa: E402


def in_memory(patterns: list[re.Pattern[bytes]]) -> list[str]:
    """The patterns found in this process's readable memory."""
    found: set[str] = set()
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            found.update(p.pattern.decode() for p in patterns if p.search(chunk))
    return sorted(found)


async def process(i: CyanProcessorInput, fs: CyanFileHelper) -> ProcessorOutput:
    config = i.config or {}
    patterns = [re.compile(p.encode()) for p in config.get("look_for", [])]
    environ = "\n".join(f"{k}={v}" for k, v in os.environ.items()).encode()
    report = {
        "preloaded": PRELOADED,
        "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "uid": os.getuid(),
        "dev": os.stat("/dev").st_dev,  # its /dev's file system: its own, or shared
        "mark": getattr(sdk, "boride_mark", None),
        "in_memory": in_memory(patterns),
        "in_environment": sorted(p.pattern.decode() for p in patterns if p.search(environ)),
    }
    sdk.boride_mark = config.get("name")  # type: ignore[attr-defined]
    out = Path(i.write_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"fork-{config.get('name')}.json").write_text(json.dumps(report))
    return ProcessorOutput(directory=i.write_dir)


if __name__ == "__main__":
    start_processor_with_fn(process)
