"""The one error the router raises.

A `RoutingError` means the caller asked for something the router's state does not allow (an
unknown call, an answer from an agent that was never offered the call, a login while logged
in). It is raised before anything changes, so the router is exactly as it was.
"""

from __future__ import annotations


class RoutingError(ValueError):
    """A command that does not fit the router's current state; nothing was changed."""
