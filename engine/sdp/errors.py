"""SDP errors that carry the SIP answer they call for (400 for bad syntax, 488 for no agreement)."""

from __future__ import annotations

__all__ = ["SdpError", "SdpNegotiationError", "SdpParseError"]


class SdpError(Exception):
    status_code = 400
    reason_phrase = "Bad Request"


class SdpParseError(SdpError):
    """The body is not SDP we can read (RFC 8866 syntax). Answer 400 Bad Request."""

    def __init__(self, message: str, *, line_number: int | None = None) -> None:
        self.line_number = line_number
        prefix = f"SDP line {line_number}: " if line_number is not None else "SDP: "
        super().__init__(prefix + message)


class SdpNegotiationError(SdpError):
    """Nothing in the offer is acceptable under our policy (RFC 3264 §6). Answer 488."""

    status_code = 488
    reason_phrase = "Not Acceptable Here"

    def __init__(self, message: str) -> None:
        super().__init__(f"488 Not Acceptable Here: {message}")
