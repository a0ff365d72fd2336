"""Where benchmark results go: a section of docs/benchmarks.md, replaced by each run."""

from __future__ import annotations

from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def replace_section(title: str, section: str, report: Path = REPORT) -> None:
    """Put ``section`` (which starts with the heading ``title``) in place of the section of that
    title, up to the next ``## `` heading; append it when there is none yet."""
    text = report.read_text()
    if title in text:
        start = text.index(title)
        end = text.find("\n## ", start + len(title))
        text = text[:start] + section + (text[end + 1:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    report.write_text(text)
