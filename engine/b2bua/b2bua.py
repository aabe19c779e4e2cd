"""The B2BUA: the transaction user that turns SIP into calls of two legs (no I/O).

Invariants:
- Every call is two dialogs: we are the UAS of the caller's leg (A) and the UAC of each callee
  leg (B). Nothing of one dialog (Call-ID, tags, CSeq, Via) leaks into the other; bodies (SDP)
  pass through unchanged until media anchoring rewrites them.
- A request we cannot route gets exactly one final answer; a call that ends sends BYE or CANCEL
  to every leg still up, and writes exactly one call record.
- Time and randomness come in as arguments; outbound bytes leave through the transaction layer.
- Calls do not form reference cycles that outlive them (`Call.finish`), so ten thousand held calls
  cost the garbage collector nothing when they end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..hooks.registry import HookPoint, HookRegistry
from ..runtime.config import Config, music_on_hold_by_queue
from ..sip.dialog import Dialog
from ..sip.digest import build_authorization
from ..sip.endpoint import Flow, TransactionLayer
from ..sip.errors import SipParseError
from ..sip.headers import parse_name_addr
from ..sip.message import Request, Response, build_response, reason_phrase
from ..sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ClientTransaction,
    ServerInviteTransaction,
    ServerTransaction,
    State,
    Transaction,
)
from ..sip.uri import parse_uri
from ..sip.validate import ALLOWED_METHODS, warning_header
from .authgate import DigestGate, Reply
from .call import Call, CallRecord, CallState, CallStateChanged, Leg, Side
from .cdrmap import note_end, note_hold, record_of
from .dialplan import Dialplan, Route
from .location import LocationService
from .registrar import QualifyProbe, Registrar
from .timers import CallTimer, CallTimerWheel

# Final responses from a callee mapped to what the caller hears (RFC 3261 §16.7 picks the
# "best" response; a B2BUA passes the callee's meaning through).
CAUSES = {
    486: "busy", 600: "busy", 603: "declined", 404: "not_found", 604: "not_found",
    408: "no_answer", 480: "unavailable", 487: "cancelled",
}
SUPPORTED = "timer"


# (rewritten SDP or None, error status, reason, now): a media answer arrives later than the
# message that asked for it, so the B2BUA continues in the callback.
MediaDone = Callable[[bytes | None, int, str, float], None]
# (our answer for the caller, our narrowed offer for the callee legs, error status, reason, now):
# the media plane answered the caller alone and plays music (both None when it could not).
MusicDone = Callable[[bytes | None, bytes | None, int, str, float], None]


class MediaPort(Protocol):
    """The media plane as the B2BUA sees it: commands out, results back through `done`
    (the runtime adapts the asyncio controller of vaultpbx.media). Legs are "caller"/"callee";
    policies are the YAML `srtp:` values (required / optional / off)."""

    def offer(self, call_id: str, leg: str, sdp: bytes, policy: str | None,
              other_policy: str | None, done: MediaDone) -> None: ...

    def answer(self, call_id: str, leg: str, sdp: bytes, done: MediaDone) -> None: ...

    def delete(self, call_id: str) -> None: ...

    def play_music(self, call_id: str, source: str, done: MusicDone) -> None:
        """Answer the caller's pending offer from the media plane alone (one codec the player
        can send; the callee offer is narrowed to it) and play `source` to the caller until a
        callee's answer goes through `answer` (which stops it and returns the same SDP)."""
        ...


class QueueRouter(Protocol):
    """The skills-based router as the B2BUA sees it (issue 5). The router offers calls back
    through `B2BUA.offer_to_agent`, `withdraw_offer`, `end_queued_call` and `redirect_call`."""

    def handles(self, queue: str) -> bool: ...

    def enqueue(self, call: Call, queue: str, now: float) -> None: ...

    def agent_answered(self, call: Call, agent: str, now: float) -> None: ...

    def agent_no_answer(self, call: Call, agent: str, now: float) -> None: ...

    def call_ended(self, call: Call, answered: bool, now: float) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class InDialogRelay:
    """A request received on one leg and re-sent on the other; the answer goes back."""

    origin: ServerTransaction
    origin_leg: Leg
    target_leg: Leg
    method: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LegRequest:
    """A request we originate on a leg (BYE, probe OPTIONS, CANCEL): its answer is noted."""

    leg: Leg
    method: str


