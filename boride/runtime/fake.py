"""A runtime for tests and benchmarks: components are in-process ASGI apps.

Nothing is started: a component is an ASGI app in boride's own process, reached through
``httpx.ASGITransport`` behind a transport that plays what the network does to a real one (a
refused connection before it listens or after it exits; a connection cut when it dies during a
call). Which app a component is comes from a table of :class:`Behaviour` s, keyed by the
component's ``image``, else by its ``command`` joined with spaces (:func:`key_of`), so a test
maps components to behaviours::

    runtime = FakeRuntime({"ok": Behaviour(), "boom": Behaviour(fails="die",
                                                             error="ReferenceError: x")})

A behaviour answers the component protocol as the CyanPrint SDKs do (processors write into
their ``writeDir``, plugins edit their ``directory`` in place, resolvers join the versions),
or fails the way real components fail: starts slowly (``ready_after``), never becomes ready
(``never_ready``), exits at start (``exit_at_start``), dies during a call, hangs, answers
garbage or HTTP 500 (``fails``), each printing its own error line into its log as a real one
would (Python below its stack, Node/Bun above it). ``fails`` can also be given per call: a
step's ``config`` ``{"fake": "die"}`` (with ``"error"``: its line; ``"delay"``: seconds before
answering). Sessions' areas are folders of this machine (:class:`~boride.area.HostArea`).

Not a runtime of the command line: only tests and benchmarks make one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import httpx
from wcmatch import glob as wglob

from boride import aio
from boride.area import HostArea
from boride.runtime.base import (
    LOG_TAIL,
    ExitInfo,
    Instance,
    Runtime,
    TemplateSource,
    Workspace,
)
from boride.runtime.local import template_folder, template_folder_problem
from boride.types import Component, Kind

__all__ = ["Behaviour", "Call", "Failure", "FakeInstance", "FakeRuntime", "key_of"]

#: How a call goes wrong: the component dies (its connection is cut), never answers, answers
#: a body that is not JSON, JSON without the protocol's fields, or HTTP 500.
Failure = Literal["die", "hang", "not_json", "wrong_shape", "http_500"]
_FAILURES: tuple[str, ...] = get_args(Failure)
ROUTES = {Kind.PROCESSOR: ("/api/process",), Kind.PLUGIN: ("/api/plug",),
          Kind.RESOLVER: ("/api/resolve",),
          Kind.TEMPLATE: ("/api/template/init", "/api/template/validate")}
_GLOB_FLAGS = wglob.GLOBSTAR | wglob.DOTGLOB


@dataclass(frozen=True)
class Call:
    """One call to a fake component: the route, its JSON body and who answers it."""

    instance: FakeInstance
    route: str
    body: Any

    @property
    def config(self) -> dict[str, Any]:
        config = self.body.get("config") if isinstance(self.body, dict) else None
        return config if isinstance(config, dict) else {}


#: What a behaviour answers to a call that goes well: the answer's JSON body.
Answer = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Behaviour:
    """How one fake component behaves. ``answer``: the body of a good answer (default: the
    kind's, see :func:`default_answer`); ``ready_after``: seconds from its start before it
    listens; ``never_ready``: it listens but ``GET /`` answers 503 for ever; ``exit_at_start``:
    it exits at once with this code, its stack printed (``error`` last); ``fails``: how every
    call goes wrong (``error`` is the line it prints about it, ``exit_code`` what it dies
    with; a hanging call prints nothing);
    ``delay``: seconds each call takes; ``output``: what it prints when it starts;
    ``version``: part of its identity (the cache's keys), change it to make it another
    component."""

    answer: Answer | None = None
    ready_after: float = 0.0
    never_ready: bool = False
    exit_at_start: int | None = None
    fails: Failure | None = None
    error: str = "RuntimeError: deliberate failure"
    exit_code: int = 1
    delay: float = 0.0
    output: tuple[str, ...] = ()
    version: str = "1"


def key_of(component: Component) -> str:
    """What a component is looked up by: its image, else its command joined with spaces."""
    if component.image:
        return component.image
    return " ".join(component.command or (component.name,))


class _App:
    """The ASGI app of one fake component."""

    def __init__(self, instance: FakeInstance) -> None:
        self.instance = instance

    async def __call__(self, scope: MutableMapping[str, Any],
                       receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
                       send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = bool(message.get("more_body"))
        status, kind, payload = await self.instance.respond(scope["method"], scope["path"], body)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind.encode()),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class _Transport(httpx.AsyncBaseTransport):
    """The network between boride and a fake component: refused while it does not listen,
    cut when it exits before answering."""

    def __init__(self, instance: FakeInstance) -> None:
        self.instance = instance
        self.asgi = httpx.ASGITransport(app=_App(instance))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.instance.listening():
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        first = await aio.race(self.asgi.handle_async_request(request),
                               self.instance.wait_exit())
        assert first is not None
        value = first.result()
        if isinstance(value, ExitInfo):
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.",
                                            request=request)
        assert isinstance(value, httpx.Response)
        return value


def _json(status: int, data: Any) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(data).encode()


def _text(status: int, text: str) -> tuple[int, str, bytes]:
    return status, "text/plain; charset=utf-8", text.encode()


class FakeInstance(Instance):
    """A running fake component: its client, its log, the calls it got."""

    def __init__(self, component: Component, behaviour: Behaviour, session_id: str,
                 events: list[str] | None = None) -> None:
        self.component = component
        self.behaviour = behaviour
        self.session_id = session_id
        self.events = [] if events is None else events  # "call NAME ROUTE", "end NAME ROUTE"
        self.lines: list[str] = [f"fake {component.kind.value} {component.name}: starting",
                                 *behaviour.output]
        self.calls: list[Call] = []
        self.exit_info: ExitInfo | None = None
        self._exited = asyncio.Event()
        self._listens_at = asyncio.get_running_loop().time() + behaviour.ready_after
        self.client = httpx.AsyncClient(transport=_Transport(self), timeout=None,
                                        base_url=f"http://{component.kind.value}")

    def listening(self) -> bool:
        return (self.exit_info is None
                and asyncio.get_running_loop().time() >= self._listens_at)

    def print(self, *lines: str) -> None:
        self.lines.extend(lines)

    def exit(self, code: int | None, *lines: str) -> None:
        """The component ends (prints ``lines`` first); its calls in flight are cut."""
        if self.exit_info is None:
            self.print(*lines)
            self.exit_info = ExitInfo(code, self.log_tail())
            self._exited.set()

    async def wait_exit(self) -> ExitInfo:
        await self._exited.wait()
        assert self.exit_info is not None
        return self.exit_info

    def log_tail(self, lines: int = LOG_TAIL) -> list[str]:
        return self.lines[-lines:]

    async def respond(self, method: str, path: str, raw: bytes) -> tuple[int, str, bytes]:
        """The answer (status, content type, body) to one request."""
        if (method, path) == ("GET", "/"):
            if self.behaviour.never_ready:
                return _text(503, "starting")
            return _json(200, {"Message": "OK", "Status": "OK"})
        if method != "POST" or path not in ROUTES[self.component.kind]:
            return _text(404, "Not Found")
        try:
            call = Call(self, path, json.loads(raw))
        except ValueError:
            return _text(400, "the body is not JSON")
        self.calls.append(call)
        self.events.append(f"call {self.component.name} {path}")
        try:
            return await self._answer(call)
        finally:
            self.events.append(f"end {self.component.name} {path}")

    async def _answer(self, call: Call) -> tuple[int, str, bytes]:
        config = call.config
        delay = float(config.get("delay") or self.behaviour.delay)
        if delay:
            await asyncio.sleep(delay)
        step = config.get("fake")
        failure = step if step in _FAILURES else self.behaviour.fails
        if failure is not None:
            return await self._fail(str(failure), str(config.get("error") or self.behaviour.error))
        try:
            return _json(200, await (self.behaviour.answer or default_answer)(call))
        except Exception as exc:  # what an SDK server does with a handler's error
            self.print(*_python_stack(f"{type(exc).__name__}: {exc}"))
            return _text(500, "Internal Server Error")

    async def _fail(self, failure: str, error: str) -> tuple[int, str, bytes]:
        if failure == "die":  # as Bun does: the message above the frames, then the exit
            self.exit(self.behaviour.exit_code, error,
                      "      at handler (/app/src/index.ts:7:7)",
                      "      at processTicksAndRejections (native:7:39)")
        if failure in ("die", "hang"):
            await asyncio.Event().wait()  # never answers (a death cuts the connection)
        self.print(*_python_stack(error))  # what it printed about it
        if failure == "not_json":
            return _text(200, "<html><body>502 Bad Gateway</body></html>")
        if failure == "wrong_shape":
            return _json(200, {"status": "done"})
        return _text(500, "Internal Server Error")


def _python_stack(error: str) -> list[str]:
    """What a Python component prints for an error: the frames, then the exception line."""
    return ["Traceback (most recent call last):",
            '  File "/app/main.py", line 9, in handle', "    raise", error]


async def default_answer(call: Call) -> Any:
    """A good answer, as the test components in ``tests/components`` give it: a processor
    copies the template files its globs select into ``writeDir`` (``config.suffix`` appended,
    ``config.files`` written too); a plugin appends ``config.line`` (default ``plugged``) and a
    newline to every file; a resolver joins the versions in layer order with
    ``config.separator`` (default a newline); a template's Q&A server echoes the body."""
    kind, body, config = call.instance.component.kind, call.body, call.config
    if kind is Kind.PROCESSOR:
        files = {str(k): str(v) for k, v in (config.get("files") or {}).items()}
        await aio.to_thread(_copy_template, Path(body["readDir"]), Path(body["writeDir"]),
                            body.get("globs") or [], str(config.get("suffix", "")), files)
        return {"outputDir": body["writeDir"]}
    if kind is Kind.PLUGIN:
        line = str(config.get("line", "plugged"))
        await aio.to_thread(_append, Path(body["directory"]), f"{line}\n".encode())
        return {"outputDir": body["directory"]}
    if kind is Kind.RESOLVER:
        versions = sorted(body["files"], key=lambda f: f["origin"]["layer"])
        return {"path": versions[0]["path"],
                "content": str(config.get("separator", "\n")).join(v["content"]
                                                                   for v in versions)}
    return {"route": call.route, "body": body}


def _selected(rel: str, globs: Sequence[Any]) -> str | None:
    """The glob type (``template``/``copy``) that selects ``rel``, or None."""
    if not globs:
        return "template"
    for g in globs:
        if wglob.globmatch(rel, g["glob"], flags=_GLOB_FLAGS) and not any(
                wglob.globmatch(rel, x, flags=_GLOB_FLAGS) for x in g.get("exclude") or []):
            return str(g.get("type", "template"))
    return None


def _copy_template(read: Path, write: Path, globs: Sequence[Any], suffix: str,
                   files: Mapping[str, str]) -> None:
    for folder, _, names in os.walk(read):
        for name in names:
            source = Path(folder, name)
            rel = source.relative_to(read).as_posix()
            how = _selected(rel, globs)
            if how is None:
                continue
            target = write / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if how == "template":
                target.write_bytes(source.read_bytes() + suffix.encode())
            else:
                shutil.copyfile(source, target)
    for rel, content in files.items():
        (write / rel).parent.mkdir(parents=True, exist_ok=True)
        (write / rel).write_text(content)


def _append(root: Path, data: bytes) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            with open(Path(folder, name), "ab") as f:
                f.write(data)


@dataclass
class _Counts:
    """What a fake runtime started and stopped, for tests to check the lifetime rule."""

    started: list[str] = field(default_factory=list)  # component names, in start order
    stopped: list[str] = field(default_factory=list)
    # "start NAME", "stop NAME", and each call's "call NAME ROUTE" and "end NAME ROUTE", in order
    events: list[str] = field(default_factory=list)
    peak: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(Kind, 0))


class FakeRuntime(Runtime):
    """Components as in-process ASGI apps (see the module docstring). ``behaviours``: by
    :func:`key_of`; ``default``: for the components not in it (None: those cannot run, as
    :meth:`problems` says)."""

    name = "fake"

    def __init__(self, behaviours: Mapping[str, Behaviour] | None = None, *,
                 default: Behaviour | None = None) -> None:
        self.behaviours = dict(behaviours or {})
        self.default = default
        self.counts = _Counts()
        self.instances: list[FakeInstance] = []  # every instance ever started
        self.live: set[FakeInstance] = set()  # started and not stopped
        self.areas: dict[str, HostArea] = {}  # open sessions' areas

    def behaviour(self, component: Component) -> Behaviour | None:
        return self.behaviours.get(key_of(component), self.default)

    def alive(self, kind: Kind | None = None) -> list[str]:
        """The names of the instances started and not stopped (of one kind)."""
        return sorted(i.component.name for i in self.live
                      if kind is None or i.component.kind is kind)

    async def problems(self, components: list[Component]) -> list[str]:
        return [f"{c.kind.value} {c.name!r}: no fake behaviour for {key_of(c)!r}"
                for c in components if self.behaviour(c) is None]

    async def identity(self, component: Component, *, skip: Sequence[Path] = ()) -> str | None:
        behaviour = self.behaviour(component)
        if behaviour is None:
            return None
        return hashlib.sha256(f"{key_of(component)}\0{behaviour.version}".encode()).hexdigest()

    async def template_problem(self, source: TemplateSource) -> str | None:
        return template_folder_problem(source)

    async def open_workspace(self, session_id: str, template: TemplateSource,
                             root: Path | None, *, area: bool = True,
                             note: Mapping[str, str] | None = None) -> Workspace:
        assert root is not None, "the fake runtime's areas are host folders"
        folder = root / "area"
        folder.mkdir(parents=True, exist_ok=True)
        self.areas[session_id] = HostArea(folder.resolve(), template_folder(template))
        return Workspace(session_id, self.areas[session_id] if area else None)

    async def start(self, workspace: Workspace, component: Component) -> Instance:
        behaviour = self.behaviour(component)
        assert behaviour is not None, "checked by problems()"
        await asyncio.sleep(0)  # a start takes a turn of the loop, as a real one takes longer
        instance = FakeInstance(component, behaviour, workspace.session_id, self.counts.events)
        self.instances.append(instance)
        self.live.add(instance)
        self.counts.started.append(component.name)
        self.counts.events.append(f"start {component.name}")
        kind = component.kind
        self.counts.peak[kind] = max(self.counts.peak[kind], len(self.alive(kind)))
        if behaviour.exit_at_start is not None:
            instance.exit(behaviour.exit_at_start, *_python_stack(behaviour.error))
        return instance

    async def stop(self, instance: Instance) -> None:
        assert isinstance(instance, FakeInstance)
        if instance in self.live:
            self.live.discard(instance)
            self.counts.stopped.append(instance.component.name)
            self.counts.events.append(f"stop {instance.component.name}")
        instance.exit(None)
        await instance.client.aclose()

    async def close_workspace(self, workspace: Workspace) -> None:
        for instance in [i for i in self.live if i.session_id == workspace.session_id]:
            await self.stop(instance)
        self.areas.pop(workspace.session_id, None)

    async def aclose(self) -> None:
        for instance in list(self.live):
            await self.stop(instance)
