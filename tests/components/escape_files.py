"""escape_files: a cyanprintsdk processor that tries to write outside its writeDir.

``config.targets``: absolute paths to create (outside files: /etc, /tmp, the template, boride's
cwd and home...). For each it tries to write a line and read it back. It writes
``escape-report.json`` into ``writeDir``: ``{"uid": <its uid>, "results": {path: "ok" | "<errno
name>"}}``; it never fails the call, so the report always reaches the output.
"""

import errno
import json
import os
from pathlib import Path

from cyanprintsdk.domain.core.cyan_script_model import CyanProcessorInput
from cyanprintsdk.domain.core.fs.cyan_fs_helper import CyanFileHelper
from cyanprintsdk.domain.processor.output import ProcessorOutput
from cyanprintsdk.main import start_processor_with_fn

REPORT = "escape-report.json"


def attempt(path: str) -> str:
    try:
        Path(path).write_text("written by escape_files\n")
        Path(path).read_text()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e))
    return "ok"


async def process(i: CyanProcessorInput, fs: CyanFileHelper) -> ProcessorOutput:
    config = i.config if isinstance(i.config, dict) else {}
    results = {t: attempt(t) for t in config.get("targets", [])}
    report = {"uid": os.getuid(), "results": results}
    Path(i.write_dir, REPORT).write_text(json.dumps(report))
    return ProcessorOutput(directory=i.write_dir)


if __name__ == "__main__":
    start_processor_with_fn(process)
