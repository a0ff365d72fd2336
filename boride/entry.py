"""The ``boride`` command (and ``python -m boride``).

Before the command line is even parsed, a local ``boride run`` starts its fork server
(:func:`boride.runtime.forking.prestart`): the component SDK's import there then overlaps
boride's own loading, which is most of what a small build waits for.
"""

from __future__ import annotations

import sys


def _local_run(args: list[str]) -> bool:
    """Whether ``args`` look like ``run`` on the local runtime (a wrong guess costs only the
    fork server's start: an unused one ends with boride)."""
    if args[:1] != ["run"] or "--help" in args:
        return False
    return not any(a == "--runtime=docker" or (a == "--runtime" and b == "docker")
                   for a, b in zip(args, [*args[1:], ""], strict=True))


def main() -> None:
    if _local_run(sys.argv[1:]):
        from boride.runtime import forking

        forking.prestart()
    from boride import cli

    cli.LEAVE_AT_ONCE = True  # a real process: see cli.leave
    cli.main()
