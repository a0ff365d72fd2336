"""upper: a CyanPrint processor that uppercases every file its template globs select.

In the example it reads ``src/**/*.txt`` (minus ``src/lib/**``), so its
``src/greeting.txt`` and ``src/farewell.txt`` conflict with ``substitute``'s.
"""

from cyanprintsdk.domain.core.cyan_script_model import CyanProcessorInput
from cyanprintsdk.domain.core.fs.cyan_fs_helper import CyanFileHelper
from cyanprintsdk.domain.processor.output import ProcessorOutput
from cyanprintsdk.main import start_processor_with_fn


async def process(i: CyanProcessorInput, fs: CyanFileHelper) -> ProcessorOutput:
    for file in fs.resolve_all():
        file.content = file.content.upper()
        file.write_file()
    return ProcessorOutput(directory=i.write_dir)


if __name__ == "__main__":
    start_processor_with_fn(process)
