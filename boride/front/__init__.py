"""``boride front``: one coordinator API in front of many workers (``boride serve`` on each
node of a swarm). See docs/scaling.md."""

from boride.front.app import create_front_app
from boride.front.forward import FrontConfig

__all__ = ["FrontConfig", "create_front_app"]
