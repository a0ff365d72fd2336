"""substitute: a CyanPrint processor that replaces ``{{name}}`` with ``config.name``.

Template globs are rendered; copy globs are copied verbatim by the SDK's
``resolve_all()`` (so ``assets/banner.txt`` keeps its placeholder).
"""

from cyanprintsdk.domain.core.cyan_script_model import CyanProcessorInput
from cyanprintsdk.domain.core.fs.cyan_fs_helper import CyanFileHelper
from cyanprintsdk.domain.processor.output import ProcessorOutput
from cyanprintsdk.main import start_processor_with_fn


async def process(i: CyanProcessorInput, fs: CyanFileHelper) -> ProcessorOutput:
    config = i.config or {}
    name = str(config.get("name", "world"))
    for file in fs.resolve_all():
        file.content = file.content.replace("{{name}}", name)
        file.write_file()
    return ProcessorOutput(directory=i.write_dir)


if __name__ == "__main__":
    start_processor_with_fn(process)
