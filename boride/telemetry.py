"""OpenTelemetry traces, off unless configured with the standard environment variables
(``OTEL_TRACES_EXPORTER=otlp`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``; ``OTEL_SERVICE_NAME``;
OTLP over HTTP/protobuf only). The packages are the optional extra ``otel``; they are imported
only when traces are configured, so boride starts as fast without them.

What is traced: a span per API request (:class:`RequestSpans`, named by its route's template,
its parent the request's W3C ``traceparent``), a span per build with children per stage and
per component start, readiness, call and resolver call (made after the build from its
:class:`~boride.pipeline.timeline.Timeline`, with their recorded times: :func:`export_build`),
spans per engine operation (:func:`operation`: container create and start, each round trip to a
session's helper), and the ``traceparent`` header on every request the front forwards
(:func:`headers`) and every component call (:func:`call_headers`: its parent is the call's own
span).

A build's spans are made after it, from its timeline; what happens during a build (engine
operations, component calls) is recorded meanwhile (:func:`recording`) and placed under the
build's spans then: an operation under the component start (else stage) it happened in, a
call's ``traceparent`` naming the span id its call's span is then made with."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from boride.pipeline.results import BuildResult
    from boride.pipeline.timeline import Span, Timeline

_tracer: Any = None  # the SDK's tracer once set up (None: traces off)
_provider: Any = None
_NOTHING = contextlib.nullcontext()  # (reusable: what traces off cost)


@dataclass
class Operation:
    """An engine operation done during a recorded build (its span is made afterwards)."""

    name: str
    start: float  # perf_counter seconds
    end: float
    attrs: dict[str, Any]
    error: str | None = None


@dataclass
class Recording:
    """What a build does meanwhile, for its spans: engine operations, and each component
    call's span id (sent in its ``traceparent``) with the step and when it was sent."""

    operations: list[Operation] = field(default_factory=list)
    calls: list[tuple[str, int, float]] = field(default_factory=list)


#: The recording of the build being run in this context (tasks and threads started from it
#: share it), None outside a build or while traces are off.
_recording: ContextVar[Recording | None] = ContextVar("boride_recording", default=None)
#: The span id the next span made here gets (a call's span, named in its traceparent already).
_forced_span_id: ContextVar[int | None] = ContextVar("boride_forced_span_id", default=None)


def configured() -> bool:
    """Whether the environment asks for traces (``none`` or ``OTEL_SDK_DISABLED`` do not)."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter in ("none", "off"):
        return False
    return exporter == "otlp" or bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                                      or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def enabled() -> bool:
    return _tracer is not None


def setup() -> bool:
    """Set traces up from the environment (once; flushed at exit). A one-line warning, and
    traces off, when configured but not installed or asked for another protocol."""
    global _tracer, _provider
    if _tracer is not None or not configured():
        return _tracer is not None
    env = os.environ
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip().lower()
    if protocol != "http/protobuf":
        print(f"boride: OTLP protocol {protocol!r} is not supported (only http/protobuf); "
              "traces are off", file=sys.stderr)
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        print(f"boride: OpenTelemetry traces are configured but not installed ({exc.name} is "
              "missing: pip install 'boride[otel]'); traces are off", file=sys.stderr)
        return False
    from boride import __version__
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "boride",
                                "service.version": __version__})
    # An unreachable collector: its one error line per batch, not each retry's warning.
    logging.getLogger("opentelemetry.exporter").setLevel(logging.ERROR)
    provider = TracerProvider(resource=resource, id_generator=_ids())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider, _tracer = provider, provider.get_tracer("boride", __version__)
    atexit.register(shutdown)
    return True


def _ids() -> Any:
    """The SDK's random ids, except a span id given in advance (:data:`_forced_span_id`)."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class Ids(RandomIdGenerator):
        def generate_span_id(self) -> int:
            forced = _forced_span_id.get()
            return forced if forced is not None else super().generate_span_id()

    return Ids()


def shutdown() -> None:
    """Send what is left and stop (at exit of run, serve and front)."""
    global _tracer, _provider
    if _provider is not None:
        provider, _provider, _tracer = _provider, None, None
        provider.shutdown()


def flush() -> None:
    """Send the spans ended so far (a server's lifespan end: uvicorn then raises the signal
    it caught again, which ends the process before any exit hook)."""
    if _provider is not None:
        _provider.force_flush(10_000)


def headers() -> dict[str, str]:
    """The current span's W3C ``traceparent`` to send on (nothing when traces are off)."""
    if _tracer is None:
        return {}
    from opentelemetry.propagate import inject
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


def call_headers() -> dict[str, str]:
    """A component call's ``traceparent``: during a recorded build, its parent is the span
    the call gets afterwards (its id chosen now, kept with the call's step, the
    :data:`boride.logs.component` of the call); else the current span (:func:`headers`)."""
    rec = _recording.get() if _tracer is not None else None
    if rec is None:
        return headers()
    from opentelemetry import trace
    from opentelemetry.propagate import inject

    from boride import logs
    current = trace.get_current_span().get_span_context()
    span_id = random.getrandbits(64) or 1
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
        current.trace_id, span_id, is_remote=False, trace_flags=current.trace_flags,
        trace_state=current.trace_state)))
    rec.calls.append((logs.component.get() or "", span_id, time.perf_counter()))
    carrier: dict[str, str] = {}
    inject(carrier, context=ctx)
    return carrier


