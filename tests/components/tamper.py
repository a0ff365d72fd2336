"""tamper: cyanprintsdk components that try to reach their siblings' folders in the area,
driven step by step by the test (``tests/test_isolation.py``) through two mailboxes.

``python tamper.py plugin|processor [ROLE TAG]`` (the arguments after the first only tell
processes apart); ``config``:
  ``role``: str         ``victim`` or ``attacker`` (processors)
  ``inbox``: str        a folder the test writes words into (``dirs``: the names in the area's
                        top, as the test sees them; ``go``-like words: carry on)
  ``outbox``: str|null  a folder this one writes its signals into (null: its own folder)

Roles:
  ``victim``    (processor) writes ``B.txt`` = ``"B\\n"``, says ``victim-ready``, answers once
                told ``victim-answer``.
  ``attacker``  (processor) says ``attacker-ready``; told ``dirs``, tries every other folder
                there while the victim is still at work (list it, read its ``B.txt``, make a
                file in it), says ``attacker-before``; told ``after`` (the victim has
                answered), tries again (list, read, append ``TAMPERED by A`` to ``B.txt``);
                writes ``attack-report.json``: ``{"uid", "area": <listing the area's top>,
                "before": {name: {op: "ok" | errno name}}, "after": {...}}``.
  ``plugin``    (plugin) says ``plugin-ready``; told ``plugin-dirs``, tries every folder but
                its own tree (list, read ``B.txt``), writes ``plugin-report.json`` into its tree.

Every attempt's outcome is reported, never raised: the reports always reach the output.
"""

import asyncio
import errno
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cyanprintsdk.domain.core.cyan_script_model import CyanPluginInput, CyanProcessorInput
from cyanprintsdk.domain.core.fs.cyan_fs_helper import CyanFileHelper
from cyanprintsdk.domain.plugin.output import PluginOutput
from cyanprintsdk.domain.processor.output import ProcessorOutput
from cyanprintsdk.main import start_plugin_with_fn, start_processor_with_fn

SERVER = sys.argv[1] if len(sys.argv) > 1 else "processor"
WAIT = 180.0  # seconds to wait for a word from the test


def attempt(fn: Callable[[], Any]) -> str:
    try:
        fn()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e))
    return "ok"


class Mail:
    def __init__(self, config: Any, own: str) -> None:
        config = config if isinstance(config, dict) else {}
        self.inbox = Path(str(config.get("inbox")))
        self.outbox = Path(str(config.get("outbox") or own))

    def say(self, word: str) -> None:
        self.outbox.mkdir(parents=True, exist_ok=True)
        (self.outbox / f"signal-{word}").write_text(word)

    async def told(self, word: str) -> str:
        path = self.inbox / word
        for _ in range(int(WAIT / 0.05)):
            if path.exists():
                return path.read_text()
            await asyncio.sleep(0.05)
        raise RuntimeError(f"tamper: never told {word!r} (in {self.inbox})")


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def others(told: str, own: str) -> list[Path]:
    area = Path(own).parent
    return [area / n for n in told.split() if n != Path(own).name]


async def victim(i: CyanProcessorInput) -> None:
    mail = Mail(i.config, i.write_dir)
    Path(i.write_dir, "B.txt").write_text("B\n")
    mail.say("victim-ready")
    await mail.told("victim-answer")


async def attacker(i: CyanProcessorInput) -> None:
    mail = Mail(i.config, i.write_dir)
    mail.say("attacker-ready")
    folders = others(await mail.told("dirs"), i.write_dir)
    report: dict[str, Any] = {"uid": os.getuid(),
                              "area": attempt(lambda: os.listdir(Path(i.write_dir).parent))}
    report["before"] = {d.name: {
        "list": attempt(lambda d=d: os.listdir(d)),
        "read": attempt(lambda d=d: (d / "B.txt").read_text()),
        "create": attempt(lambda d=d: (d / "A-was-here.txt").write_text("A\n")),
    } for d in folders}
    mail.say("attacker-before")
    await mail.told("after")
    report["after"] = {d.name: {
        "list": attempt(lambda d=d: os.listdir(d)),
        "read": attempt(lambda d=d: (d / "B.txt").read_text()),
        "append": attempt(lambda d=d: append(d / "B.txt", "TAMPERED by A\n")),
    } for d in folders}
    Path(i.write_dir, "attack-report.json").write_text(json.dumps(report))


async def process(i: CyanProcessorInput, fs: CyanFileHelper) -> ProcessorOutput:
    role = i.config.get("role") if isinstance(i.config, dict) else None
    await (attacker(i) if role == "attacker" else victim(i))
    return ProcessorOutput(directory=i.write_dir)


async def plug(i: CyanPluginInput) -> PluginOutput:
    mail = Mail(i.config, i.directory)
    mail.say("plugin-ready")
    folders = others(await mail.told("plugin-dirs"), i.directory)
    report = {"uid": os.getuid(), "area": attempt(lambda: os.listdir(Path(i.directory).parent)),
              "seen": {d.name: {"list": attempt(lambda d=d: os.listdir(d)),
                                "read": attempt(lambda d=d: (d / "B.txt").read_text())}
                       for d in folders}}
    Path(i.directory, "plugin-report.json").write_text(json.dumps(report))
    return PluginOutput(directory=i.directory)


if __name__ == "__main__":
    if SERVER == "plugin":
        start_plugin_with_fn(plug)
    else:
        start_processor_with_fn(process)
