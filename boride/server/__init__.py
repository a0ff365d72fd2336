"""``boride serve``: the Go coordinator's HTTP API on any runtime. See docs/api.md."""

from boride.server.app import create_app
from boride.server.service import ServerConfig, Service

__all__ = ["ServerConfig", "Service", "create_app"]
