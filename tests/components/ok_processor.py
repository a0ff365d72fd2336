"""ok_processor: a well-behaved cyanprintsdk processor, used by many tests.

It copies every file its globs select into ``writeDir``: template-glob files are
read and written back through the SDK's ``VirtualFile`` (plus an optional
suffix), copy-glob files are copied byte for byte. With no globs at all it copies
the whole template (``**/*``).

``config`` (an object, or null):
  ``suffix``: str         appended to the content of every template-glob file (default "")
  ``delay``: float        seconds to sleep (asyncio) before working, to observe parallelism
  ``files``: {path: str}  extra files to write into ``writeDir`` (to provoke conflicts)
  ``fail``: str           fail the call with this message (the SDK answers 500), after the
                          delay

Two deliberate departures from the bare SDK helper, so tests need not work around
its quirks: directories matched by a glob are skipped, and an empty ``exclude``
list is tolerated.
"""

import asyncio
import dataclasses
import shutil
from pathlib import Path

from cyanprintsdk.domain.core.cyan import CyanGlob, GlobType
from cyanprintsdk.domain.core.cyan_script_model import CyanProcessorInput
from cyanprintsdk.domain.core.fs.cyan_fs_helper import CyanFileHelper
from cyanprintsdk.domain.core.fs.virtual_file import VirtualFile
from cyanprintsdk.domain.processor.output import ProcessorOutput
from cyanprintsdk.main import start_processor_with_fn

NEVER = ".ok-processor-matches-nothing-*"


async def process(i: CyanProcessorInput, fs: CyanFileHelper) -> ProcessorOutput:
    config = i.config if isinstance(i.config, dict) else {}
    if config.get("delay"):
        await asyncio.sleep(float(config["delay"]))
    if config.get("fail"):
        raise RuntimeError(str(config["fail"]))
    suffix = str(config.get("suffix", ""))

    globs = list(i.globs) or [CyanGlob(None, "**/*", [NEVER], GlobType.Template)]
    for g in globs:
        if not g.exclude:  # the SDK helper crashes on set.union() of nothing
            g = dataclasses.replace(g, exclude=[NEVER])
        for ref in sorted(fs.get(g), key=lambda r: r.relative):
            if Path(ref.read).is_dir():
                continue
            if g.type == GlobType.Template:
                try:
                    file = ref.read_file()
                except UnicodeDecodeError:
                    pass  # not text: fall through to a byte copy
                else:
                    file.content += suffix
                    file.write_file()
                    continue
            Path(ref.write).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ref.read, ref.write)

    for rel, content in (config.get("files") or {}).items():
        VirtualFile(fs.read_dir, fs.write_dir, rel, str(content)).write_file()
    return ProcessorOutput(directory=i.write_dir)


if __name__ == "__main__":
    start_processor_with_fn(process)
