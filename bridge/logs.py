"""Logging: structlog JSON (or console) on stderr, with the standard library routed through it.

Log lines carry identifiers only (control ID, event ID, channel, attempt,
outcome); the code never passes message content to a logger.
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure", "error_fields"]


def configure(level: str = "info", fmt: str = "json") -> None:
    """Set up structlog and the standard library's root logger (uvicorn logs through it)."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Lines below the level are dropped before any processor runs (they are on the ACK path).
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Access logs would repeat every request path; our own events log what matters, with identifiers.
    logging.getLogger("uvicorn.access").disabled = True


def error_fields(exc: BaseException) -> dict[str, str]:
    """Log fields for an exception: its type and where it was raised, never its message.

    Exception messages can quote the input (pydantic's ``input_value``, a parser's
    offending text), so tracebacks with messages never reach the logs.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb is not None else ""
    return {"error": type(exc).__name__, "error_at": where}
