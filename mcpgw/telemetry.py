"""OpenTelemetry for the gateway: the tracer provider of a serving process, and trace propagation.

`start_telemetry` runs once when `mcpgw serve` starts, from the `[telemetry]` table; with the
default (`exporter = "none"`) it does nothing at all: no SDK import, no exporter thread, and the
pipeline gets no trace stage, so tracing costs nothing when it is off. When on, it installs the
process-wide tracer provider, which the MCP SDK's own client spans use too: each upstream request
becomes a CLIENT span under the step's span, and its context is injected into the request's
`_meta` (and, through `inject_trace_headers`, into the HTTP headers of http/sse upstreams).

The span of each step is made by the pipeline's trace stage (`mcpgw.pipeline.stages.trace`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx2
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mcpgw import __version__
from mcpgw.config.models import TelemetrySettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import SamplingResult

log = logging.getLogger("mcpgw.telemetry")

TRACER_NAME = "mcpgw"
PROPAGATOR = TraceContextTextMapPropagator()
"""W3C trace context only (`traceparent`, `tracestate`): what MCP `_meta` and HTTP headers carry."""


class Telemetry:
    """A running tracer provider. `shutdown` exports what is still buffered (bounded)."""

    def __init__(self, provider: TracerProvider, settings: TelemetrySettings) -> None:
        self.provider = provider
        self.settings = settings
        self.tracer = provider.get_tracer(TRACER_NAME, __version__)

        self._shut = False

    def shutdown(self) -> None:
        """Blocking (up to `timeout` per export); idempotent."""
        if self._shut:
            return
        self._shut = True
        timeout_ms = int(self.settings.timeout * 1000)
        if not self.provider.force_flush(timeout_ms):
            log.warning("telemetry: some spans could not be exported within %gs at shutdown", self.settings.timeout)
        self.provider.shutdown()


def start_telemetry(settings: TelemetrySettings, gateway_name: str) -> Telemetry | None:
    """Install the process-wide tracer provider described by `settings`; None when tracing is off."""
    if not settings.enabled:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    resource = Resource.create({
        "service.name": settings.service_name or gateway_name,
        "service.version": __version__,
        **settings.resource,
    })
    provider = TracerProvider(resource=resource, sampler=_step_sampler(settings.sample_ratio))
    if settings.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.endpoint, headers=dict(settings.headers),
                                    timeout=settings.timeout)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        where = settings.endpoint
    else:
        # stderr, never stdout: on the stdio front stdout is the protocol stream. One line per span.
        console = ConsoleSpanExporter(out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n")
        provider.add_span_processor(SimpleSpanProcessor(console))
        where = "stderr"
    trace.set_tracer_provider(provider)
    log.info("tracing on: %s exporter to %s, service.name=%s, sample_ratio=%g", settings.exporter, where,
             resource.attributes.get("service.name"), settings.sample_ratio)
    return Telemetry(provider, settings)


def _step_sampler(ratio: float) -> Any:
    """Follow the caller's sampling decision; sample `ratio` of traces that start here; and drop
    the gateway's own upstream traffic (connects, liveness probes, listing refreshes).

    That traffic shows up as root CLIENT spans (the SDK's spans for requests made outside any
    step); a trace per health probe would bury the steps.
    """
    from opentelemetry.sdk.trace.sampling import (
        Decision,
        ParentBased,
        Sampler,
        SamplingResult,
        TraceIdRatioBased,
    )

    steps = ParentBased(TraceIdRatioBased(ratio))

    class StepSampler(Sampler):
        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: trace.SpanKind | None = None,
            attributes: Any = None,
            links: Sequence[trace.Link] | None = None,
            trace_state: trace.TraceState | None = None,
        ) -> SamplingResult:
            if kind is trace.SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
                return SamplingResult(Decision.DROP)
            return steps.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"StepSampler(ratio={ratio:g})"

    return StepSampler()


async def inject_trace_headers(request: httpx2.Request) -> None:
    """An httpx2 request hook: W3C `traceparent`/`tracestate` headers from the current context.

    The SDK's HTTP client transports send each POST in the context of the request that caused it,
    so the current span is the SDK's CLIENT span of that MCP request, the same one its `_meta`
    carries.
    """
    PROPAGATOR.inject(request.headers)
