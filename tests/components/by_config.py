"""by_config: a cyanprintsdk processor that does what each call's config says, so that several
steps of one instance can be told apart.

``config`` (an object):
  ``tag``: str      writes ``calls/<tag>.txt``: the tag, this process's pid and the writeDir
  ``delay``: float  seconds to sleep (asyncio) first, so calls overlap
  ``fail``: bool    raise (the SDK answers HTTP 500) instead of writing
  ``die``: bool     exit the whole process with code 7 (every call in flight is cut off)
"""

import asyncio
import os
import sys

from cyanprintsdk.domain.core.cyan_script_model import CyanProcessorInput
from cyanprintsdk.domain.core.fs.cyan_fs_helper import CyanFileHelper
from cyanprintsdk.domain.core.fs.virtual_file import VirtualFile
from cyanprintsdk.domain.processor.output import ProcessorOutput
from cyanprintsdk.main import start_processor_with_fn


async def process(i: CyanProcessorInput, fs: CyanFileHelper) -> ProcessorOutput:
    config = i.config if isinstance(i.config, dict) else {}
    tag = str(config.get("tag", "untagged"))
    if config.get("delay"):
        await asyncio.sleep(float(config["delay"]))
    if config.get("die"):
        print(f"by_config: {tag} exits with 7", file=sys.stderr, flush=True)
        os._exit(7)
    if config.get("fail"):
        raise RuntimeError(f"by_config: {tag} fails as asked")
    VirtualFile(fs.read_dir, fs.write_dir, f"calls/{tag}.txt",
                f"{tag} {os.getpid()} {i.write_dir}\n").write_file()
    return ProcessorOutput(directory=i.write_dir)


if __name__ == "__main__":
    start_processor_with_fn(process)
