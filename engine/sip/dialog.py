"""Dialog state (RFC 3261 §12) for one side of a call, and the in-dialog requests it builds.

Invariants:
- A dialog is identified by (Call-ID, local tag, remote tag) (§12); `local_seq` only grows.
- The route set is fixed when the dialog is created (§12.1.1 UAS, §12.1.2 UAC) and never
  changed by target refreshes, which only move `remote_target` (§12.2).
- Requests built here carry no Via: the transaction layer adds ours when it sends them.
"""

from __future__ import annotations

from .headers import format_name_addr, parse_name_addr
from .message import Request, Response


class Dialog:
    __slots__ = (
        "call_id", "local_tag", "remote_tag", "local_uri", "remote_uri", "local_seq",
        "remote_seq", "remote_target", "route_set", "local_contact",
    )

    def __init__(
        self,
        *,
        call_id: str,
        local_tag: str,
        remote_tag: str | None,
        local_uri: str,
        remote_uri: str,
        local_seq: int,
        remote_seq: int | None,
        remote_target: str,
        route_set: tuple[str, ...],
        local_contact: str,
    ) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_uri = local_uri  # the name-addr we put in From, without tag
        self.remote_uri = remote_uri  # the name-addr we put in To, without tag
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.remote_target = remote_target  # the peer's Contact URI
        self.route_set = route_set
        self.local_contact = local_contact

    @classmethod
    def as_uas(cls, request: Request, local_tag: str, local_contact: str) -> Dialog:
        """Dialog state of a UAS that answers `request` (RFC 3261 §12.1.1)."""
        contacts = request.values("contact")
        target = parse_name_addr(contacts[0]).uri if contacts else request.from_.uri
        from_ = request.from_
        to = request.to
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=from_.tag,
            local_uri=format_name_addr(to.display, to.uri, {}),
            remote_uri=format_name_addr(from_.display, from_.uri, {}),
            local_seq=0,
            remote_seq=request.cseq.number,
            remote_target=target,
            route_set=tuple(request.values("record-route")),
            local_contact=local_contact,
        )

    def confirm_as_uac(self, response: Response) -> None:
        """Take the remote tag, target and route set from a dialog-creating response
        (RFC 3261 §12.1.2: the route set is the Record-Route list in reverse)."""
        self.remote_tag = response.to.tag
        contacts = response.values("contact")
        if contacts:
            self.remote_target = parse_name_addr(contacts[0]).uri
        self.route_set = tuple(reversed(response.values("record-route")))

    def refresh_target(self, message: Request | Response) -> None:
        """A target refresh (re-INVITE, UPDATE, or its 2xx) moves the remote target (§12.2)."""
        contacts = message.values("contact")
        if contacts:
            self.remote_target = parse_name_addr(contacts[0]).uri

    def accepts_remote_seq(self, cseq: int) -> bool:
        """§12.2.2: a request with a lower CSeq than the last one is out of order (500)."""
        if self.remote_seq is not None and cseq < self.remote_seq:
            return False
        self.remote_seq = cseq
        return True

    def new_request(self, method: str, body: bytes = b"", content_type: str | None = None,
                    *, cseq: int | None = None) -> Request:
        """An in-dialog request (RFC 3261 §12.2.1.1). ACK and CANCEL pass `cseq` explicitly."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        headers: dict[str, list[str]] = {}
        if self.route_set:
            headers["route"] = list(self.route_set)
        headers["max-forwards"] = ["70"]
        headers["from"] = [f"{self.local_uri};tag={self.local_tag}"]
        headers["to"] = [
            f"{self.remote_uri};tag={self.remote_tag}" if self.remote_tag else self.remote_uri
        ]
        headers["call-id"] = [self.call_id]
        headers["cseq"] = [f"{cseq} {method}"]
        if method in ("INVITE", "UPDATE", "SUBSCRIBE", "REFER"):
            headers["contact"] = [self.local_contact]
        if body:
            headers["content-type"] = [content_type or "application/sdp"]
        return Request(method, self.remote_target, headers, body)

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.call_id, self.local_tag, self.remote_tag)
