"""outside_output: a cyanprintsdk processor that writes nothing and claims its output
is ``/etc`` (outside the ``writeDir`` it was given)."""

from cyanprintsdk.domain.core.cyan_script_model import CyanProcessorInput
from cyanprintsdk.domain.core.fs.cyan_fs_helper import CyanFileHelper
from cyanprintsdk.domain.processor.output import ProcessorOutput
from cyanprintsdk.main import start_processor_with_fn


async def process(i: CyanProcessorInput, fs: CyanFileHelper) -> ProcessorOutput:
    return ProcessorOutput(directory="/etc")


if __name__ == "__main__":
    start_processor_with_fn(process)
