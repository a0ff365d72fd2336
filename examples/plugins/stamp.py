"""stamp: a CyanPrint plugin that appends ``config.stamp`` as a last line to every
file of the merged tree, then writes ``MANIFEST``: one line per file, sorted by
path, ``<size in bytes> <path>``. Deterministic: no timestamps.
"""

import os
from pathlib import Path

from cyanprintsdk.domain.core.cyan_script_model import CyanPluginInput
from cyanprintsdk.domain.plugin.output import PluginOutput
from cyanprintsdk.main import start_plugin_with_fn


async def plug(i: CyanPluginInput) -> PluginOutput:
    root = Path(i.directory)
    stamp = str((i.config or {}).get("stamp", "stamped"))
    files = sorted(
        (Path(d) / f).relative_to(root).as_posix() for d, _, names in os.walk(root) for f in names
    )
    lines = []
    for rel in files:
        with open(root / rel, "ab") as fh:
            fh.write(f"{stamp}\n".encode())
        lines.append(f"{(root / rel).stat().st_size} {rel}\n")
    (root / "MANIFEST").write_text("".join(lines), encoding="utf-8")
    return PluginOutput(directory=i.directory)


if __name__ == "__main__":
    start_plugin_with_fn(plug)