@contextlib.contextmanager
def recording() -> Iterator[None]:
    """Record what the build run in this block does, for :func:`export_build` (called in the
    block) to place under its spans (nothing when traces are off)."""
    if _tracer is None:
        yield
        return
    token = _recording.set(Recording())
    try:
        yield
    finally:
        _recording.reset(token)


@contextlib.contextmanager
def _root(name: str) -> Iterator[Any]:
    with _tracer.start_as_current_span(name) as root, recording():
        yield root


def span(name: str) -> contextlib.AbstractContextManager[Any]:
    """A span current in its block, recording the build run in it (``boride run``'s: the
    trace its component calls carry), or nothing when traces are off."""
    if _tracer is None:
        return contextlib.nullcontext()
    return _root(name)


def operation(name: str, **attrs: Any) -> contextlib.AbstractContextManager[Any]:
    """An engine operation's span (``container create``, ``helper POST /dirs``; attributes
    ``boride.<key>``, None left out): recorded during a build (placed under its spans
    afterwards), else a child of the current span; nothing when traces are off."""
    if _tracer is None:
        return _NOTHING
    return _operation(name, {f"boride.{k}": v for k, v in attrs.items() if v is not None})


@contextlib.contextmanager
def _operation(name: str, attrs: dict[str, Any]) -> Iterator[None]:
    rec = _recording.get()
    if rec is None:
        with _tracer.start_as_current_span(name, attributes=attrs):
            yield
        return
    op = Operation(name, time.perf_counter(), 0.0, attrs)
    try:
        yield
    except BaseException as exc:
        from boride.errors import describe
        op.error = describe(exc)
        raise
    finally:
        op.end = time.perf_counter()
        rec.operations.append(op)


def timeline() -> Timeline | None:
    """A build's timeline to make its spans from (None when traces are off)."""
    if _tracer is None:
        return None
    from boride.pipeline.timeline import Timeline
    return Timeline()