class B2BUA:
    def __init__(
        self,
        config: Config,
        *,
        token: Callable[[], str],
        hooks: HookRegistry,
        digest_secret: bytes,
    ) -> None:
        self.token = token
        self.hooks = hooks
        self.calls: dict[str, Call] = {}
        self.dialogs: dict[tuple[str, str, str | None], Leg] = {}
        self.trunk_calls: dict[str, int] = {}
        self.finished_records: list[CallRecord] = []
        self.draining = False
        self.layer: TransactionLayer | None = None  # set by `attach`
        self.stats = {
            "calls_started": 0, "calls_answered": 0, "calls_failed": 0, "calls_ended": 0,
            "moh_started": 0, "moh_unavailable": 0, "branches_pruned": 0,
            "redirects_followed": 0, "redirects_refused": 0,
        }
        self.queue_router: QueueRouter | None = None
        self.media: MediaPort | None = None
        # Each concern owns its state; the B2BUA keeps a reference, never a copy.
        self.auth = DigestGate(config, secret=digest_secret, token=token)
        self.registrar = Registrar(config)
        self.apply_config(config)

    @property
    def location(self) -> LocationService:
        """The registrar's location service (who is registered where)."""
        return self.registrar.location

    def counters(self) -> dict[str, int]:
        """Every counter of the call core, by metric name (call, digest gate, registrar)."""
        return {**self.stats, **self.auth.counters, **self.registrar.counters}

    def attach(self, layer: TransactionLayer) -> None:
        self.layer = layer
        self.wheel = CallTimerWheel(self, layer.schedule)

    def _short_timer(self, call: Call, at: float) -> None:
        assert call.timer is not None
        self._layer().schedule(call.timer, at)

    def apply_config(self, config: Config) -> None:
        """Take a new configuration; calls in progress keep going (SIGHUP)."""
        self.config = config
        self.dialplan = Dialplan(config.dialplan)
        self.music_on_hold = music_on_hold_by_queue(config)
        self.auth.apply_config(config)
        self.registrar.apply_config(config)
        self.trusted = frozenset(config.auth.trusted_sources)
        self.trunk_sources = {
            (uri.host_without_brackets, uri.port or 5060): name
            for name, trunk in config.trunks.items()
            if trunk.inbound
            for uri in [parse_uri(trunk.target)]
        }

    # ----------------------------------------------------------------------------------------
    # helpers
    def _layer(self) -> TransactionLayer:
        assert self.layer is not None
        return self.layer

    def contact_for(self, flow: Flow) -> str:
        host, port = self._layer().local_addresses[flow.transport]
        if flow.transport == "udp":
            return f"<sip:vaultpbx@{host}:{port}>"
        return f"<sip:vaultpbx@{host}:{port};transport={flow.transport}>"

    def respond(self, txn: ServerTransaction, request: Request, status: int, now: float,
                *, reason: str | None = None, extra: list[tuple[str, str]] | None = None,
                body: bytes = b"", content_type: str | None = None,
                warning: str | None = None) -> None:
        if txn.to_tag is None:
            txn.to_tag = self.token()
        headers = list(extra or [])
        if warning:
            headers.append(warning_header(_warning_text(warning)))
        if body:
            headers.append(("content-type", content_type or "application/sdp"))
        headers.append(("server", self.config.sip.user_agent))
        txn.respond(build_response(request, status, reason, to_tag=txn.to_tag, extra=headers,
                                   body=body), now)

    def _mask(self, kind: str, value: str) -> str:
        return self.hooks.mask(kind, value, "system")

    # ----------------------------------------------------------------------------------------
    # TransactionUser: requests
    def on_request(self, txn: ServerTransaction | None, request: Request, flow: Flow,
                   now: float) -> None:
        method = request.method
        to_tag = request.to.tag
        if txn is None:  # an ACK outside any transaction: the ACK for a 2xx
            self._on_ack(request, now)
            return
        if to_tag is not None:
            self._on_in_dialog(txn, request, flow, now)
            return
        if method == "INVITE":
            self._on_invite(txn, request, flow, now)
        elif method == "REGISTER":
            self._on_register(txn, request, flow, now)
        elif method == "OPTIONS":
            self.respond(txn, request, 200, now, extra=[
                ("allow", ALLOWED_METHODS), ("accept", "application/sdp"),
                ("supported", SUPPORTED)])
        elif method in ("BYE", "UPDATE", "INFO", "PRACK"):
            self.respond(txn, request, 481, now)
        else:
            self.respond(txn, request, 405, now, extra=[("allow", ALLOWED_METHODS)])

    # -- authentication and REGISTER (authgate.py, registrar.py) --------------------------------
    def _authenticate(self, txn: ServerTransaction, request: Request, flow: Flow, now: float,
                      *, proxy: bool) -> str | None:
        """The authenticated extension, or None once the gate's answer has been sent."""
        verdict = self.auth.check(request, flow, now, proxy=proxy)
        if verdict.reply is not None:
            self._reply(txn, request, verdict.reply, now)
        return verdict.user

    def _reply(self, txn: ServerTransaction, request: Request, reply: Reply, now: float) -> None:
        self.respond(txn, request, reply.status, now, reason=reply.reason,
                     extra=list(reply.headers))

    def _on_register(self, txn: ServerTransaction, request: Request, flow: Flow,
                     now: float) -> None:
        refused = self.registrar.check_aor(request)
        if refused is not None:
            self._reply(txn, request, refused, now)
            return
        if self._authenticate(txn, request, flow, now, proxy=False) is None:
            return
        self._reply(txn, request, self.registrar.register(request, flow, now), now)

    # -- new calls -------------------------------------------------------------------------------
    def _on_invite(self, txn: ServerTransaction, request: Request, flow: Flow,
                   now: float) -> None:
        assert isinstance(txn, ServerInviteTransaction)
        if self.draining:
            self.respond(txn, request, 503, now, extra=[("retry-after", "30")])
            return
        mf = request.get("max-forwards")
        if mf is not None and int(mf) == 0:
            self.respond(txn, request, 483, now)
            return
        ruri = request.request_uri
        if not ruri.is_sip or not ruri.user:
            self.respond(txn, request, 404, now)
            return
        source_trunk = self.trunk_sources.get((flow.host, flow.port))
        caller_ext: str | None = None
        if source_trunk is None and flow.host not in self.trusted:
            caller_ext = self._authenticate(txn, request, flow, now, proxy=True)
            if caller_ext is None:
                return
        route = self.dialplan.route(ruri.user)
        if route is None:
            self.respond(txn, request, 404, now)
            return
        # 100 Trying at once: the caller stops retransmitting (RFC 3261 §17.2.1).
        self.respond(txn, request, 100, now)
        call = Call(self.token(), now)
        call.route_kind = route.kind
        call.route_name = route.name
        from_uri = parse_uri(request.from_.uri)
        # In clear here: the CDR and recording stores seal them under the caller's subject key,
        # and everything shown or logged is masked by role on the way out.
        call.caller = from_uri.user or ""
        call.callee = route.number
        a_tag = txn.to_tag or self.token()
        txn.to_tag = a_tag
        a_dialog = Dialog.as_uas(request, a_tag, self.contact_for(flow))
        a_leg = Leg(call, Side.A, a_dialog, flow)
        a_leg.invite_server = txn
        a_leg.invite_request = request
        a_leg.target_name = caller_ext or source_trunk or flow.host
        txn.owner = a_leg
        call.a = a_leg
        self.calls[call.id] = call
        self.dialogs[a_dialog.key] = a_leg
        self.stats["calls_started"] += 1
        self._notify_state(call, now)
        call.timer = CallTimer(self, call)
        call.ring_deadline = now + self.config.sip.ring_timeout
        call.hard_end_at = now + self.config.sip.max_call_duration
        self.wheel.add(call, call.ring_deadline)
        if self.media is not None:
            # Anchor: the caller's offer goes to the media plane first; the callee is offered
            # our address and our keys, so each leg only ever sees vaultpbx (DESIGN step 4).
            call.anchored = True
            call_id = call.id
            a_policy = self._srtp_policy("extension", caller_ext) if caller_ext else (
                self._srtp_policy("trunk", source_trunk) if source_trunk else None)
            b_policy = self._srtp_policy(route.kind, route.name)
            call.srtp_policies = (a_policy, b_policy)
            if not request.body:
                # Delayed offer (RFC 3261 §13.2.1): the callee's 2xx will carry the offer and
                # the caller's ACK the answer; both pass through the media plane then.
                self._dispatch(call, route, now)
                return

            def offered(sdp: bytes | None, status: int, why: str, at: float) -> None:
                self._media_offered(call_id, route, sdp, status, why, at)

            self.media.offer(call_id, "caller", request.body, a_policy, b_policy, offered)
            return
        self._dispatch(call, route, now)

    def _srtp_policy(self, kind: str, name: str | None) -> str | None:
        if kind == "extension" and name in self.config.extensions:
            return self.config.extensions[name].srtp
        if kind == "trunk" and name in self.config.trunks:
            return self.config.trunks[name].srtp
        return None  # the media plane's default (optional)

    def _media_offered(self, call_id: str, route: Route, sdp: bytes | None, status: int,
                       why: str, now: float) -> None:
        call = self.calls.get(call_id)
        if call is None:
            if self.media is not None:
                self.media.delete(call_id)  # the caller gave up meanwhile
            return
        if sdp is None:
            self._fail_call(call, status or 500, "media_refused", now, warning=why)
            return
        call.b_sdp = sdp
        self._dispatch(call, route, now)

    def end_call_by_id(self, call_id: str, cause: str, now: float) -> None:
        """The media plane lost a call (worker died, no media): end it on both legs."""
        call = self.calls.get(call_id)
        if call is not None:
            self._end_call(call, cause, 0, now)

    def _dispatch(self, call: Call, route: Route, now: float) -> None:
        a = call.a
        assert a is not None
        if route.kind == "extension":
            self._ring_extension(call, route.name, route.number, now)
        elif route.kind == "trunk":
            self._ring_trunk(call, route.name, route.number, now)
        elif self.queue_router is not None and self.queue_router.handles(route.name):
            # The router decides who rings and for how long; the caller hears music on hold
            # (or ringing) until an agent answers or the queue gives up.
            call.acd_queue = route.name
            call.state = CallState.QUEUED
            call.ring_deadline = None
            self._wait_in_queue(call, route.name, now)
        else:
            queue = self.config.queues[route.name]
            call.hunt = list(queue.members)
            self._wait_in_queue(call, route.name, now)

    def _wait_in_queue(self, call: Call, queue: str, now: float) -> None:
        """Music on hold for an anchored call: the media plane answers the caller (183 with
        SDP) and plays the queue's file; then the queue starts. Without music (none configured,
        not anchored, or no codec the player can send) the caller hears ringing as before."""
        music = self.music_on_hold.get(queue)
        media = self.media
        offer = call.a.invite_request.body if call.a and call.a.invite_request else b""
        if not music or not call.anchored or media is None or not offer:
            # A delayed offer has nothing to answer in a 183: the caller hears ringing.
            self._start_queue(call, queue, None, now)
            return
        call_id = call.id

        def answered(answer: bytes | None, offer: bytes | None, error: int, why: str,
                     at: float) -> None:
            call = self.calls.get(call_id)
            if call is None or call.state is CallState.ENDED:
                return  # ended meanwhile; its media was deleted with it
            if answer is None or offer is None:
                self.stats["moh_unavailable"] += 1
                self._start_queue(call, queue, None, at)
                return
            self.stats["moh_started"] += 1
            call.b_sdp = offer
            self._start_queue(call, queue, answer, at)

        media.play_music(call_id, music, answered)

    def _start_queue(self, call: Call, queue: str, early_sdp: bytes | None, now: float) -> None:
        a = call.a
        assert a is not None
        call.early_sdp = early_sdp
        if call.queue_entered_at is None:  # reporting: wait time counts from here
            call.queue, call.queue_entered_at = queue, now
        if (early_sdp is not None or call.acd_queue is not None) and (
                a.invite_server is not None and a.invite_request is not None):
            # Our answer goes in an unreliable 183; no 100rel is needed because the 200 repeats
            # exactly this SDP (RFC 6337 §3.1: the early answer is the answer).
            self.respond(a.invite_server, a.invite_request, 183 if early_sdp else 180, now,
                         extra=[("contact", a.dialog.local_contact)], body=early_sdp or b"")
        if call.acd_queue is not None and self.queue_router is not None:
            self.queue_router.enqueue(call, queue, now)
        else:
            self._hunt_next(call, now)

    # -- the router's side (issue 5) --------------------------------------------------------------
    def offer_to_agent(self, call_id: str, agent: str, ring_timeout: float, now: float) -> bool:
        """Ring `agent`'s registered devices for `ring_timeout` seconds. False when the call is
        gone or the agent has no registration (the router treats it as no answer)."""
        call = self.calls.get(call_id)
        if call is None or call.b is not None or call.state is CallState.ENDED:
            return False
        if not self.location.lookup(agent, now) or agent not in self.config.extensions:
            return False
        call.agent = agent
        call.ring_deadline = now + ring_timeout
        self.wheel.add(call, call.ring_deadline)
        self._ring_extension(call, agent, agent, now)
        return True

    def withdraw_offer(self, call_id: str, now: float) -> None:
        call = self.calls.get(call_id)
        if call is None or call.b is not None:
            return
        for leg in list(call.attempts):
            self._cancel_leg(leg, now)
        call.attempts = []
        call.agent = None
        call.ring_deadline = None
        call.state = CallState.QUEUED

    def end_queued_call(self, call_id: str, status: int, cause: str, now: float) -> None:
        call = self.calls.get(call_id)
        if call is not None:
            self._fail_call(call, status, cause, now)

    def redirect_call(self, call_id: str, number: str, now: float) -> None:
        """Overflow: route the waiting call again by the dialplan, as if `number` was dialled."""
        call = self.calls.get(call_id)
        if call is None:
            return
        self.withdraw_offer(call_id, now)
        route = self.dialplan.route(number)
        if route is None or route.kind == "queue":
            self._fail_call(call, 480, "overflow_failed", now)
            return
        call.acd_queue = None
        call.route_kind, call.route_name = route.kind, route.name
        call.ring_deadline = now + self.config.sip.ring_timeout
        self.wheel.add(call, call.ring_deadline)
        if route.kind == "extension":
            self._ring_extension(call, route.name, route.number, now)
        else:
            self._ring_trunk(call, route.name, route.number, now)

    def _agent_missed(self, call: Call, now: float) -> None:
        """The offered agent did not answer (ring timeout, busy, rejected, unreachable)."""
        agent = call.agent
        for leg in list(call.attempts):
            self._cancel_leg(leg, now)
        call.attempts = []
        call.agent = None
        call.state = CallState.QUEUED
        if agent is not None and self.queue_router is not None:
            self.queue_router.agent_no_answer(call, agent, now)

    def _ring_extension(self, call: Call, extension: str, number: str, now: float) -> bool:
        if extension not in self.config.extensions:
            self._fail_call(call, 404, "not_found", now)
            return False
        bindings = self.location.lookup(extension, now)
        if not bindings:
            if not call.hunt:
                self._fail_call(call, 480, "unavailable", now)
            return False
        silent_for = self.config.sip.fork_response_timeout
        for binding in bindings:
            leg = self._start_b_leg(call, binding.contact, binding.flow, extension, now)
            if silent_for:
                leg.respond_by = now + silent_for
                self._short_timer(call, leg.respond_by)
        call.state = CallState.RINGING
        return True

    def _hunt_next(self, call: Call, now: float) -> None:
        """Queue hunting: ring the next member that has a registration."""
        queue = self.config.queues.get(call.route_name)
        while call.hunt:
            member = call.hunt.pop(0)
            if self.location.lookup(member, now):
                ring_for = queue.ring_timeout if queue is not None else 20.0
                call.ring_deadline = now + ring_for
                self.wheel.add(call, call.ring_deadline)
                self._ring_extension(call, member, member, now)
                return
        self._fail_call(call, 480, "unavailable", now)

    def _ring_trunk(self, call: Call, name: str, number: str, now: float) -> None:
        trunk = self.config.trunks[name]
        active = self.trunk_calls.get(name, 0)
        if trunk.max_calls and active >= trunk.max_calls:
            self._fail_call(call, 503, "trunk_full", now)
            return
        self.trunk_calls[name] = active + 1
        call.trunk = name
        target = parse_uri(trunk.target)
        host = target.host_without_brackets
        flow = Flow(trunk.transport, host, target.port or (5061 if trunk.transport == "tls"
                                                            else 5060))
        user_uri = f"sip:{number}@{target.host}" + (f":{target.port}" if target.port else "")
        self._start_b_leg(call, user_uri, flow, name, now, from_domain=trunk.from_domain)
        call.state = CallState.RINGING

    def _start_b_leg(self, call: Call, request_uri: str, flow: Flow, target_name: str,
                     now: float, *, from_domain: str | None = None) -> Leg:
        a = call.a
        assert a is not None and a.invite_request is not None
        a_invite = a.invite_request
        caller = a_invite.from_
        caller_uri = parse_uri(caller.uri)
        host, port = self._layer().local_addresses[flow.transport]
        domain = from_domain or host
        local_uri = f"{caller.display} <sip:{caller_uri.user}@{domain}>" if caller.display \
            else f"<sip:{caller_uri.user}@{domain}>"
        callee = parse_uri(request_uri)
        remote_uri = f"<sip:{callee.user}@{callee.host}>" if callee.user else f"<{request_uri}>"
        dialog = Dialog(
            call_id=self.token(), local_tag=self.token(), remote_tag=None, local_uri=local_uri,
            remote_uri=remote_uri, local_seq=0, remote_seq=None, remote_target=request_uri,
            route_set=(), local_contact=self.contact_for(flow),
        )
        leg = Leg(call, Side.B, dialog, flow)
        leg.target_name = target_name
        leg.offer_in_invite = bool(a_invite.body)
        body = call.b_sdp if call.b_sdp is not None else a_invite.body
        request = dialog.new_request("INVITE", body,
                                     "application/sdp" if call.b_sdp is not None
                                     else a_invite.get("content-type"))
        mf = a_invite.get("max-forwards")
        request.set("max-forwards", str(int(mf) - 1 if mf is not None else 70))
        request.set("allow", ALLOWED_METHODS)
        request.set("user-agent", self.config.sip.user_agent)
        leg.invite_request = request
        if not call.attempts:
            call.best_final = None  # a new round of branches (hunt member, agent, redirect)
        call.attempts.append(leg)
        self._send_b_invite(leg, request, now)
        return leg

    def _send_b_invite(self, leg: Leg, request: Request, now: float) -> None:
        txn = self._layer().start_client_transaction(request, leg.flow, now, owner=leg)
        assert isinstance(txn, ClientInviteTransaction)
        leg.invite_client = txn

    # -- responses -------------------------------------------------------------------------------
    def on_response(self, txn: ClientTransaction, response: Response, now: float) -> None:
        owner = txn.owner
        if isinstance(owner, Leg):
            self._on_b_invite_response(owner, txn, response, now)
        elif isinstance(owner, InDialogRelay):
            self._on_relay_response(owner, response, now)
        elif isinstance(owner, LegRequest):
            self._on_leg_request_response(owner, response, now)
        elif isinstance(owner, QualifyProbe) and response.status >= 200:
            self.registrar.qualify_answered(owner)

    def _on_b_invite_response(self, leg: Leg, txn: ClientTransaction, response: Response,
                              now: float, *, local: bool = False) -> None:
        status = response.status
        call = leg.call
        if not local:
            leg.respond_by = None  # the contact is alive
        if status < 200:
            if leg.cancel_requested:
                self._send_cancel(leg, now)  # the CANCEL waited for a provisional (§9.1)
                return
            if call is None or leg.ended or status == 100:
                return
            leg.provisional_seen = True
            if call.early_sdp is not None:
                return  # the caller hears music; an agent's ringing or early media is not for it
            call_id = call.id

            def relay_provisional(body: bytes | None, error: int, why: str, at: float) -> None:
                call = self.calls.get(call_id)
                a = call.a if call is not None else None
                if call is None or a is None or a.invite_server is None or call.b is not None:
                    return
                if a.invite_server.state is not State.PROCEEDING:
                    return
                call.state = CallState.EARLY if body else CallState.RINGING
                self.respond(a.invite_server, a.invite_request or Request("INVITE", ""),
                             status, at, reason=response.reason, body=body or b"",
                             content_type="application/sdp" if body else None,
                             extra=[("contact", a.dialog.local_contact)])

            # An anchored delayed offer relays no early SDP: an unreliable 18x cannot carry
            # the offer (§13.2.1), and the callee's address must not reach the caller.
            early = response.body if leg.offer_in_invite or not call.anchored else b""
            self._through_media(call, "callee", early, relay_provisional, now)
            return
        if status < 300:
            if leg.ack_bytes is not None:  # a 2xx retransmission: resend our ACK (§13.2.2.4)
                self._layer().send(leg.ack_bytes, leg.flow, retransmission=True)
                return
            leg.invite_client = None
            if call is None or leg.ended:
                self._ack_and_bye_stray(leg, response, now)
                return
            self._on_b_answer(call, leg, response, now)
            return
        # A non-2xx final answer on this attempt; the ICT has ACKed it (§17.1.1.3).
        if (status in (401, 407) and call is not None and not leg.ended
                and not leg.auth_attempted
                and self._retry_with_credentials(call, leg, response, now)):
            return
        if (status == 488 and call is not None and not leg.ended
                and self._retry_as_savp(leg, now)):
            return
        leg.invite_client = None
        leg.invite_request = None
        leg.cancel_requested = False
        if call is None or leg.ended:
            return
        if 300 <= status < 400 and self._follow_redirect(call, leg, response, now):
            return
        self._branch_failed(call, leg, response, now, local=local)

    def _follow_redirect(self, call: Call, leg: Leg, response: Response, now: float) -> bool:
        """A callee answered 3xx: ring its first Contact that names a number of ours (our
        domain or our address) which the dialplan routes to a registered extension or a free
        trunk, in place of this branch (RFC 3261 §16.7 step 4, as a recursing proxy), at
        most sip.max_redirects times per call. False: not followed; the 3xx then competes
        for the caller's answer like any final response, with its Contact."""
        if (call.b is not None or call.acd_queue is not None
                or call.state in (CallState.ENDING, CallState.ENDED)):
            return False  # an agent's phone redirecting is the router's no-answer
        if call.redirects >= self.config.sip.max_redirects:
            self.stats["redirects_refused"] += 1
            return False
        route = self._redirect_route(call, response, now)
        if route is None:
            self.stats["redirects_refused"] += 1
            return False
        call.redirects += 1
        self.stats["redirects_followed"] += 1
        leg.ended = True
        if leg in call.attempts:
            call.attempts.remove(leg)
        best = call.best_final  # the new branches join this round: keep its best answer
        if route.kind == "extension":
            self._ring_extension(call, route.name, route.number, now)
        else:
            self._ring_trunk(call, route.name, route.number, now)
        call.best_final = best
        return True

    def _redirect_route(self, call: Call, response: Response, now: float) -> Route | None:
        ours = {self.config.sip.domain} | {
            host for host, _ in self._layer().local_addresses.values()}
        contacts: list[tuple[float, str]] = []
        for value in response.values("contact"):
            try:
                addr = parse_name_addr(value)
                q = float(addr.params.get("q", "1") or 1)
            except (SipParseError, ValueError):
                continue
            contacts.append((q, addr.uri))
        for _, uri_text in sorted(contacts, key=lambda c: -c[0]):  # stable: order kept on ties
            try:
                uri = parse_uri(uri_text)
            except SipParseError:
                continue
            if not uri.is_sip or not uri.user or uri.host_without_brackets not in ours:
                continue  # someone else's target: for the caller to follow, not for us
            route = self.dialplan.route(uri.user)
            if route is None:
                continue
            if route.kind == "extension" and route.name in self.config.extensions and (
                    self.location.lookup(route.name, now)):
                return route
            if route.kind == "trunk" and call.trunk is None:
                trunk = self.config.trunks[route.name]
                if not trunk.max_calls or self.trunk_calls.get(route.name, 0) < trunk.max_calls:
                    return route
        return None

    def _branch_failed(self, call: Call, leg: Leg, response: Response, now: float, *,
                       local: bool) -> None:
        """One branch of a forked INVITE ended without a 2xx (RFC 3261 §16.7): remember the
        best answer; a 6xx ends every branch at once; when no branch is left, the best answer
        goes to the caller (or the hunt/queue moves on). `local`: a 408 of our own (timeout,
        transport error, silent contact) ranks below any answer a device gave."""
        leg.ended = True
        if leg in call.attempts:
            call.attempts.remove(leg)
        if call.b is not None or call.state in (CallState.ENDING, CallState.ENDED):
            return
        rank = final_rank(response.status, local=local)
        if call.best_final is None or rank < call.best_final[0]:
            call.best_final = (rank, response)
        if response.status >= 600:
            # §16.7 step 5: a global failure: no other branch may still answer.
            for other in list(call.attempts):
                self._cancel_leg(other, now)
            call.attempts = []
        if call.attempts:
            return  # other forks still ringing
        best = call.best_final[1]
        call.best_final = None
        if call.acd_queue is not None:
            self._agent_missed(call, now)
            return
        if call.hunt and best.status < 600:
            self._hunt_next(call, now)
            return
        if 300 <= best.status < 400:
            # A redirect we could not or must not follow: the caller gets it with its
            # Contact targets (RFC 3261 §8.1.3.4), to follow itself if it may.
            self._fail_call(call, best.status, "redirected", now, reason=best.reason,
                            extra=[("contact", value) for value in best.values("contact")])
            return
        cause = CAUSES.get(best.status, "failed")
        self._fail_call(call, best.status, cause, now, reason=best.reason)

    def _retry_with_credentials(self, call: Call, leg: Leg, response: Response,
                                now: float) -> bool:
        """A trunk challenged our INVITE: resend once with its credentials (RFC 3261 §22.2)."""
        trunk = self.config.trunks.get(call.trunk or "")
        if trunk is None or trunk.username is None or trunk.password is None:
            return False
        old = leg.invite_request
        if old is None:
            return False
        header = "proxy-authenticate" if response.status == 407 else "www-authenticate"
        challenge = response.get(header)
        if challenge is None:
            return False
        leg.auth_attempted = True
        request = leg.dialog.new_request("INVITE", old.body, old.get("content-type"))
        for name in ("max-forwards", "allow", "user-agent"):
            value = old.get(name)
            if value is not None:
                request.set(name, value)
        authorization = build_authorization(challenge, "INVITE", request.uri, trunk.username,
                                            trunk.password, self.token(), 1)
        request.set("proxy-authorization" if response.status == 407 else "authorization",
                    authorization)
        leg.invite_request = request
        leg.provisional_seen = False
        self._send_b_invite(leg, request, now)
        return True

    def _retry_as_savp(self, leg: Leg, now: float) -> bool:
        """`srtp: optional` offers RTP/AVP with a=crypto (best effort, so that plain-RTP
        callees still answer); a callee that requires SRTP refuses that profile with 488. Offer
        the same streams and keys once more as RTP/SAVP (RFC 4568 §3.1.4). Only once: the
        retried body has no AVP stream with crypto left to change."""
        old = leg.invite_request
        if old is None or not old.body:
            return False
        body = savp_offer(old.body)
        if body is None:
            return False
        request = leg.dialog.new_request("INVITE", body, "application/sdp")
        for name in ("max-forwards", "allow", "user-agent", "authorization",
                     "proxy-authorization"):
            value = old.get(name)
            if value is not None:
                request.set(name, value)
        leg.invite_request = request
        leg.provisional_seen = False
        self._send_b_invite(leg, request, now)
        return True

    def _on_b_answer(self, call: Call, leg: Leg, response: Response, now: float) -> None:
        if call.b is not None and call.b is not leg:
            self._ack_and_bye_stray(leg, response, now)  # a second fork answered: §13.2.2.4
            return
        if call.b is leg:
            return  # delayed-offer 2xx retransmission before the caller's ACK
        a = call.a
        if a is None or a.invite_server is None or call.state in (CallState.ENDING,
                                                                   CallState.ENDED):
            self._ack_and_bye_stray(leg, response, now)
            return
        call.b = leg
        leg.answered = True
        leg.dialog.confirm_as_uac(response)
        self.dialogs[leg.dialog.key] = leg
        # Cancel the other forks (RFC 3261 §16.7 step 10, as a proxy would).
        for other in list(call.attempts):
            if other is not leg:
                self._cancel_leg(other, now)
        call.attempts = [leg]
        call.hunt = []
        if leg.offer_in_invite:
            self._send_ack(leg, b"", None, now)
        call_id = call.id
        if call.anchored and not leg.offer_in_invite and response.body and self.media:
            # Delayed offer: the callee offers in its 2xx; the caller gets our offer in ours.
            def offered(body: bytes | None, error: int, why: str, at: float) -> None:
                call = self.calls.get(call_id)
                if call is None:
                    return
                if error:
                    self._send_ack(leg, b"", None, at)  # a 2xx is always ACKed (§13.2.2.4)
                    self._fail_call(call, error, "media_refused", at, warning=why)
                    return
                self._answer_caller(call, leg, body or b"", at)

            b_policy, a_policy = call.srtp_policies[1], call.srtp_policies[0]
            self.media.offer(call_id, "callee", response.body, b_policy, a_policy, offered)
            return

        def answered(body: bytes | None, error: int, why: str, at: float) -> None:
            call = self.calls.get(call_id)
            if call is None:
                return
            if error:
                # The callee's answer is unusable (e.g. no common crypto): end it, refuse.
                self._fail_call(call, error, "media_refused", at, warning=why)
                return
            self._answer_caller(call, leg, body or b"", at)

        self._through_media(call, "callee", response.body, answered, now)

    def _through_media(self, call: Call, leg: str, body: bytes, then: MediaDone,
                       now: float) -> None:
        """Pass an SDP answer from `leg` through the media plane when the call is anchored."""
        if not call.anchored or not body or self.media is None:
            then(body or None, 0, "", now)
            return
        self.media.answer(call.id, leg, body, then)

    def _answer_caller(self, call: Call, leg: Leg, body: bytes, now: float) -> None:
        a = call.a
        if a is None or a.invite_server is None or call.state is CallState.ENDED:
            return
        # Answer the caller; retransmit the 2xx until its ACK (RFC 3261 §13.3.1.4).
        a_request = a.invite_request
        assert a_request is not None
        txn = a.invite_server
        extra = [("contact", a.dialog.local_contact), ("allow", ALLOWED_METHODS),
                 ("supported", SUPPORTED)]
        se = self.config.sip.session_expires
        if se and "timer" in {v.lower() for v in a_request.values("supported")}:
            call.session_interval = se
            extra.append(("session-expires", f"{se};refresher=uac"))
            extra.append(("require", "timer"))
        response_to_a = build_response(a_request, 200, "OK", to_tag=txn.to_tag, extra=extra +
                                       [("server", self.config.sip.user_agent)] + (
                                           [("content-type", "application/sdp")] if body
                                           else []),
                                       body=body)
        txn.respond(response_to_a, now)
        call.ok_bytes = response_to_a.serialize()
        call.answered_at = now
        call.state = CallState.ANSWERED
        call.ring_deadline = None
        self.stats["calls_answered"] += 1
        if call.acd_queue is not None and call.agent is not None and self.queue_router:
            self.queue_router.agent_answered(call, call.agent, now)
        t1 = self.config.sip.timers.t1
        if not a.flow.reliable:
            call.ok_interval = t1
            call.ok_retransmit_at = now + t1
            self._short_timer(call, call.ok_retransmit_at)
        call.ok_giveup_at = now + 64 * t1
        self._short_timer(call, call.ok_giveup_at)
        a.invite_server = None
        self._notify_state(call, now)

    def _send_ack(self, leg: Leg, body: bytes, content_type: str | None, now: float) -> None:
        ack = leg.dialog.new_request("ACK", body, content_type, cseq=leg.dialog.local_seq)
        layer = self._layer()
        ack.add("via", layer.via_for(leg.flow, layer.new_branch()), first=True)
        leg.ack_bytes = ack.serialize()
        layer.send(leg.ack_bytes, leg.flow)

    def _ack_and_bye_stray(self, leg: Leg, response: Response, now: float) -> None:
        dialog = leg.dialog
        dialog.confirm_as_uac(response)
        self._send_ack(leg, b"", None, now)
        bye = dialog.new_request("BYE")
        self._layer().start_client_transaction(bye, leg.flow, now,
                                               owner=LegRequest(leg=leg, method="BYE"))

    def on_stray_response(self, response: Response, flow: Flow, now: float) -> bool:
        """A 2xx retransmission after our INVITE transaction ended (Timer M): re-ACK it."""
        try:
            key = (response.call_id, response.from_.tag or "", response.to.tag)
        except SipParseError:
            return False
        leg = self.dialogs.get(key)
        if leg is None or leg.ack_bytes is None:
            return False
        self._layer().send(leg.ack_bytes, leg.flow, retransmission=True)
        return True

    # -- ACK, CANCEL, in-dialog requests -----------------------------------------------------------
    def _on_ack(self, ack: Request, now: float) -> None:
        try:
            key = (ack.call_id, ack.to.tag or "", ack.from_.tag)
        except SipParseError:
            return
        leg = self.dialogs.get(key)
        if leg is None or leg.call is None:
            return
        call = leg.call
        if leg.side is Side.A and call.state is CallState.ANSWERED:
            call.state = CallState.ESTABLISHED
            call.ok_retransmit_at = None
            call.ok_giveup_at = None
            call.ok_bytes = None
            leg.invite_request = None
            b = call.b
            if b is not None and not b.offer_in_invite and b.ack_bytes is None:
                if call.anchored and self.media is not None:
                    self._answer_delayed_offer(call, b, ack.body, now)
                else:
                    self._send_ack(b, ack.body, ack.get("content-type"), now)
            if b is not None:
                b.invite_request = None
            self._arm_keepalive(call, now)
            self._notify_state(call, now)
        else:
            # The ACK of a relayed re-INVITE: the other leg's 2xx waits for it when that
            # re-INVITE carried no offer (its ACK carries the answer) — ack_bytes is None then.
            other = self._other(leg)
            if other is not None and other.ack_bytes is None:
                self._send_ack(other, ack.body, ack.get("content-type"), now)

    def _answer_delayed_offer(self, call: Call, b: Leg, answer: bytes, now: float) -> None:
        """The caller's ACK answered our offer: our answer to the callee goes in its ACK."""
        assert self.media is not None
        call_id = call.id

        def answered(body: bytes | None, error: int, why: str, at: float) -> None:
            if b.ack_bytes is None:
                self._send_ack(b, body or b"", "application/sdp" if body else None, at)
            call = self.calls.get(call_id)
            if error and call is not None:
                self._end_call(call, "media_refused", 0, at)

        if not answer:
            # No answer in the ACK: a protocol error by the caller (§13.2.1); end the call.
            answered(None, 400, "ACK without the SDP answer", now)
            return
        self.media.answer(call_id, "caller", answer, answered)

    def on_cancel(self, invite_txn: ServerInviteTransaction, cancel: Request,
                  now: float) -> None:
        leg = invite_txn.owner
        if not isinstance(leg, Leg) or leg.call is None:
            return
        call = leg.call
        if leg.invite_request is not None and invite_txn.state is State.PROCEEDING:
            self.respond(invite_txn, leg.invite_request, 487, now)
        leg.invite_server = None
        self._end_call(call, "cancelled", 487, now)

    def _on_in_dialog(self, txn: ServerTransaction, request: Request, flow: Flow,
                      now: float) -> None:
        key = (request.call_id, request.to.tag or "", request.from_.tag)
        leg = self.dialogs.get(key)
        method = request.method
        if leg is None or leg.call is None:
            self.respond(txn, request, 481, now)
            return
        call = leg.call
        if not leg.dialog.accepts_remote_seq(request.cseq.number):
            self.respond(txn, request, 500, now, reason="CSeq out of order")
            return
        if method == "BYE":
            self.respond(txn, request, 200, now)
            leg.ended = True
            self._end_call(call, "normal_clearing", 200, now, hung_up_by=leg)
            return
        if method == "OPTIONS":
            self.respond(txn, request, 200, now, extra=[("allow", ALLOWED_METHODS)])
            return
        if method in ("INVITE", "UPDATE", "INFO"):
            other = self._other(leg)
            if other is None or call.state not in (CallState.ESTABLISHED, CallState.ANSWERED):
                self.respond(txn, request, 491 if method == "INVITE" else 481, now)
                return
            if method != "INFO":
                leg.dialog.refresh_target(request)
                if call.session_interval:
                    call.session_deadline = now + call.session_interval
                    self.wheel.add(call, call.session_deadline)
            relay = InDialogRelay(origin=txn, origin_leg=leg, target_leg=other, method=method)
            txn.owner = relay

            def forward(body: bytes | None, error: int, why: str, at: float) -> None:
                if error:
                    if txn.state in (State.TRYING, State.PROCEEDING) and txn.request is not None:
                        self.respond(txn, txn.request, error, at, warning=why)
                    return
                self._forward_in_dialog(relay, request, body or b"", at)

            if call.anchored and self.media is not None and request.body and method != "INFO":
                self.media.offer(call.id, _leg_name(leg), request.body, None, None, forward)
            else:
                forward(request.body or None, 0, "", now)
            return
        self.respond(txn, request, 405, now, extra=[("allow", ALLOWED_METHODS)])

    def _forward_in_dialog(self, relay: InDialogRelay, request: Request, body: bytes,
                           now: float) -> None:
        other, method = relay.target_leg, relay.method
        if other.call is None or other.ended:
            return
        content_type = "application/sdp" if relay.origin_leg.call is not None and (
            relay.origin_leg.call.anchored) and body else request.get("content-type")
        out = other.dialog.new_request(method, body, content_type)
        for name in ("min-se", "supported"):
            value = request.get(name)
            if value is not None:
                out.set(name, value)
        out_txn = self._layer().start_client_transaction(out, other.flow, now, owner=relay)
        if method == "INVITE":
            other.offer_in_invite = bool(body)
            other.invite_client = out_txn if isinstance(out_txn, ClientInviteTransaction) \
                else None

    def _on_relay_response(self, relay: InDialogRelay, response: Response, now: float) -> None:
        call = relay.origin_leg.call
        if (call is not None and call.anchored and response.body and self.media is not None
                and 200 <= response.status < 300 and relay.method in ("INVITE", "UPDATE")):
            def answered(body: bytes | None, error: int, why: str, at: float) -> None:
                if error:
                    self._relay_final(relay, response, b"", at, error=error, why=why)
                else:
                    self._relay_final(relay, response, body or b"", at)

            self.media.answer(call.id, _leg_name(relay.target_leg), response.body, answered)
            return
        self._relay_final(relay, response, response.body, now)

    def _relay_final(self, relay: InDialogRelay, response: Response, body: bytes, now: float,
                     *, error: int = 0, why: str = "") -> None:
        origin = relay.origin
        if origin.state is State.TERMINATED:
            return
        status = response.status
        if status == 100:
            return
        request = origin.request
        if request is None:
            return
        target = relay.target_leg
        extra: list[tuple[str, str]] = []
        if relay.method in ("INVITE", "UPDATE") and 200 <= status < 300:
            if not error and relay.origin_leg.call is not None:
                note_hold(relay.origin_leg.call, relay.origin_leg.side, request.body, now)
            target.dialog.refresh_target(response)
            extra.append(("contact", relay.origin_leg.dialog.local_contact))
            if relay.method == "INVITE":
                if target.offer_in_invite:
                    self._send_ack(target, b"", None, now)
                else:
                    target.ack_bytes = None  # the origin's ACK brings the answer
        warning: str | None = None
        if error:
            status, reason, warning = error, None, why
        else:
            reason = response.reason
        self.respond(origin, request, status, now, reason=reason, body=body, warning=warning,
                     content_type=response.get("content-type") if body else None, extra=extra)
        if status >= 200:
            origin.owner = None  # the relay is done; no cycle outlives it

    def _on_leg_request_response(self, owner: LegRequest, response: Response,
                                 now: float) -> None:
        if owner.method == "OPTIONS" and response.status in (408, 481):
            call = owner.leg.call
            if call is not None:
                self._end_call(call, "dead_peer", response.status, now)

    def on_transaction_timeout(self, txn: Transaction, now: float) -> None:
        owner = txn.owner
        if isinstance(owner, Leg) and owner.side is Side.B and owner.call is not None:
            if txn.IS_CLIENT:
                self._on_b_invite_response(owner, txn,  # type: ignore[arg-type]
                                           _timeout_response(), now, local=True)
        elif isinstance(owner, InDialogRelay):
            request = owner.origin.request
            if request is not None and owner.origin.state is not State.TERMINATED:
                self.respond(owner.origin, request, 408, now)
        elif isinstance(owner, LegRequest) and owner.method == "OPTIONS":
            call = owner.leg.call
            if call is not None:
                self._end_call(call, "dead_peer", 408, now)
        elif isinstance(owner, QualifyProbe):
            self.registrar.qualify_failed(owner, now)

    def on_transport_error(self, txn: Transaction, now: float) -> None:
        self.on_transaction_timeout(txn, now)

    # -- ending calls ----------------------------------------------------------------------------
    def _other(self, leg: Leg) -> Leg | None:
        call = leg.call
        if call is None:
            return None
        return call.b if leg.side is Side.A else call.a

    def _prune_silent_branch(self, call: Call, leg: Leg, now: float) -> None:
        """A registered contact said nothing, not even 100 Trying, within
        sip.fork_response_timeout: the device has vanished (no ICMP reaches us for it on UDP).
        Its branch ends as a local 408; should it wake up, a provisional gets our CANCEL
        (§9.1) and a 2xx our ACK and BYE, as for any branch that lost."""
        leg.respond_by = None
        leg.cancel_requested = True
        self.stats["branches_pruned"] += 1
        self._branch_failed(call, leg, _timeout_response(), now, local=True)

    def _fail_call(self, call: Call, status: int, cause: str, now: float,
                   reason: str | None = None, warning: str | None = None,
                   extra: list[tuple[str, str]] | None = None) -> None:
        a = call.a
        if a is not None and a.invite_server is not None and a.invite_request is not None:
            if a.invite_server.state is State.PROCEEDING:
                self.respond(a.invite_server, a.invite_request, status, now, reason=reason,
                             warning=warning, extra=extra)
            a.invite_server = None
        self.stats["calls_failed"] += 1
        self._end_call(call, cause, status, now)

    def _cancel_leg(self, leg: Leg, now: float) -> None:
        if leg.ended:
            return
        leg.ended = True
        leg.cancel_requested = True
        if leg.provisional_seen:
            self._send_cancel(leg, now)
        # else: the CANCEL goes out when the first provisional arrives (RFC 3261 §9.1); if none
        # ever does, Timer B ends the INVITE transaction.

    def _send_cancel(self, leg: Leg, now: float) -> None:
        txn = leg.invite_client
        invite = leg.invite_request
        if txn is None or invite is None or txn.state not in (State.CALLING, State.PROCEEDING):
            return
        headers = {
            "via": [invite.headers["via"][0]],
            "max-forwards": ["70"],
            "from": [invite.headers["from"][0]],
            "to": [invite.headers["to"][0]],
            "call-id": [invite.call_id],
            "cseq": [f"{invite.cseq.number} CANCEL"],
        }
        cancel = Request("CANCEL", invite.uri, headers)
        layer = self._layer()
        key = (invite.via.branch, "CANCEL")
        cancel_txn = ClientNonInviteTransaction(key, layer, leg.flow, cancel)
        cancel_txn.owner = LegRequest(leg=leg, method="CANCEL")
        layer.client_transactions[key] = cancel_txn
        cancel_txn.start(cancel.serialize(), now)
        leg.cancel_requested = False
        # RFC 3261 §9.1: without a final answer 64*T1 after the CANCEL, the INVITE client
        # transaction ends on its own.
        txn.timeout_at = now + 64 * self.config.sip.timers.t1
        layer.schedule(txn, txn.timeout_at)

    def _bye_leg(self, leg: Leg, now: float) -> None:
        if leg.ended:
            return
        leg.ended = True
        bye = leg.dialog.new_request("BYE")
        self._layer().start_client_transaction(bye, leg.flow, now,
                                               owner=LegRequest(leg=leg, method="BYE"))

    def _end_call(self, call: Call, cause: str, status: int, now: float,
                  *, hung_up_by: Leg | None = None) -> None:
        if call.state is CallState.ENDED:
            return
        a = call.a
        if a is not None and a.invite_server is not None and a.invite_request is not None and (
                a.invite_server.state is State.PROCEEDING):
            self.respond(a.invite_server, a.invite_request, 480 if status < 300 else status,
                         now)
        for leg in call.legs():
            if leg is hung_up_by:
                continue
            if leg.side is Side.B and not leg.answered:
                self._cancel_leg(leg, now)
            elif leg.side is Side.A and call.answered_at is None:
                pass  # never answered: the final response above ended it
            else:
                self._bye_leg(leg, now)
        call.cause = call.cause or cause
        call.status = call.status or status
        note_end(call, hung_up_by.side if hung_up_by is not None else None, now)
        if call.acd_queue is not None and self.queue_router is not None:
            self.queue_router.call_ended(call, call.answered_at is not None, now)
        call.state = CallState.ENDED
        call.ended_at = now
        self.stats["calls_ended"] += 1
        if call.trunk is not None:
            self.trunk_calls[call.trunk] = max(0, self.trunk_calls.get(call.trunk, 1) - 1)
        self.calls.pop(call.id, None)
        self.wheel.cancel(call)
        if call.anchored and self.media is not None:
            self.media.delete(call.id)
        for leg in call.legs():
            if self.dialogs.get(leg.dialog.key) is leg:
                del self.dialogs[leg.dialog.key]
        self.finished_records.append(record_of(call, self._mask))
        self._notify_state(call, now)
        call.finish()

    def _notify_state(self, call: Call, now: float) -> None:
        self.hooks.notify(HookPoint.CALL_STATE, CallStateChanged(
            call_id=call.id, state=call.state.value, at=now,
            caller=self._mask("number", call.caller), callee=self._mask("number", call.callee),
            cause=call.cause))

    # -- call timers -----------------------------------------------------------------------------
    def _arm_keepalive(self, call: Call, now: float) -> None:
        if call.session_interval:
            call.session_deadline = now + call.session_interval
            self.wheel.add(call, call.session_deadline)
        elif self.config.sip.keepalive_probe_interval:
            call.probe_at = now + self.config.sip.keepalive_probe_interval
            self.wheel.add(call, call.probe_at)
        if call.hard_end_at is not None:
            self.wheel.add(call, call.hard_end_at)

    def on_call_timer(self, call: Call, now: float) -> None:
        if call.state is CallState.ENDED:
            return
        if call.b is None and call.attempts:
            for leg in list(call.attempts):
                if leg.respond_by is not None and now >= leg.respond_by and not leg.ended:
                    self._prune_silent_branch(call, leg, now)
                    if call.state is CallState.ENDED:
                        return
        if call.ring_deadline is not None and now >= call.ring_deadline and call.b is None:
            call.ring_deadline = None
            if call.acd_queue is not None:
                if call.agent is not None:
                    self._agent_missed(call, now)
                return
            if call.hunt:
                for leg in list(call.attempts):
                    self._cancel_leg(leg, now)
                call.attempts = []
                self._hunt_next(call, now)
            else:
                self._fail_call(call, 480, "no_answer", now)
            return
        if call.ok_retransmit_at is not None and now >= call.ok_retransmit_at and call.ok_bytes:
            a = call.a
            if a is not None:
                self._layer().send(call.ok_bytes, a.flow, retransmission=True)
            call.ok_interval = min(call.ok_interval * 2, self.config.sip.timers.t2)
            # Re-armed from the deadline that fired, so the doubling does not drift.
            call.ok_retransmit_at += call.ok_interval
            self._short_timer(call, call.ok_retransmit_at)
        if call.ok_giveup_at is not None and now >= call.ok_giveup_at:
            # No ACK for our 2xx (RFC 3261 §13.3.1.4): the session is torn down.
            call.ok_giveup_at = call.ok_retransmit_at = None
            self._end_call(call, "no_ack", 408, now)
            return
        if call.session_deadline is not None and now >= call.session_deadline:
            self._end_call(call, "session_expired", 408, now)
            return
        if call.hard_end_at is not None and now >= call.hard_end_at:
            self._end_call(call, "max_duration", 200, now)
            return
        if call.probe_at is not None and now >= call.probe_at:
            for leg in (call.a, call.b):
                if leg is not None and not leg.ended:
                    probe = leg.dialog.new_request("OPTIONS")
                    self._layer().start_client_transaction(
                        probe, leg.flow, now, owner=LegRequest(leg=leg, method="OPTIONS"))
            call.probe_at = now + self.config.sip.keepalive_probe_interval
            self.wheel.add(call, call.probe_at)

    # -- qualify (registrar.py decides, we send) ---------------------------------------------------
    def qualify(self, now: float) -> None:
        """Send the OPTIONS probes the registrar asks for now (the shell calls this each
        second); answers and timeouts come back through on_response / on_transaction_timeout."""
        layer = self._layer()
        for probe in self.registrar.qualify_due(now):
            host, _ = layer.local_addresses[probe.flow.transport]
            headers = {
                "max-forwards": ["70"],
                "from": [f"<sip:vaultpbx@{host}>;tag={self.token()}"],
                "to": [f"<{probe.contact}>"],
                "call-id": [self.token()],
                "cseq": ["1 OPTIONS"],
                "user-agent": [self.config.sip.user_agent],
            }
            layer.start_client_transaction(Request("OPTIONS", probe.contact, headers),
                                           probe.flow, now, owner=probe)

    # -- drain -----------------------------------------------------------------------------------
    def start_drain(self) -> None:
        self.draining = True

    def end_all(self, now: float, cause: str = "shutdown") -> None:
        for call in list(self.calls.values()):
            self._end_call(call, cause, 503, now)


