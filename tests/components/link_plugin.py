"""link_plugin: a cyanprintsdk plugin that leaves symlinks in the tree it is given:
``config.links`` maps a path in the tree to the link's target, written as given."""

import os

from cyanprintsdk.domain.core.cyan_script_model import CyanPluginInput
from cyanprintsdk.domain.plugin.output import PluginOutput
from cyanprintsdk.main import start_plugin_with_fn


async def plug(i: CyanPluginInput) -> PluginOutput:
    for rel, target in dict((i.config or {}).get("links", {})).items():
        path = os.path.join(i.directory, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(str(target), path)
    return PluginOutput(directory=i.directory)


if __name__ == "__main__":
    start_plugin_with_fn(plug)
