"""HTTP client side of the component protocol (fixed by the CyanPrint SDKs; camelCase JSON):
every request and answer body typed here, and nowhere else."""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from boride import telemetry
from boride.bounded import AnswerTooBig, read_bounded, size_text
from boride.config import MAX_ANSWER
from boride.errors import ComponentError

if TYPE_CHECKING:  # (imported by the calls: loading a pipeline file needs no HTTP client)
    import httpx


class ProtocolError(ComponentError):
    """A component answered, but not as the protocol says (or not at all)."""


class TransportFailed(ProtocolError):
    """The connection to the component failed or broke (it may be dying)."""


@dataclass(frozen=True)
class Glob:
    """A processor's selection of template files (``POST /api/process``'s ``globs``)."""

    glob: str
    root: str | None = None
    exclude: tuple[str, ...] = ()
    type: Literal["template", "copy"] = "template"

    def wire(self) -> dict[str, Any]:
        return {"root": self.root, "glob": self.glob, "exclude": list(self.exclude),
                "type": self.type}


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Origin(_Wire):
    """Where a conflicting version comes from: the template, and the processor's layer."""

    template: str
    layer: int


class ResolveFile(_Wire):
    """One version of a conflicting file, as a resolver gets it."""

    path: str
    content: str
    origin: Origin


class ProcessRequest(_Wire):
    read_dir: str
    write_dir: str
    globs: list[dict[str, Any]]
    config: Any = None


class PlugRequest(_Wire):
    directory: str
    config: Any = None


class ResolveRequest(_Wire):
    config: Any = None
    files: list[ResolveFile]


class OutputDirResponse(_Wire):
    output_dir: str


class ResolveResponse(_Wire):
    path: str
    content: str


def _snippet(text: str, limit: int = 300) -> str:
    text = text.strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


async def _post(client: httpx.AsyncClient, route: str, request: _Wire,
                model: type[_Wire], limit: int, *, plus_request: bool = False) -> Any:
    """POST ``request``, the answer as ``model``; at most ``limit`` bytes of it read (plus
    the request's own size with ``plus_request``: a resolver answers a merge of what it was
    sent, which may itself be large)."""
    import httpx

    what = f"POST {route}"
    sent = json.dumps(request.model_dump(by_alias=True), ensure_ascii=False).encode()
    bound = size_text(limit) + (f" beyond the {len(sent)} bytes it was sent" if plus_request
                                else "")
    limit += len(sent) if plus_request else 0
    try:
        async with client.stream("POST", route, content=sent,
                                 headers={"content-type": "application/json",
                                          **telemetry.call_headers()}) as r:
            status = r.status_code
            try:
                body = await read_bounded(r, limit, what)
            except AnswerTooBig:
                if status == 200:
                    raise ProtocolError(f"{what} answered more than {bound}") from None
                body = f"(a body of more than {bound})".encode()
    except httpx.TransportError as exc:
        raise TransportFailed(f"{what} failed: {type(exc).__name__}: {exc}".rstrip(": "))\
            from exc
    text = body.decode("utf-8", "replace")
    if status != 200:
        raise ProtocolError(f"{what} answered HTTP {status}: {_snippet(text) or '(empty body)'}")
    try:
        data = json.loads(body)
    except ValueError:
        raise ProtocolError(f"{what} answered a body that is not JSON: "
                            f"{_snippet(text) or '(empty body)'}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) + f" ({e['msg']})"
                           for e in exc.errors())
        raise ProtocolError(f"{what} answered JSON without the expected fields: {fields}; "
                            f"body: {_snippet(text)}") from None


# Each call reads at most ``limit`` bytes of the answer (a resolver's: plus the size of its
# request); beyond, the call fails (the rest unread).


async def process(client: httpx.AsyncClient, read_dir: str, write_dir: str,
                  globs: Sequence[Glob], config: Any, *, limit: int = MAX_ANSWER) -> str:
    request = ProcessRequest(read_dir=read_dir, write_dir=write_dir,
                             globs=[g.wire() for g in globs], config=config)
    res: OutputDirResponse = await _post(client, "/api/process", request, OutputDirResponse,
                                         limit)
    return res.output_dir


async def plug(client: httpx.AsyncClient, directory: str, config: Any, *,
               limit: int = MAX_ANSWER) -> str:
    res: OutputDirResponse = await _post(client, "/api/plug",
                                         PlugRequest(directory=directory, config=config),
                                         OutputDirResponse, limit)
    return res.output_dir


async def resolve(client: httpx.AsyncClient, config: Any, files: Sequence[ResolveFile], *,
                  limit: int = MAX_ANSWER) -> tuple[str, str]:
    res: ResolveResponse = await _post(client, "/api/resolve",
                                       ResolveRequest(config=config, files=list(files)),
                                       ResolveResponse, limit, plus_request=True)
    return res.path, res.content


@functools.cache
def plain_http() -> ssl.SSLContext:
    """The TLS context of clients that only ever speak plain HTTP (to components, to a
    session's helper): never used, and one for all, where httpx would load the CA bundle for
    each client (about 25 ms of CPU on every component start)."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
