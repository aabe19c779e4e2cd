"""structlog set-up: JSON lines on stderr, one line per call event (never per SIP message unless
`logging.sip_messages` asks for it). Every record passes the LOG_RECORD hook point, where the
compliance layer's maskers and secret filters sit.

Invariants:
- One pipeline for every line: structlog's own loggers and the standard library's `logging`
  records (modules that log with `logging.getLogger`, and third-party libraries) both end in the
  same masking processor (`hooks.log_processor`) and the same JSON renderer. The standard
  library's records are formatted first (`%s` arguments, tracebacks), so what the masker sees
  is the text that would be printed: a card number in an argument or an exception is masked.
- Nothing reaches stderr around it: the root logger has exactly one handler, ours, and
  `logging.lastResort` is not used (it would print unmasked text).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from ..hooks.registry import HookPoint, HookRegistry

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of the write, not at configuration: a
    CLI command run in-process (tests, embedding) may swap and close the stream it started
    with, and a log line must never fail the call that logged it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str, hooks: HookRegistry, *, stream: TextIO | None = None) -> None:
    def hook_processor(logger: Any, method: str, event: MutableMapping[str, Any]
                       ) -> MutableMapping[str, Any]:
        processor = getattr(hooks, "log_processor", None)
        if processor is not None:
            return processor(logger, method, event)  # type: ignore[no-any-return]
        hooks.notify(HookPoint.LOG_RECORD, event)
        return event

    out: Any = stream if stream is not None else _CurrentStderr()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # tracebacks become text the masker sees
            hook_processor,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # The standard library's records: formatted (`record.getMessage()`, exc_info), then the
    # same masking processor and renderer as above.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            hook_processor,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    logging.lastResort = None  # never print a record around the masker