# RFC 3261 §16.7.6: within the 4xx class these tell the caller how to retry, so they win.
_RETRY_INFORMATION = frozenset((401, 407, 415, 420, 484))


def final_rank(status: int, *, local: bool = False) -> tuple[int, int]:
    """Rank of a final non-2xx answer among a call's branches; lower is better (§16.7.6):
    any 6xx first; then the lowest class (3xx before 4xx before 5xx); within 4xx the answers
    with retry information; an answer a device gave before a 408 we made up ourselves. Ties
    keep the earlier answer."""
    if status >= 600:
        return (0, 0)
    return (status // 100, 0 if status in _RETRY_INFORMATION else 2 if local else 1)


def _leg_name(leg: Leg) -> str:
    return "caller" if leg.side is Side.A else "callee"


def savp_offer(body: bytes) -> bytes | None:
    """`body` with every RTP/AVP(F) m= line that carries a=crypto made RTP/SAVP(F), or None
    when there is none (nothing to retry). Everything else stays byte for byte."""
    lines = body.split(b"\n")
    changed = False
    section_start: int | None = None
    for index in range(len(lines) + 1):
        if index < len(lines) and not lines[index].startswith(b"m="):
            continue
        if section_start is not None:  # close the previous media section
            section = lines[section_start:index]
            fields = lines[section_start].split(b" ")
            if (len(fields) > 2 and fields[2] in (b"RTP/AVP", b"RTP/AVPF")
                    and any(line.startswith(b"a=crypto:") for line in section)):
                fields[2] = b"RTP/SAVP" + fields[2][7:]
                lines[section_start] = b" ".join(fields)
                changed = True
        section_start = index
    return b"\n".join(lines) if changed else None


def _warning_text(why: str) -> str:
    """The detail of a media error for a Warning header (RFC 3261 §20.43). The reason phrase
    stays the status's own ("488 Not Acceptable Here"): an error message such as
    "488 Not Acceptable Here: m=0: ..." made into a phrase repeated the code and was cut."""
    line = " ".join(why.split())
    code, _, rest = line.partition(" ")
    if len(code) == 3 and code.isdigit() and ": " in rest:
        line = rest.split(": ", 1)[1]  # the status and its phrase are on the status line already
    return line


def _timeout_response() -> Response:
    response = Response(408, reason_phrase(408))
    return response