class RequestSpans:
    """A server span per HTTP request, a child of its ``traceparent`` when valid; named
    ``METHOD /route/{template}`` once routed. Without a client's trace id, the request's log
    trace id (``X-Trace-Id``) is the span's, so logs and traces agree."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _tracer is None:
            await self.app(scope, receive, send)
            return
        from opentelemetry import trace
        from opentelemetry.propagate import extract

        from boride.server.middleware import route_of
        from boride.server.problems import incoming_trace_id
        raw = scope.get("headers", [])
        carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
        method, path = scope["method"], scope["path"]
        status = 500
        with _tracer.start_as_current_span(
                f"{method} {path}", context=extract(carrier), kind=trace.SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": path,
                            "url.scheme": scope.get("scheme", "http")}) as span:
            if incoming_trace_id(raw) is None:
                scope.setdefault("state", {})["trace_id"] = \
                    trace.format_trace_id(span.get_span_context().trace_id)

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            finally:
                route = route_of(scope)
                if route != "unmatched":
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(trace.StatusCode.ERROR, f"HTTP {status}")


def export_build(line: Timeline | None, result: BuildResult | int) -> None:
    """The build's spans from its timeline, under the current span (a request's, or none):
    the build, its stages, and within them each component's start, readiness and call
    (a failed component's last span: status ERROR with its error), each call with the span
    id its ``traceparent`` named, and the engine operations recorded meanwhile."""
    if _tracer is None or line is None or isinstance(result, int):
        return  # (an int: the build was interrupted, its exit status)
    from opentelemetry import trace

    from boride.pipeline.timeline import BUILD_ROW
    spans = line.spans
    whole = next((s for s in spans if s.row == BUILD_ROW and s.name == "build"), None)
    if whole is None:
        return
    made = _Made(trace)
    current = trace.get_current_span()
    build = made.start("build", whole, current if current.get_span_context().is_valid
                       else None, {"boride.status": str(result.status),
                                   "boride.session": result.session})
    stages = [(s, made.start(f"stage {s.name}", s, build, {"boride.stage": s.name}))
              for s in spans if s.row == BUILD_ROW and s is not whole]
    rec = _recording.get() or Recording()
    done = _component_spans(made, spans, stages, build, result, rec)
    _operation_spans(made, rec.operations, done + stages, build)
    for s, span in stages:
        span.end(end_time=made.ns(s.end))
    if not result.ok:
        first = result.errors[0] if result.errors else "build failed"
        build.set_status(trace.StatusCode.ERROR, first)
        build.set_attribute("boride.errors", list(result.errors))
    build.end(end_time=made.ns(whole.end))


class _Made:
    """Makes spans at a timeline's recorded (perf_counter) times."""

    def __init__(self, trace: Any) -> None:
        self.trace = trace
        self.now_ns, self.now = time.time_ns(), time.perf_counter()

    def ns(self, t: float) -> int:
        return self.now_ns - int((self.now - t) * 1e9)

    def start(self, name: str, s: Span | Operation, parent: Any, attrs: dict[str, Any], *,
              span_id: int | None = None, client: bool = False) -> Any:
        trace = self.trace
        ctx = trace.set_span_in_context(parent) if parent is not None else None
        kind = trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL
        token = _forced_span_id.set(span_id)
        try:
            return _tracer.start_span(name, context=ctx, kind=kind, start_time=self.ns(s.start),
                                      attributes={k: v for k, v in attrs.items()
                                                  if v is not None})
        finally:
            _forced_span_id.reset(token)


def _component_spans(made: _Made, spans: list[Span], stages: list[tuple[Span, Any]],
                     build: Any, result: BuildResult, rec: Recording) -> list[tuple[Span, Any]]:
    """Each component's start, readiness and call spans, the merge and the output, under the
    stage they happened in; the spans made (ended)."""
    from boride.pipeline.timeline import BUILD_ROW, MERGE_ROW
    errors = {c.name: c.error for c in result.components if c.error}
    rows = _component_rows(spans)
    failed = _failed(spans, errors)
    call_ids = _call_ids(spans, rec.calls)
    done = []
    for i, s in enumerate(spans):
        if s.row == BUILD_ROW or (s.row == MERGE_ROW and s.name != "merge"):
            continue  # (the merge row's resolver calls are the resolvers' own spans)
        parent = _innermost(s, stages) or build
        kind, _, instance = s.row.partition(" ")
        # "call processor p1", "start resolver r", ...; "merge", "output"
        name = f"{s.name.split(' ')[0]} {s.row}" if s.row in rows else s.name
        span = made.start(name, s, parent, {
            "boride.component": instance or None, "boride.kind": kind if instance else None,
            "boride.step": s.args.get("step"), "boride.cached": s.args.get("cached"),
            "boride.config_digest": s.args.get("config"), "boride.path": s.args.get("path")},
            span_id=call_ids.get(i), client=s.slot)
        if i in failed:
            span.set_status(made.trace.StatusCode.ERROR, failed[i])
            span.set_attribute("boride.error", failed[i])
        span.end(end_time=made.ns(s.end))
        done.append((s, span))
    return done


def _call_ids(spans: list[Span], calls: list[tuple[str, int, float]]) -> dict[int, int]:
    """The span id each call's ``traceparent`` named, by the call span's index: a step's
    calls and its headers sent, both in the order they began, paired within the call."""
    ids: dict[int, int] = {}
    sent: dict[str, list[tuple[float, int]]] = {}
    for step, span_id, at in calls:
        sent.setdefault(step, []).append((at, span_id))
    for step, headers in sent.items():
        mine = sorted((i for i, s in enumerate(spans) if s.slot and s.args.get("step") == step),
                      key=lambda i: spans[i].start)
        pending = sorted(headers)
        for i in mine:
            while pending and pending[0][0] < spans[i].start:
                pending.pop(0)  # (a header of a call that has no span: a retry cut off)
            if pending and pending[0][0] <= spans[i].end:
                ids[i] = pending.pop(0)[1]
    return ids


def _innermost(s: Span | Operation, among: Iterable[tuple[Span, Any]],
               component: str | None = None) -> Any:
    """The shortest of ``among``'s spans that ``s`` happened in (of ``component``'s row when
    one of those does), or None."""
    inside = [(t, span) for t, span in among if t.start <= s.start and s.end <= t.end]
    own = [(t, span) for t, span in inside if component and t.row.partition(" ")[2] == component]
    best = min(own or inside, key=lambda p: p[0].end - p[0].start, default=None)
    return best[1] if best is not None else None


def _operation_spans(made: _Made, operations: list[Operation],
                     among: list[tuple[Span, Any]], build: Any) -> None:
    """The engine operations' spans: each under its component's span it happened in (its
    start), else the innermost span it happened in, else the build."""
    for op in list(operations):
        parent = _innermost(op, among, op.attrs.get("boride.component")) or build
        span = made.start(op.name, op, parent, op.attrs, client=True)
        if op.error is not None:
            span.set_status(made.trace.StatusCode.ERROR, op.error)
        span.end(end_time=made.ns(op.end))


def _failed(spans: list[Span], errors: dict[str, str]) -> dict[int, str]:
    """A failed component's error on its last span (its call's, else its start's), by the
    span's index."""
    last = {_key(s): i for i, s in enumerate(spans) if _key(s) in errors}
    return {i: errors[key] for key, i in last.items()}


def _key(s: Span) -> str:
    """The component result a span belongs to: its step's, else its instance's."""
    step = s.args.get("step")
    return step if isinstance(step, str) else s.row.partition(" ")[2]


def _component_rows(spans: Iterable[Span]) -> set[str]:
    from boride.pipeline.timeline import BUILD_ROW, MERGE_ROW, OUTPUT_ROW
    return {s.row for s in spans} - {BUILD_ROW, MERGE_ROW, OUTPUT_ROW}
