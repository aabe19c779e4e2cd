"""Errors that carry their SIP answer.

A `SipParseError` knows the status a UAS should answer with (400, 416, 420, 483, 505...) so the
single place that turns errors into responses never has to guess. When the message cannot be
answered at all (a broken response, a request without the headers a response needs), the caller
drops it and counts it.
"""

from __future__ import annotations


class SipParseError(ValueError):
    """A message that is not valid SIP. `status` is the response a UAS should send."""

    def __init__(self, message: str, status: int = 400, reason: str = "Bad Request") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class SipFramingError(SipParseError):
    """A stream that can no longer be framed (TCP/TLS): the connection must be closed."""
