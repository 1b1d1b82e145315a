"""JSON log lines on stderr (structlog), one object per line, for the worker and the
libraries it uses (their stdlib ``logging`` records go through the same renderer)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from redis.asyncio.sentinel import MasterNotFoundError

from agentpool.connection import RedisURLError, is_sentinel_url, parse_sentinel_url
from agentpool.redis_errors import sentinel_failure, without_object_reprs
from agentpool.urls import host_port, mask_urls

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def configure_logging(level: str = "info", **context: Any) -> None:
    """Send structlog and stdlib logging to stderr as JSON; `context` goes on every line."""
    numeric = LEVELS.get(level, logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("msg"),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**context)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("msg"),
            structlog.processors.JSONRenderer(),
        ],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))


def debug_enabled(logger: Any) -> bool:
    """Whether `logger` writes debug lines: asked once, so that a line per task costs nothing
    (not even its arguments) when it would not be written."""
    check = getattr(logger, "is_enabled_for", None) or getattr(logger, "isEnabledFor", None)
    return True if check is None else bool(check(logging.DEBUG))


def redis_error(exc: BaseException, url: str) -> str:
    """``Type: message`` of a failed Redis request, for a log line or /readyz: no URL's
    credentials, no client's repr (redis-py quotes whole clients, a kilobyte each); through
    Sentinel, which primary was asked of which sentinels and the last error one gave."""
    if isinstance(exc, MasterNotFoundError) and is_sentinel_url(url):
        try:
            parsed = parse_sentinel_url(url)
        except RedisURLError:
            pass
        else:
            sentinels = [host_port(host, port) for host, port in parsed.sentinels]
            return (f"{type(exc).__name__}: "
                    + mask_urls(sentinel_failure(parsed.service, sentinels, str(exc))))
    return mask_urls(without_object_reprs(f"{type(exc).__name__}: {exc}"))
