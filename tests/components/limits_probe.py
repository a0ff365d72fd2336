"""limits_probe: a cyanprintsdk processor that tries to take more than its share.

``config.processes``: how many processes to start at once (each waits on a pipe, so they all
live until the probe ends them); ``config.allocate_mb``: MiB to allocate in one piece.
It writes ``limits-report.json`` into ``writeDir``: ``{"started": <processes it got>,
"fork_error": <why it stopped, or null>, "allocated": true | false}`` and never fails the call.
"""

import json
import os
from pathlib import Path

from cyanprintsdk.domain.core.cyan_script_model import CyanProcessorInput
from cyanprintsdk.domain.core.fs.cyan_fs_helper import CyanFileHelper
from cyanprintsdk.domain.processor.output import ProcessorOutput
from cyanprintsdk.main import start_processor_with_fn

REPORT = "limits-report.json"


def spawn(count: int) -> tuple[int, str | None]:
    r, w = os.pipe()
    children, error = [], None
    try:
        for _ in range(count):
            pid = os.fork()
            if pid == 0:
                os.close(w)
                os.read(r, 1)  # returns when the probe closes its end
                os._exit(0)
            children.append(pid)
    except OSError as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        os.close(w)
        os.close(r)
        for pid in children:
            os.waitpid(pid, 0)
    return len(children), error


def allocate(mb: int) -> bool:
    try:
        block = bytearray(mb << 20)
    except MemoryError:
        return False
    del block
    return True


async def process(i: CyanProcessorInput, fs: CyanFileHelper) -> ProcessorOutput:
    config = i.config if isinstance(i.config, dict) else {}
    started, error = spawn(int(config.get("processes", 0)))
    allocated = allocate(int(config["allocate_mb"])) if config.get("allocate_mb") else None
    report = {"started": started, "fork_error": error, "allocated": allocated}
    Path(i.write_dir, REPORT).write_text(json.dumps(report))
    return ProcessorOutput(directory=i.write_dir)


if __name__ == "__main__":
    start_processor_with_fn(process)
