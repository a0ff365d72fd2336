"""license: a CyanPrint processor that turns the template's LICENSE placeholder into a
full license text for ``config.holder`` / ``config.year`` (SPDX id ``config.spdx``).

``substitute`` also writes ``LICENSE``; no resolver matches it, so the last
processor (this one) wins the merge.
"""

from cyanprintsdk.domain.core.cyan_script_model import CyanProcessorInput
from cyanprintsdk.domain.core.fs.cyan_fs_helper import CyanFileHelper
from cyanprintsdk.domain.processor.output import ProcessorOutput
from cyanprintsdk.main import start_processor_with_fn

MIT = """\
Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def license_text(spdx: str, year: str, holder: str) -> str:
    header = f"SPDX-License-Identifier: {spdx}\n\nCopyright (c) {year} {holder}\n"
    return header + ("\n" + MIT if spdx == "MIT" else "")


async def process(i: CyanProcessorInput, fs: CyanFileHelper) -> ProcessorOutput:
    config = i.config or {}
    text = license_text(
        str(config.get("spdx", "MIT")),
        str(config.get("year", "2025")),
        str(config.get("holder", "the authors")),
    )
    for file in fs.resolve_all():
        file.content = text
        file.write_file()
    return ProcessorOutput(directory=i.write_dir)


if __name__ == "__main__":
    start_processor_with_fn(process)
