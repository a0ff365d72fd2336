"""fail_500: a cyanprintsdk processor whose function raises; the SDK (aiohttp)
answers ``POST /api/process`` with HTTP 500. Health is fine."""

from cyanprintsdk.domain.core.cyan_script_model import CyanProcessorInput
from cyanprintsdk.domain.core.fs.cyan_fs_helper import CyanFileHelper
from cyanprintsdk.domain.processor.output import ProcessorOutput
from cyanprintsdk.main import start_processor_with_fn


async def process(i: CyanProcessorInput, fs: CyanFileHelper) -> ProcessorOutput:
    raise RuntimeError("fail_500: deliberate failure inside the processor function")


if __name__ == "__main__":
    start_processor_with_fn(process)
