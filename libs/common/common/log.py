"""structlog set-up: JSON lines by default, a readable console with DEBUG=true."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import orjson
import structlog

from common.settings import CommonSettings


def _add_trace_ids(
    _: object, __: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid and "trace_id" not in event_dict:
        event_dict["trace_id"] = format(ctx.trace_id, "032x")
        event_dict["span_id"] = format(ctx.span_id, "016x")
    return event_dict


def _dumps(value: object, **_: object) -> str:
    # orjson: several times faster than json for the access log line of every request.
    return orjson.dumps(value, default=str).decode()


def configure_logging(settings: CommonSettings, service: str, stream: TextIO = sys.stdout) -> None:
    """Route structlog and the standard library's loggers to one stream (a command whose
    output is data logs to stderr)."""
    level = logging.DEBUG if settings.debug else getattr(logging, settings.log_level)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
    ]
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer()
        if settings.debug
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aio-pika and aiormq are chatty at INFO about every reconnect attempt.
    logging.getLogger("aiormq").setLevel(max(level, logging.WARNING))
    structlog.contextvars.bind_contextvars(service=service)
