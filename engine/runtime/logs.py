"""structlog set-up: JSON lines on stderr, one line per call event (never per SIP message unless
`logging.sip_messages` asks for it). Every record passes the LOG_RECORD hook point, where the
compliance layer's maskers and secret filters sit."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from ..hooks.registry import HookPoint, HookRegistry

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(level: str, hooks: HookRegistry) -> None:
    def hook_processor(logger: Any, method: str, event: MutableMapping[str, Any]
                       ) -> MutableMapping[str, Any]:
        processor = getattr(hooks, "log_processor", None)
        if processor is not None:
            return processor(logger, method, event)  # type: ignore[no-any-return]
        hooks.notify(HookPoint.LOG_RECORD, event)
        return event

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            hook_processor,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
