"""Traces: OpenTelemetry, off unless the standard OTEL_EXPORTER_OTLP_* variables name a collector.

One event's path is one trace: the ingest request's span, then one span per delivery attempt,
made a child of the ingest span through the W3C `traceparent` stored with the delivery — so
retries hours apart, on any worker, still land in the same trace.

Tracing is process-wide, like logging: `configure` runs once at start-up. While it is off
nothing here imports OpenTelemetry, and each hook below costs one check of a module variable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from starlette.types import ASGIApp

from relay import logs

if TYPE_CHECKING:
    import httpx
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import Span, Tracer

# Set by `enable`; None means tracing is off.
_provider: TracerProvider | None = None
_tracer: Tracer | None = None

_QUIET_PATHS = "/healthz,/readyz,/metrics"


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard variables ask for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


# The endpoint variables the OTLP/HTTP exporter reads: each must be an http(s) URL.
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def endpoint_problems(environ: Mapping[str, str] = os.environ) -> list[str]:
    """What is wrong with the OTLP endpoints set, each naming its variable.

    The exporter takes any string and fails on every export, so a typo would lose every trace
    with nothing but a log line per batch; relay refuses it at start-up instead.
    """
    problems = []
    for name in _ENDPOINTS:
        value = environ.get(name, "").strip()
        parts = urlsplit(value)
        if value and (parts.scheme not in {"http", "https"} or not parts.hostname):
            problems.append(
                f"{name}: give an http:// or https:// URL, such as http://collector:4318"
            )
    return problems


def describe(environ: Mapping[str, str] = os.environ) -> str:
    """Whether traces would be exported, and where, for `relay config check`."""
    if not wanted(environ):
        return "off (OTEL_EXPORTER_OTLP_ENDPOINT is unset)"
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return f"on, OTLP/HTTP to {endpoint}"


def configure(service_name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Export spans over OTLP/HTTP when the environment asks for it; tell whether it does."""
    if not wanted(environ):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The exporter reads the endpoint, headers, timeout and compression from the environment.
    enable(BatchSpanProcessor(OTLPSpanExporter()), service_name)
    return True


def enable(processor: SpanProcessor, service_name: str) -> None:
    """Start tracing into `processor` (the OTLP exporter, or an in-memory one in tests)."""
    global _provider, _tracer
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(processor)
    _tracer = _provider.get_tracer("relay")


def shutdown() -> None:
    """Flush what is buffered and turn tracing off."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = None


def enabled() -> bool:
    """Whether spans are being recorded."""
    return _tracer is not None


def asgi(app: ASGIApp) -> ASGIApp:
    """`app` with a server span per request (continuing a caller's `traceparent`), if tracing."""
    if _provider is None:
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(
        app,
        excluded_urls=_QUIET_PATHS,
        tracer_provider=_provider,
        exclude_spans=["receive", "send"],
    )


def instrument(client: httpx.AsyncClient) -> None:
    """Give each request `client` makes an HTTP client span, under the current span."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    async def without_secrets(span: Span, request: Any) -> None:  # async: an AsyncClient's
        # Webhook URLs may carry credentials or tokens in their query: record only the rest.
        parts = urlsplit(str(request.url))
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        plain = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        for name in ("url.full", "http.url"):  # current and older semantic conventions
            span.set_attribute(name, plain)

    HTTPXClientInstrumentor.instrument_client(
        client, tracer_provider=_provider, request_hook=without_secrets
    )


def context_headers() -> frozenset[str]:
    """The headers the client span's instrumentation adds to a request (none when not tracing).

    They carry the trace id of whoever started the event's trace, often the upstream's.
    """
    if _provider is None:
        return frozenset()
    from opentelemetry.propagate import get_global_textmap

    return frozenset(get_global_textmap().fields)


def trace_id() -> str | None:
    """The current trace's id in hex, for log lines; None when not tracing."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def traceparent() -> str | None:
    """The W3C `traceparent` of the current span, to store with what it creates."""
    if _tracer is None:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


def attempt_span(
    parent: str | None, attributes: Mapping[str, str | int]
) -> AbstractContextManager[None]:
    """A span for one delivery attempt, a child of the span whose `traceparent` is `parent`."""
    # Every attempt enters one: when not tracing, a context manager that does nothing at all.
    return _NO_SPAN if _tracer is None else _attempt_span(_tracer, parent, attributes)


_NO_SPAN = nullcontext()


@contextmanager
def _attempt_span(
    tracer: Tracer, parent: str | None, attributes: Mapping[str, str | int]
) -> Iterator[None]:
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    context = extract({"traceparent": parent}) if parent else None
    named = {f"relay.{k}": v for k, v in attributes.items()}
    with tracer.start_as_current_span(
        "deliver", context=context, kind=SpanKind.CONSUMER, attributes=named
    ):
        logs.annotate(trace_id=trace_id())
        yield


def record_attempt(status_code: int | None, error: str | None) -> None:
    """Put an attempt's outcome on the current attempt span (no-op when not tracing)."""
    if _tracer is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    span = trace.get_current_span()
    if status_code is not None:
        span.set_attribute("http.response.status_code", status_code)
    if error is not None or status_code is None or not 200 <= status_code < 300:
        span.set_status(Status(StatusCode.ERROR, error or f"status {status_code}"))
