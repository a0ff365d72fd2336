"""Runtimes: where components run. See :mod:`boride.runtime.base` for the interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (not imported at run time: ``boride --help`` needs only RUNTIMES)
    from boride.runtime.base import Runtime

RUNTIMES = ("local", "docker")


def get_runtime(name: str) -> Runtime:
    """A runtime by name ("local" or "docker")."""
    if name == "local":
        from boride.runtime.local import LocalRuntime

        return LocalRuntime()
    if name == "docker":
        from boride.runtime.docker import DockerRuntime

        return DockerRuntime()
    raise ValueError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")
