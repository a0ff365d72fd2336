"""fail_plugin: a cyanprintsdk plugin whose function raises; the SDK answers
``POST /api/plug`` with HTTP 500. Health is fine."""

from cyanprintsdk.domain.core.cyan_script_model import CyanPluginInput
from cyanprintsdk.domain.plugin.output import PluginOutput
from cyanprintsdk.main import start_plugin_with_fn


async def plug(i: CyanPluginInput) -> PluginOutput:
    raise RuntimeError("fail_plugin: deliberate failure inside the plugin function")


if __name__ == "__main__":
    start_plugin_with_fn(plug)
