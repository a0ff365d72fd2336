"""What a failing component said: its error line, found in its last output.

A component's HTTP error says little (``500 Internal Server Error``); its own output says why
(``OSError: [Errno 28] No space left on device``). SDKs print the message above or below a long
stack: Python prints the frames first and the exception line last; Bun/Node print the message
first and 20+ ``at ...`` frames after it. :func:`error_line` finds the message whatever the
order; :func:`summary` is what boride shows: that line and the last lines of output that are not
stack frames, bounded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["error_line", "out_of_memory", "summary"]

MAX_LINES = 6
MAX_WIDTH = 240
MAX_SCAN = 60  # lines of the end of the output looked at for an allocation refused

# "ValueError: ...", "json.decoder.JSONDecodeError: ...", "ReferenceError: Can't find ...",
# "Error: ..." (Node's and Bun's ``throw new Error(...)``),
# "KeyboardInterrupt", "error: ..." (Bun, Rust), "panic: ..." (Go), "Uncaught ..." (Node).
_ERROR = re.compile(
    r"^(?:(?:[A-Za-z_$][\w$.]*)?(?:Error|Exception|Exit|Interrupt|Failure|Fault)(?::\s.*|\s*)"
    r"|(?:error|panic|fatal|Uncaught)(?:\[\w+\])?:\s.*)$")
# Stack frames and the code lines and carets Python prints under them.
_FRAME = re.compile(r"^\s+(?:at\s|File\s\"|\^|~|\.\.\.)|^\s{2,}\S|^Traceback \(most recent")


# What runtimes print when an allocation is refused: Python's exception, Node/V8's fatal
# errors, C++'s, Go's, and errno ENOMEM.
_OUT_OF_MEMORY = re.compile(
    r"^(?:[\w.]+\.)?MemoryError\b|JavaScript heap out of memory|Fatal process out of memory"
    r"|std::bad_alloc|runtime: out of memory|\[Errno 12\] Cannot allocate memory")


def _clip(line: str) -> str:
    line = line.rstrip()
    return line if len(line) <= MAX_WIDTH else line[:MAX_WIDTH - 3] + "..."


def error_line(lines: Sequence[str]) -> str | None:
    """The last line of ``lines`` that reads like an error message, or None."""
    for line in reversed(lines):
        text = line.strip()
        if text and not _FRAME.match(line) and _ERROR.match(text):
            return _clip(text)
    return None


def out_of_memory(lines: Sequence[str]) -> bool:
    """Whether the last lines of output say an allocation was refused (the component ran
    out of memory)."""
    return any(_OUT_OF_MEMORY.search(line.strip()) for line in lines[-MAX_SCAN:])


def summary(lines: Sequence[str]) -> str:
    """``its error: <line>`` and ``its last output:`` (frames left out), on indented lines
    ready to follow a one-line message; "" when the component printed nothing."""
    parts: list[str] = []
    found = error_line(lines)
    if found is not None:
        parts.append(f"\n  its error: {found}")
    rest = [_clip(line) for line in lines if line.strip() and not _FRAME.match(line)]
    if rest:
        parts.append("\n  its last output:\n    " + "\n    ".join(rest[-MAX_LINES:]))
    return "".join(parts)
