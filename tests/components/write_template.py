"""write_template: a cyanprintsdk processor that tries to tamper with its template.

1. reads the files its globs select (``resolve_all()``, so copy globs are copied);
2. tries to create ``INJECTED_NAME`` in ``readDir`` and to append ``TAMPER_LINE`` to the
   first existing template file (sorted by relative path), catching any ``OSError``
   (a read-only template must not make the call fail);
3. writes the files read in step 1 unchanged, plus ``REPORT_NAME`` saying what
   happened: ``create: ok|<error>`` and ``modify <path>: ok|<error>`` lines.
"""

import os
from collections.abc import Callable
from pathlib import Path

from cyanprintsdk.domain.core.cyan_script_model import CyanProcessorInput
from cyanprintsdk.domain.core.fs.cyan_fs_helper import CyanFileHelper
from cyanprintsdk.domain.core.fs.virtual_file import VirtualFile
from cyanprintsdk.domain.processor.output import ProcessorOutput
from cyanprintsdk.main import start_processor_with_fn

INJECTED_NAME = "injected-by-write_template.txt"
TAMPER_LINE = "tampered by write_template\n"
REPORT_NAME = "write_template-report.txt"


def attempt(action: str, fn: Callable[[], object]) -> str:
    try:
        fn()
    except OSError as e:
        return f"{action}: {type(e).__name__} errno={e.errno}\n"
    return f"{action}: ok\n"


def append(path: Path) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(TAMPER_LINE)


async def process(i: CyanProcessorInput, fs: CyanFileHelper) -> ProcessorOutput:
    files = fs.resolve_all()
    root = Path(fs.read_dir)
    existing = sorted(
        (Path(d) / f).relative_to(root).as_posix()
        for d, _, names in os.walk(root)
        for f in names
        if f != INJECTED_NAME
    )

    report = attempt("create", lambda: (root / INJECTED_NAME).write_text("injected\n"))
    if existing:
        report += attempt(f"modify {existing[0]}", lambda: append(root / existing[0]))
    print(report, end="", flush=True)

    for file in files:
        file.write_file()
    VirtualFile(fs.read_dir, fs.write_dir, REPORT_NAME, report).write_file()
    return ProcessorOutput(directory=i.write_dir)


if __name__ == "__main__":
    start_processor_with_fn(process)
