"""ok_plugin: a cyanprintsdk plugin that appends ``config.line`` followed by a newline
(default line ``"plugged"``) to every file under ``directory``, in place."""

import os
from pathlib import Path

from cyanprintsdk.domain.core.cyan_script_model import CyanPluginInput
from cyanprintsdk.domain.plugin.output import PluginOutput
from cyanprintsdk.main import start_plugin_with_fn


async def plug(i: CyanPluginInput) -> PluginOutput:
    line = str((i.config or {}).get("line", "plugged"))
    for d, _, names in os.walk(i.directory):
        for name in names:
            with open(Path(d) / name, "ab") as fh:
                fh.write(f"{line}\n".encode())
    return PluginOutput(directory=i.directory)


if __name__ == "__main__":
    start_plugin_with_fn(plug)
