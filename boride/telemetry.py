"""OpenTelemetry traces, off unless configured with the standard environment variables
(``OTEL_TRACES_EXPORTER=otlp`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``; ``OTEL_SERVICE_NAME``;
OTLP over HTTP/protobuf only). The packages are the optional extra ``otel``; they are imported
only when traces are configured, so boride starts as fast without them.

What is traced: a span per API request (:class:`RequestSpans`, named by its route's template,
its parent the request's W3C ``traceparent``), a span per build with children per stage and
per component start, readiness, call and resolver call (made after the build from its
:class:`~boride.pipeline.timeline.Timeline`, with their recorded times: :func:`export_build`),
and the ``traceparent`` header on every component call and every request the front forwards
(:func:`headers`)."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from boride.pipeline.results import BuildResult
    from boride.pipeline.timeline import Span, Timeline

_tracer: Any = None  # the SDK's tracer once set up (None: traces off)
_provider: Any = None


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
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider, _tracer = provider, provider.get_tracer("boride", __version__)
    atexit.register(shutdown)
    return True


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


def span(name: str) -> contextlib.AbstractContextManager[Any]:
    """A span current in its block (``boride run``'s: the trace its component calls carry),
    or nothing when traces are off."""
    if _tracer is None:
        return contextlib.nullcontext()
    return _tracer.start_as_current_span(name)  # type: ignore[no-any-return]


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
    (a failed component's last span: status ERROR with its error)."""
    if _tracer is None or line is None or isinstance(result, int):
        return  # (an int: the build was interrupted, its exit status)
    from opentelemetry import trace

    from boride.pipeline.timeline import BUILD_ROW, MERGE_ROW
    now_ns, now = time.time_ns(), time.perf_counter()

    def ns(t: float) -> int:
        return now_ns - int((now - t) * 1e9)

    def start(name: str, s: Span, parent: Any, **attrs: Any) -> Any:
        ctx = trace.set_span_in_context(parent) if parent is not None else None
        kind = trace.SpanKind.CLIENT if s.slot else trace.SpanKind.INTERNAL
        return _tracer.start_span(name, context=ctx, kind=kind, start_time=ns(s.start),
                                  attributes={k: v for k, v in attrs.items() if v is not None})

    spans = line.spans
    whole = next((s for s in spans if s.row == BUILD_ROW and s.name == "build"), None)
    if whole is None:
        return
    errors = {c.name: c.error for c in result.components if c.error}
    build = start("build", whole, trace.get_current_span() if trace.get_current_span()
                  .get_span_context().is_valid else None,
                  **{"boride.status": str(result.status), "boride.session": result.session})
    rows = _component_rows(spans)
    stages = [(s, start(f"stage {s.name}", s, build, **{"boride.stage": s.name}))
              for s in spans if s.row == BUILD_ROW and s is not whole]
    failed = _failed(spans, errors)
    for i, s in enumerate(spans):
        if s.row == BUILD_ROW or (s.row == MERGE_ROW and s.name != "merge"):
            continue  # (the merge row's resolver calls are the resolvers' own spans)
        parent = next((o for st, o in reversed(stages) if st.start <= s.start
                       and s.end <= st.end), build)
        kind, _, instance = s.row.partition(" ")
        # "call processor p1", "start resolver r", ...; "merge", "output"
        name = f"{s.name.split(' ')[0]} {s.row}" if s.row in rows else s.name
        span = start(name, s, parent, **{
            "boride.component": instance or None, "boride.kind": kind if instance else None,
            "boride.step": s.args.get("step"), "boride.cached": s.args.get("cached"),
            "boride.config_digest": s.args.get("config"), "boride.path": s.args.get("path")})
        if i in failed:
            span.set_status(trace.StatusCode.ERROR, failed[i])
            span.set_attribute("boride.error", failed[i])
        span.end(end_time=ns(s.end))
    for s, span in stages:
        span.end(end_time=ns(s.end))
    if not result.ok:
        first = result.errors[0] if result.errors else "build failed"
        build.set_status(trace.StatusCode.ERROR, first)
        build.set_attribute("boride.errors", list(result.errors))
    build.end(end_time=ns(whole.end))


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
