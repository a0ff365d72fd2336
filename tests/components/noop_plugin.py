"""noop_plugin: a cyanprintsdk plugin that leaves the tree as it is."""

from cyanprintsdk.domain.core.cyan_script_model import CyanPluginInput
from cyanprintsdk.domain.plugin.output import PluginOutput
from cyanprintsdk.main import start_plugin_with_fn


async def plug(i: CyanPluginInput) -> PluginOutput:
    return PluginOutput(directory=i.directory)


if __name__ == "__main__":
    start_plugin_with_fn(plug)
