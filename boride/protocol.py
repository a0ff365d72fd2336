"""HTTP client side of the component protocol (fixed by the CyanPrint SDKs; camelCase JSON)."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from boride.errors import BorideError


class ProtocolError(BorideError):
    """A component answered, but not as the protocol says (or not at all)."""


class TransportFailed(ProtocolError):
    """The connection to the component failed or broke (it may be dying)."""


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class OutputDirResponse(_Wire):
    output_dir: str


class ResolveResponse(_Wire):
    path: str
    content: str


def _snippet(text: str, limit: int = 300) -> str:
    text = text.strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


async def _post(client: httpx.AsyncClient, route: str, body: dict[str, Any],
                model: type[_Wire]) -> Any:
    try:
        response = await client.post(route, json=body)
    except httpx.TransportError as exc:
        raise TransportFailed(f"POST {route} failed: {type(exc).__name__}: {exc}".rstrip(": "))\
            from exc
    if response.status_code != 200:
        raise ProtocolError(f"POST {route} answered HTTP {response.status_code}: "
                            f"{_snippet(response.text) or '(empty body)'}")
    try:
        data = response.json()
    except ValueError:
        raise ProtocolError(f"POST {route} answered a body that is not JSON: "
                            f"{_snippet(response.text) or '(empty body)'}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) + f" ({e['msg']})"
                           for e in exc.errors())
        raise ProtocolError(f"POST {route} answered JSON without the expected fields: {fields}; "
                            f"body: {_snippet(response.text)}") from None


async def process(client: httpx.AsyncClient, read_dir: str, write_dir: str,
                  globs: list[dict[str, Any]], config: Any) -> str:
    body = {"readDir": read_dir, "writeDir": write_dir, "globs": globs, "config": config}
    res: OutputDirResponse = await _post(client, "/api/process", body, OutputDirResponse)
    return res.output_dir


async def plug(client: httpx.AsyncClient, directory: str, config: Any) -> str:
    res: OutputDirResponse = await _post(client, "/api/plug",
                                         {"directory": directory, "config": config},
                                         OutputDirResponse)
    return res.output_dir


async def resolve(client: httpx.AsyncClient, config: Any,
                  files: list[dict[str, Any]]) -> tuple[str, str]:
    res: ResolveResponse = await _post(client, "/api/resolve",
                                       {"config": config, "files": files}, ResolveResponse)
    return res.path, res.content
