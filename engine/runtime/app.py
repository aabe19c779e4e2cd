"""Wiring: the only module that knows every part. Config → hooks → SIP core → B2BUA →
transports → admin API; signals; the periodic housekeeping.

Invariants:
- The event loop callback for a received message runs the whole core synchronously and then
  drains the outbox; the single `call_at` timer is only re-armed when the earliest deadline
  moved earlier (most messages do not move it).
- SIGTERM drains: new INVITEs get 503, established calls may continue for `drain_timeout`, then
  every call is ended with BYE/CANCEL and the call records are flushed before exit.
- SIGHUP re-reads the YAML; a bad file is logged with its path and line and the old one stays.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import resource
import signal
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from .. import __version__
from ..api.messages import HttpRequest, HttpResponse
from ..api.metrics import Sample, make_registry, render
from ..api.server import AdminHttpServer, Route
from ..b2bua.acd import AcdBridge
from ..b2bua.b2bua import B2BUA
from ..hooks.builtins import register_builtins
from ..hooks.maskers import MaskProcessor, TextMasker
from ..hooks.registry import HookPoint, HookRegistry
from ..io.connlimits import DescriptorBudget, Refusal, RefusalLog
from ..io.tlscontext import create_self_signed, server_context
from ..io.transports import TransportManager
from ..recording.erasure import ErasureService
from ..recording.keystore import Keystore
from ..recording.retention import RetentionManager
from ..security.audit import AuditLog
from ..security.cli import open_audit_log
from ..security.config import SecurityConfig
from ..security.floodguard import FloodGuard
from ..security.observer import AuditObserver
from ..sip.endpoint import Flow, TransactionLayer
from ..sip.errors import SipFramingError
from ..sip.message import Request
from .cdr import CdrStore
from .config import Config, ConfigError, LoadedConfig, load_config, prompt_library
from .logs import configure_logging
from .loopstall import LoopStallMonitor
from .recording import CallRecorder

if TYPE_CHECKING:
    from ..api.console import ConsoleApi

log = structlog.get_logger("vaultpbx")


def new_token() -> str:
    return os.urandom(8).hex()


# Auth-failure reasons (DigestReason values and the B2BUA's own) in Asterisk's words.
_ASTERISK_ENDINGS = {"unknown-user": "No matching peer found",
                     "identity-mismatch": "Username/auth name mismatch"}
_UNSAFE_USER = re.compile(r"[^\x21-\x7e]|['\"\\]")

GC_FULL_INTERVAL = 600.0  # seconds between full collections (a safety net; nothing should leak)
THROTTLE_SWEEP_INTERVAL = 60.0  # seconds between sweeps of the password-guessing throttles


def descriptor_limit(configured: int | None) -> int:
    """The descriptor limit to plan with: RLIMIT_NOFILE, or a lower configured value."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return soft if configured is None else min(configured, soft)


class GcPauses:
    """Longest and total garbage-collector pauses, per generation (TESTING.md: full collections
    grow with live calls and can outlast T1)."""

    def __init__(self) -> None:
        self.started = 0.0
        self.started_cpu = 0.0
        self.longest = [0.0, 0.0, 0.0]
        # The same in CPU time of this thread: on a busy host the wall-clock pause also holds
        # time the scheduler gave to other processes; the difference tells the two apart.
        self.longest_cpu = [0.0, 0.0, 0.0]
        self.total = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self.collected = [0, 0, 0]  # objects freed by the collector: garbage that was in cycles

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            self.started_cpu = time.thread_time()
            return
        pause = time.perf_counter() - self.started
        pause_cpu = time.thread_time() - self.started_cpu
        generation = info.get("generation", 0)
        self.count[generation] += 1
        self.collected[generation] += info.get("collected", 0)
        self.total[generation] += pause
        if pause > self.longest[generation]:
            self.longest[generation] = pause
        if pause_cpu > self.longest_cpu[generation]:
            self.longest_cpu[generation] = pause_cpu


class Engine:
    def __init__(self, loaded: LoadedConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.loaded = loaded
        self.config: Config = loaded.config
        self.loop = loop
        self.data_dir = Path(self.config.data_dir)
        self.security = SecurityConfig.from_dict(self.config.security)
        self.hooks = HookRegistry()
        register_builtins(self.hooks)
        self.hooks.enable(self.security.hooks.enabled)
        self.hooks.log_processor = MaskProcessor(
            TextMasker(self.security.masking, country=self.security.privacy.default_country),
            registry=self.hooks)
        self.guard = FloodGuard(self.security.floodguard)
        self.b2bua = B2BUA(self.config, token=new_token, hooks=self.hooks,
                           digest_secret=os.urandom(32))
        self.b2bua.auth.on_failure = self._auth_failed
        # One process-wide budget for inbound stream connections (SIP TCP, SIP TLS, and the
        # admin listener, which should take its units from the same object), leaving
        # `descriptors.reserve` for UDP, outbound connections, media control, stores and logs.
        self.descriptors = DescriptorBudget(descriptor_limit(self.config.descriptors.limit),
                                            self.config.descriptors.reserve)
        self.refusal_log = RefusalLog()
        self.transports = TransportManager(
            loop, self.deliver, admit=self._admit, reject=self.reject_unframable,
            max_message_size=self.config.sip.max_message_size,
            idle_timeout=self.config.sip.tcp_idle_timeout,
            limits=self.config.sip.connections, descriptors=self.descriptors,
            exempt=lambda host: self.guard.is_trusted(host), on_limit=self._connection_limit,
        )
        self.transports.on_connect_failed = self._connect_failed
        self._next_throttle_sweep = 0.0
        self.audit: AuditLog | None = None
        self.media_controller: object | None = None
        self.media_port: object | None = None
        self.layer: TransactionLayer | None = None
        self.keystore: Keystore | None = None
        # Call records seal the parties' numbers under the keystore's subject keyring.
        self.cdr = CdrStore(self.data_dir / "cdr.db", self._open_keystore().subjects,
                            timezone=self.config.cdr.timezone)
        self.acd: AcdBridge | None = None  # set in start() when the config has `routing:`
        self.recorder: CallRecorder | None = None  # set in start() when recording is enabled
        self._next_expiry = 0.0  # wall-clock time of the next retention run
        self.http: AdminHttpServer | None = None
        self.console: ConsoleApi | None = None  # the web console, beside the admin API
        self.pci_paused: set[str] = set()  # calls whose PCI pause is on (see _switch_sensitive)
        self.loop_stalls = LoopStallMonitor(loop)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._stopping = asyncio.Event()
        self._call_starts: deque[tuple[float, int]] = deque(maxlen=11)
        self.calls_per_second = 0.0
        self.started_at = time.time()
        self.tasks: list[asyncio.Task[None]] = []
        self.gc_pauses = GcPauses()
        self.gc_cycles_found = 0
        self._next_full_gc = 0.0
        self._reload_task: asyncio.Task[None] | None = None
        # Read per message: one attribute test when off (the default; on, logging costs ~15%
        # CPU at 200 calls/s). The log processor masks and redacts the text (maskers).
        self.log_sip_messages = self.config.logging.sip_messages
        self._reload_again = False

    # -- start -----------------------------------------------------------------------------
    def data_path(self, configured: str) -> Path:
        """Paths written `var/...` in the YAML live under `data_dir` (tests move it)."""
        path = Path(configured)
        if not path.is_absolute() and path.parts[:1] == ("var",):
            return self.data_dir.joinpath(*path.parts[1:])
        return path

    def _open_audit(self) -> None:
        # The sinks, the pinned key and the checkpoint cadence, as the CLI opens it.
        self.audit = open_audit_log(self.data_dir, self.security.audit)
        AuditObserver(self.audit, time.time).attach(self.hooks)

    def _admit(self, host: str, data: bytes | None) -> bool:
        now = self.loop.time()
        return self.guard.check(host, now) if data is None else self.guard.admit(host, data, now)

    def _internal_error(self, exc: BaseException, message: object) -> None:
        log.error("sip.internal_error", error=repr(exc)[:300], message=repr(message)[:300])

    def _rejected(self, request: Request | None, status: int, flow: Flow, reason: str) -> None:
        # One line per rejected request (the peer's text cut short): a bad packet is visible
        # to the operator without flooding the log with a traceback.
        log.info("sip.rejected", status=status, reason=reason[:200],
                 method=request.method if request is not None else None,
                 source=f"{flow.host}:{flow.port}", transport=flow.transport)

    def _auth_failed(self, username: str, why: str, flow: Flow) -> None:
        self.guard.auth_failed(flow.host, self.loop.time())
        # The wording of Asterisk's message, which fail2ban's usual SIP filters match: only
        # Asterisk's own endings match (the detail goes in `reason`), and the user name is the
        # sender's text: a quote in it could end the name early and make the line name
        # another address for fail2ban to ban, so quotes and controls become "?".
        user = _UNSAFE_USER.sub("?", username[:64])
        log.warning(f"Registration from '{user}' failed for '{flow.host}:{flow.port}' - "
                    f"{_ASTERISK_ENDINGS.get(why, 'Wrong password')}",
                    source=flow.host, transport=flow.transport, reason=why)

    def _connect_failed(self, flow: Flow) -> None:
        if self.layer is not None:
            self.layer.flow_failed(flow, self.loop.time())
            self.flush()

    def _connection_limit(self, source: str, listener: str, reason: Refusal) -> None:
        """A SIP TCP/TLS connection was refused or closed as slowloris: counted by the
        transports; logged here once per source per minute (never per connection); a source
        over its own ceiling or too slow feeds the flood guard, which may ban it."""
        now = self.loop.time()
        count = self.refusal_log.note(source, reason, now)
        if count:
            log.warning("sip.connection_limit", source=source, listener=listener,
                        reason=reason.value, count=count)
        if reason in (Refusal.SOURCE, Refusal.HEADER_TIMEOUT) and self.guard.connection_abuse(
                source, now):
            closed = self.transports.close_source(source)
            log.warning("sip.source_banned", source=source, listener=listener,
                        reason=reason.value, closed_connections=closed,
                        seconds=self.guard.config.connection_ban_seconds)

    def _check_descriptor_budgets(self) -> None:
        """Listeners whose budgets add up to more than the descriptors left after the reserve
        can starve each other (the reserve itself stays safe): say so at start-up."""
        default = self.config.sip.connections.max_connections
        budgets = {item.transport: item.max_connections or default
                   for item in self.config.sip.listen if item.transport != "udp"}
        if sum(budgets.values()) > self.descriptors.capacity:
            log.warning("descriptors.budgets_exceed_limit", limit=self.descriptors.limit,
                        reserve=self.descriptors.reserve, budgets=budgets)

    async def start(self) -> None:
        config = self.config
        self._check_descriptor_budgets()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.config.recording.get("enabled"):
            # Before anything listens: a missing KEK refuses the start, saying what to restore,
            # and is never replaced by a new one (docs/keys.md).
            self._open_keystore().check_kek()
        self._open_audit()
        local: dict[str, tuple[str, int]] = {}
        for listener in config.sip.listen:
            if listener.transport == "udp":
                bound = await self.transports.listen_udp(listener.host, listener.port)
            elif listener.transport == "tcp":
                bound = await self.transports.listen_stream(
                    "tcp", listener.host, listener.port,
                    max_connections=listener.max_connections)
            else:
                bound = await self.transports.listen_stream(
                    "tls", listener.host, listener.port, self._tls_context(),
                    max_connections=listener.max_connections)
            local[listener.transport] = (listener.advertise or bound[0], bound[1])
        for transport in ("udp", "tcp", "tls"):
            # Outbound-only transports (e.g. a TLS trunk without a TLS listener) still need a
            # Via/Contact address: use the first listener's host with an ephemeral marker port.
            local.setdefault(transport, next(iter(local.values())))
        self.layer = TransactionLayer(
            self.b2bua, timers=config.sip.timers, local_addresses=local, token=new_token,
            user_agent=config.sip.user_agent,
        )
        self.b2bua.attach(self.layer)
        self.layer.on_internal_error = self._internal_error
        self.layer.on_rejected = self._rejected
        self._start_acd()
        await self._start_media()
        self._start_recording()
        if config.admin.port:
            await self._start_admin()
        self.tasks.append(self.loop.create_task(self._housekeeping()))
        gc.collect()
        gc.freeze()  # start-up objects never need scanning again
        # Calls, legs, dialogs and transactions form no reference cycles (Call.finish breaks
        # the only one), so reference counting frees them. Young collections stay (cheap,
        # bounded by recent allocations); automatic full collections, whose pause grows with
        # live calls (TESTING.md), are replaced by one every GC_FULL_INTERVAL from housekeeping.
        gc.set_threshold(5_000, 10, 1_000_000_000)
        gc.callbacks.append(self.gc_pauses)
        self.loop_stalls.start()
        self.hooks.notify(HookPoint.CONFIG_CHANGE, {
            "actor": "system", "action": "engine.start", "target": str(self.loaded.path),
            "details": {"version": __version__}})
        log.info("engine.started", version=__version__, listen={k: f"{h}:{p}" for k, (h, p)
                                                                 in local.items()},
                 admin=f"{config.admin.host}:{config.admin.port}", data_dir=str(self.data_dir))

    def _start_acd(self) -> None:
        """Skills-based routing (issue 5) when the config has a `routing:` section: the bridge
        rings agents through the B2BUA and keeps agent presence in <data_dir>/acd.db."""
        if not self.config.routing:
            return
        self.acd = AcdBridge(self.b2bua, self.config.routing, self.loop.time(),
                             state_path=self.data_dir / "acd.db", clock=self.loop.time,
                             flush=self.flush)
        self.b2bua.queue_router = self.acd

    async def _start_media(self) -> None:
        """Media anchoring (on unless `media.anchor: false`): workers relay RTP/SRTP."""
        raw = dict(self.config.media)
        if not raw.pop("anchor", True):
            return
        from ..media.config import MediaConfig
        from ..media.controller import MediaController
        from .mediaport import AsyncMediaPort

        def calls_lost(call_ids: tuple[str, ...], reason: str) -> None:
            log.error("media.calls_lost", calls=len(call_ids), reason=reason)
            if self.recorder is not None:
                self.recorder.calls_lost(call_ids)
            now = self.loop.time()
            for call_id in call_ids:
                self.b2bua.end_call_by_id(call_id, "media_lost", now)
            self.flush()

        def media_timeout(call_id: str) -> None:
            self.b2bua.end_call_by_id(call_id, "media_timeout", self.loop.time())
            self.flush()

        controller = MediaController(MediaConfig.from_dict(raw), on_calls_lost=calls_lost,
                                     on_media_timeout=media_timeout)
        await controller.start()
        self.media_controller = controller
        port = AsyncMediaPort(controller, self.loop, self.flush)
        self.media_port = port
        self.b2bua.media = port
        self._wire_prompts()

    def _wire_prompts(self) -> None:
        """Queue announcements: the media port plays prompts by name, the ACD times them."""
        from .mediaport import AsyncMediaPort

        port = self.media_port
        if not isinstance(port, AsyncMediaPort):
            return
        library = prompt_library(self.config)
        port.prompts = library
        if self.acd is not None:
            port.opening = self.acd.opening_prompts
            self.acd.announcer = port
            self.acd.prompt_seconds = library.seconds

    def _open_keystore(self) -> Keystore:
        if self.keystore is None:
            from ..recording.config import RecordingConfig, kek_warnings
            from ..recording.kek import open_kek
            from ..recording.keystore import RetentionPolicy

            settings = RecordingConfig.from_dict(self.config.recording)
            for warning in kek_warnings(settings, self.data_dir):
                log.warning("recording.kek_beside_data", detail=warning)
            retention = RetentionPolicy(
                days_by_class={name: queue.retention_days for name, queue
                               in self.config.queues.items() if queue.retention_days},
                default_days=settings.retention_days)
            self.keystore = Keystore(self.data_dir / "keystore.db",
                                     open_kek(settings.kek, self.data_dir),
                                     retention=retention, hooks=self.hooks,
                                     sync_commits=False,  # housekeeping checkpoints it
                                     country=self.security.privacy.default_country)
            shred_log = settings.shred_log_path(self.data_dir)
            if shred_log is not None:  # the shred log kept apart (docs/backup-and-restore.md)
                from ..recording.shredlog import ShredLog

                self.keystore.outside_log = ShredLog(shred_log)
        return self.keystore

    def _start_recording(self) -> None:
        """Record answered anchored calls (issue 4) when `recording.enabled`: keys and index
        here, sealed audio written by the media workers under <data_dir>/recordings."""
        from ..media.controller import MediaController
        from ..recording.config import RecordingConfig

        settings = RecordingConfig.from_dict(self.config.recording)
        if not settings.enabled:
            return
        controller = self.media_controller
        self.recorder = CallRecorder(
            settings, self._open_keystore(), self.data_dir / "recordings",
            controller=controller if isinstance(controller, MediaController) else None,
            b2bua=self.b2bua, hooks=self.hooks, loop=self.loop)
        self.recorder.start()
        if controller is None:
            log.warning("recording.needs_anchored_media")

    async def _start_admin(self) -> None:
        """The admin API on aiohttp, in this process: it shares the engine's state (sessions,
        ACD presence, live calls, the audit chain) directly. Its listener has its own
        connection budget and timeouts, and CPU-heavy work runs in worker threads, so admin
        load cannot take descriptors or the loop from SIP (docs/admin-api.md, "Limits")."""
        from ..api.admin import AdminApi
        from ..api.listener import ListenerLimits
        from ..api.recordings import KeystoreRecordings

        admin = self.config.admin
        self._open_keystore()
        assert self.keystore is not None
        audit = self.security.audit
        self.admin_api = AdminApi.from_config(
            self.security, hooks=self.hooks, cdr=self.cdr,
            recordings=KeystoreRecordings(self.keystore), clock=time.time,
            audit_dir=self.data_path(audit.dir),
            audit_sink=self.data_path(audit.sink) if audit.sink else None,
        )
        if self.recorder is not None:
            self.admin_api.sensitive = self._switch_sensitive
        self.admin_api.erasure = self._erasure_service()
        # The authenticated API's routes (its masked /calls included) win over the open ones.
        # Agent controls and queue statistics need a session like the rest of the API.
        acd_routes: list[Route] = []
        if self.acd is not None:
            routes = self.acd.admin_routes()
            acd_routes = self.admin_api.guard_routes(
                routes, {"GET": "calls.monitor", "POST": "calls.handle"},
                own_agent_only=[key for key in routes if key[0] == "POST"])
        limits = ListenerLimits(
            max_connections=admin.max_connections,
            max_per_source=admin.max_connections_per_source,
            header_timeout=admin.header_timeout, idle_timeout=admin.idle_timeout,
            max_head_size=admin.max_head_size,
            max_new_per_second=admin.max_new_connections_per_second,
            max_new_per_source_per_second=admin.max_new_connections_per_source_per_second)
        from ..api.console import ConsoleApi
        acd = self.acd
        self.console = ConsoleApi(
            self.admin_api, clock=time.time, live_calls=self.live_calls, hangup=self.hang_up,
            stats=(lambda: acd.stats(self.loop.time())) if acd is not None else None)
        self.http = AdminHttpServer(
            [*self._routes(), *acd_routes, *self.admin_api.routes(), *self.console.routes()],
            middlewares=self.console.middlewares(), limits=limits,
            max_body=admin.max_body_size, executor=self.admin_api.workers)
        context = None
        if admin.tls:
            tls = self.config.sip.tls
            cert = Path(admin.certificate or tls.certificate)
            key = Path(admin.private_key or tls.private_key)
            self._ensure_dev_certificate(cert, key)
            context = server_context(cert, key, min_version=admin.min_version)
        await self.http.start(admin.host, admin.port, context)

    def _switch_sensitive(self, call_id: str, on: bool, actor: str) -> bool:
        """The PCI pause, remembered for the console's live calls: a cache of the switches
        sent, pruned to the live calls on every look (the recording worker owns the fact)."""
        assert self.recorder is not None
        switched = self.recorder.set_sensitive(call_id, on, actor)
        if switched:
            (self.pci_paused.add if on else self.pci_paused.discard)(call_id)
        return switched

    def live_calls(self) -> list[dict[str, object]]:
        """The calls in progress, for the console (masked there by role)."""
        now = self.loop.time()
        recorded = self.recorder.active if self.recorder is not None else {}
        out: list[dict[str, object]] = []
        self.pci_paused &= self.b2bua.calls.keys()
        for call in list(self.b2bua.calls.values()):
            since = call.answered_at if call.answered_at is not None else call.started
            out.append({"id": call.id, "caller": call.caller, "callee": call.callee,
                        "state": str(getattr(call.state, "value", call.state)),
                        "queue": call.acd_queue or call.queue or None, "agent": call.agent,
                        "seconds": round(now - since, 1), "recorded": call.id in recorded,
                        "pci_pause": call.id in self.pci_paused})
        return out

    def hang_up(self, call_id: str) -> bool:
        """A person ends a live call from the console: the B2BUA's own ending path (BYE or
        CANCEL on each leg), then the commands go out at once."""
        if call_id not in self.b2bua.calls:
            return False
        self.b2bua.end_call_by_id(call_id, "admin_hangup", self.loop.time())
        self.flush()
        return True

    def _erasure_service(self) -> ErasureService:
        """Erasure by caller across the stores that hold callers' data (recordings, call
        records; voicemail and callback stores join with `add_store` when they exist)."""
        keystore = self._open_keystore()
        return ErasureService(keystore, [RetentionManager(keystore), self.cdr], hooks=self.hooks,
                              needs_approval=self.security.privacy.erasure_needs_approval)

    def expire_recordings(self, now: float) -> int:
        """Shred every finished recording past its expiry (not on legal hold)."""
        from ..recording.config import RecordingConfig

        self._next_expiry = now + RecordingConfig.from_dict(self.config.recording).expire_every
        shredded = RetentionManager(self._open_keystore()).expire(now)
        if shredded:
            log.info("retention.expired", recordings=len(shredded))
        return len(shredded)

    def _ensure_dev_certificate(self, cert: Path, key: Path) -> None:
        if self.config.sip.tls.create_self_signed and not (cert.exists() and key.exists()):
            create_self_signed(cert, key)
            log.info("tls.self_signed_created", certificate=str(cert))

    def _tls_context(self):  # type: ignore[no-untyped-def]
        tls = self.config.sip.tls
        cert, key = Path(tls.certificate), Path(tls.private_key)
        self._ensure_dev_certificate(cert, key)
        return server_context(
            cert, key, min_version=tls.min_version,
            client_ca=Path(tls.client_ca) if tls.client_ca else None,
            require_client_certificate=tls.require_client_certificate,
        )

    # -- the per-message path -----------------------------------------------------------------
    def deliver(self, data: bytes, flow: Flow) -> None:
        layer = self.layer
        if layer is None:
            return
        if self.log_sip_messages:
            _log_sip_message("sip.received", data, flow)
        layer.receive(data, flow, self.loop.time())
        self.flush()

    def reject_unframable(self, head: bytes, error: SipFramingError, flow: Flow) -> None:
        """A TCP/TLS frame the framer gave up on: answered (413/400) before the close."""
        layer = self.layer
        if layer is None:
            return
        layer.reject_unframable(head, error, flow)
        self.flush()

    def flush(self) -> None:
        layer = self.layer
        assert layer is not None
        outbox = layer.outbox
        if outbox:
            send = self.transports.send
            for data, flow in outbox:
                if self.log_sip_messages:
                    _log_sip_message("sip.sent", data, flow)
                send(data, flow)
            outbox.clear()
        deadline = layer.get_timer()
        if deadline is not None and deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        layer = self.layer
        assert layer is not None
        layer.handle_timer(self.loop.time())
        self.flush()

    # -- housekeeping ---------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.housekeeping_once()
                if self.console is not None:
                    self.console.sample(time.time())  # the wallboard chart: one point a second
            except Exception:
                log.exception("housekeeping.failed")

    def housekeeping_once(self) -> None:
        records = self.b2bua.finished_records
        queue_events = self.acd.queue_events if self.acd is not None else []
        if records or queue_events:
            self.b2bua.finished_records = []
            if self.acd is not None:
                self.acd.queue_events = []
            recorded = (self.recorder.take_recording_ids(r.call_id for r in records)
                        if self.recorder is not None else {})
            # UTC from the engine's clock with the wall clock's offset as it is now (cdr.py).
            self.cdr.write(records, queue_events,
                           wall_offset=time.time() - self.loop.time(), recording_ids=recorded)
            for record in records:
                log.info("call.ended", call_id=record.call_id, caller=record.caller,
                         callee=record.callee, cause=record.cause, status=record.status,
                         duration=round(record.ended - (record.answered or record.ended), 3))
        now = self.loop.time()
        started = self.b2bua.stats["calls_started"]
        self._call_starts.append((now, started))
        first_t, first_n = self._call_starts[0]
        if now > first_t:
            self.calls_per_second = (started - first_n) / (now - first_t)
        if self.recorder is not None:
            self.recorder.flush()  # this second's closed recordings
            self.recorder.follow_keys()  # a rotation by the CLI applies from the next call
        if self.keystore is not None:
            self.keystore.checkpoint()  # this second's recording rows are now on disk
            wall = time.time()
            if wall >= self._next_expiry:
                self.expire_recordings(wall)
        self.b2bua.location.sweep(now)
        self.b2bua.qualify(now)  # OPTIONS to registered contacts when due (sip.qualify)
        registrar = self.b2bua.registrar
        for aor, contact in registrar.pruned:
            log.warning("registrar.contact_pruned", aor=aor, contact=contact,
                        reason="unanswered_options")
        registrar.pruned.clear()
        self.guard.sweep(now)
        self.transports.close_idle(now)
        for source, reason, count in self.refusal_log.sweep(now):
            log.warning("sip.connection_limit", source=source, reason=reason.value,
                        count=count)
        if now >= self._next_throttle_sweep:
            self._next_throttle_sweep = now + THROTTLE_SWEEP_INTERVAL
            self.b2bua.auth.throttle.sweep(now)
            admin_api = getattr(self, "admin_api", None)
            if admin_api is not None:
                admin_api.auth.throttle.sweep(time.time())  # the admin API's clock
        if now >= self._next_full_gc:
            if self._next_full_gc:
                self.gc_cycles_found += gc.collect()
            self._next_full_gc = now + GC_FULL_INTERVAL
        if self.layer is not None:
            self.flush()
        if self.audit is not None:  # last: a lock timeout here must not skip the rest
            self.audit.checkpoint_if_due(time.time())  # records reach the outside sinks in time

    # -- admin API --------------------------------------------------------------------------------
    def _routes(self) -> list[Route]:
        registry = make_registry(self.metric_samples)

        def health(request: HttpRequest) -> HttpResponse:
            return HttpResponse.of_json({
                "status": "draining" if self.b2bua.draining else "ok",
                "version": __version__, "active_calls": len(self.b2bua.calls),
                "registrations": self.b2bua.location.count(),
            })

        def metrics(request: HttpRequest) -> HttpResponse:
            return HttpResponse(body=render(registry),
                                content_type="text/plain; version=0.0.4; charset=utf-8")

        return [Route.open("GET", "/health", health), Route.open("GET", "/metrics", metrics)]

    def metric_samples(self) -> list[Sample]:
        b = self.b2bua
        layer = self.layer
        samples: list[Sample] = [
            ("vaultpbx_active_calls", "gauge", len(b.calls), "Calls in progress"),
            ("vaultpbx_calls_per_second", "gauge", self.calls_per_second,
             "New calls per second over the last 10 s"),
            ("vaultpbx_registrations", "gauge", b.location.count(), "Registered contacts"),
            ("vaultpbx_tcp_connections", "gauge", len(self.transports.connections),
             "Open TCP/TLS connections"),
            ("vaultpbx_descriptors_limit", "gauge", self.descriptors.limit,
             "Descriptor limit planned with"),
            ("vaultpbx_descriptors_reserve", "gauge", self.descriptors.reserve,
             "Descriptors inbound connections may not take"),
            ("vaultpbx_descriptors_inbound", "gauge", self.descriptors.in_use,
             "Descriptors held by inbound stream connections"),
        ]
        for listener, budget in self.transports.budgets.items():
            samples.append((f"vaultpbx_sip_{listener}_inbound_connections", "gauge",
                            budget.total, f"Inbound SIP {listener} connections"))
        for name, value in b.auth.throttle.counters("digest_throttle").items():
            kind = "counter" if name.endswith("_total") else "gauge"
            samples.append((f"vaultpbx_{name.removesuffix('_total')}", kind, value,
                            name.replace("_", " ")))
        for name, value in b.counters().items():
            samples.append((f"vaultpbx_{name}", "counter", value, name.replace("_", " ")))
        if layer is not None:
            samples.append(("vaultpbx_transactions", "gauge",
                            len(layer.server_transactions) + len(layer.client_transactions),
                            "Live SIP transactions"))
            for name, value in layer.counters.as_dict().items():
                samples.append((f"vaultpbx_sip_{name}", "counter", value, name.replace("_", " ")))
        for name, value in self.guard.counters().items():
            kind = "counter" if name.endswith("_total") else "gauge"
            samples.append((f"vaultpbx_{name.removesuffix('_total')}", kind, value,
                            name.replace("_", " ")))
        for name, value in self.transports.counters.as_dict().items():
            samples.append((f"vaultpbx_transport_{name}", "counter", value,
                            name.replace("_", " ")))
        samples.append(("vaultpbx_hook_errors", "counter", self.hooks.errors,
                        "Plug-in errors isolated"))
        if self.audit is not None:
            samples.extend(self.audit.metric_samples())
        samples.append(("vaultpbx_cdr_records_written", "counter", self.cdr.written,
                        "Call records written to cdr.db"))
        samples.append(("vaultpbx_cdr_queue_events_written", "counter", self.cdr.events_written,
                        "Queue events written to cdr.db"))
        if self.acd is not None:
            samples.extend(self.acd.metric_samples(self.loop.time()))
        controller = self.media_controller
        if controller is not None:
            samples.extend(controller.metric_samples())  # type: ignore[attr-defined]
        if self.recorder is not None:
            samples.extend(self.recorder.metric_samples())
        admin_api = getattr(self, "admin_api", None)
        if admin_api is not None:
            for name, value in admin_api.counters.items():
                samples.append((f"vaultpbx_{name.removesuffix('_total')}", "counter", value,
                                name.replace("_", " ")))
            for name, value in admin_api.auth.throttle.counters("login_throttle").items():
                kind = "counter" if name.endswith("_total") else "gauge"
                samples.append((f"vaultpbx_{name.removesuffix('_total')}", kind, value,
                                name.replace("_", " ")))
        if self.console is not None:  # CSRF refusals, open WebSockets, hang-ups, plays
            for name, value in self.console.counters.items():
                kind = "counter" if name.endswith("_total") else "gauge"
                samples.append((f"vaultpbx_{name.removesuffix('_total')}", kind, value,
                                name.replace("_", " ")))
        if self.http is not None:
            for name, value in self.http.metric_counters().items():
                kind = "counter" if name.endswith("_total") else "gauge"
                samples.append((f"vaultpbx_admin_http_{name.removesuffix('_total')}", kind,
                                value, f"admin listener: {name.replace('_', ' ')}"))
        samples.extend(self.loop_stalls.samples())
        samples.append(("vaultpbx_gc_cycles_found", "counter", self.gc_cycles_found,
                        "Objects found in reference cycles by the periodic full collection"))
        for generation in range(3):
            samples.append((f"vaultpbx_gc_gen{generation}_longest_pause_seconds", "gauge",
                            self.gc_pauses.longest[generation],
                            f"Longest generation-{generation} collection"))
            samples.append((f"vaultpbx_gc_gen{generation}_longest_pause_cpu_seconds", "gauge",
                            self.gc_pauses.longest_cpu[generation],
                            f"Longest generation-{generation} collection in CPU time"))
            samples.append((f"vaultpbx_gc_gen{generation}_collected", "counter",
                            self.gc_pauses.collected[generation],
                            f"Objects in reference cycles freed by generation-{generation} "
                            "collections"))
            samples.append((f"vaultpbx_gc_gen{generation}_collections", "counter",
                            self.gc_pauses.count[generation],
                            f"Generation-{generation} collections"))
        return samples

    # -- signals ----------------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: read and check the file in a worker thread, so a slow or hostile file never
        holds up signalling, then apply it here on the loop. A SIGHUP during a reload runs
        one more reload after it (the file may have changed again)."""
        if self._reload_task is not None and not self._reload_task.done():
            self._reload_again = True
            return
        self._reload_again = False
        self._reload_task = self.loop.create_task(self._reload_off_loop())

    async def _reload_off_loop(self) -> None:
        while True:
            try:
                loaded = await asyncio.to_thread(load_config, self.loaded.path)
            except ConfigError as exc:
                self._reload_rejected(exc)
            except Exception:  # noqa: BLE001 - a reload must never end the engine
                log.exception("config.reload_failed", path=str(self.loaded.path))
            else:
                self._apply_reload(loaded)
            if not self._reload_again:
                return
            self._reload_again = False

    def _reload_rejected(self, exc: ConfigError) -> None:
        log.error("config.reload_rejected", error=str(exc))
        self.hooks.notify(HookPoint.CONFIG_CHANGE, {
            "actor": "system", "action": "config.reload_rejected",
            "target": str(self.loaded.path), "details": {"error": str(exc)}})

    def _apply_reload(self, loaded: LoadedConfig) -> None:
        if loaded.config.sip.listen != self.config.sip.listen:
            log.warning("config.listen_changed_needs_restart")
        if loaded.config.recording.get("kek") != self.config.recording.get("kek"):
            log.warning("config.recording_kek_changed_needs_restart")  # keys are not swapped live
        self.loaded = loaded
        self.config = loaded.config
        self.log_sip_messages = loaded.config.logging.sip_messages
        self.b2bua.apply_config(loaded.config)
        self.cdr.timezone = loaded.config.cdr.timezone  # records written from now on
        self.transports.apply_limits(loaded.config.sip.connections)
        self._reload_security(SecurityConfig.from_dict(loaded.config.security))
        if self.acd is not None:
            self.acd.apply_config(loaded.config.routing, self.loop.time())
        elif loaded.config.routing and self.layer is not None:
            self._start_acd()  # routing added by this reload (its admin routes need a restart)
        self._wire_prompts()  # a changed `sounds:` directory
        self.hooks.notify(HookPoint.CONFIG_CHANGE, {
            "actor": "system", "action": "config.reload", "target": str(loaded.path),
            "details": {}})
        log.info("config.reloaded", path=str(loaded.path))

    async def drain(self) -> None:
        """SIGTERM: refuse new calls, let calls finish for drain_timeout, then end the rest."""
        self.b2bua.start_drain()
        log.info("engine.draining", active_calls=len(self.b2bua.calls),
                 timeout=self.config.drain_timeout)
        deadline = self.loop.time() + self.config.drain_timeout
        while self.b2bua.calls and self.loop.time() < deadline:
            await asyncio.sleep(0.1)
        if self.b2bua.calls:
            self.b2bua.end_all(self.loop.time(), "shutdown")
            self.flush()
        # Let BYE/CANCEL transactions get their answers (bounded).
        layer = self.layer
        end = self.loop.time() + 2.0
        while layer is not None and self.loop.time() < end and any(
                t.method in ("BYE", "CANCEL") for t in layer.client_transactions.values()
                if t.state.value in ("Trying", "Proceeding")):
            await asyncio.sleep(0.05)
        self.housekeeping_once()

    def _reload_security(self, security: SecurityConfig) -> None:
        """New flood-guard limits and trusted networks take effect at once; bans in force stay
        (a reload must not release an attacker). Users and sessions need a restart."""
        now = self.loop.time()
        if security.floodguard != self.security.floodguard:
            guard = FloodGuard(security.floodguard)
            for source, until in self.guard.banned(now).items():
                guard.ban(source, until)
            self.guard = guard
        if security.users != self.security.users or security.audit != self.security.audit:
            log.warning("config.security_users_or_audit_changed_need_restart")
        self.security = security

    def stop(self) -> None:
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        await self._stopping.wait()
        await self.drain()
        for task in self.tasks:
            task.cancel()
        if self.media_port is not None:
            await self.media_port.drain()  # type: ignore[attr-defined]
        if self.media_controller is not None:
            await self.media_controller.close()  # type: ignore[attr-defined]
        if self.recorder is not None:
            self.recorder.close()
        if self.http is not None:
            await self.http.close()
        if getattr(self, "admin_api", None) is not None:
            self.admin_api.close()
        self.loop_stalls.stop()
        self.transports.close()
        self.cdr.close()
        if self.acd is not None:
            self.acd.close()
        self.hooks.notify(HookPoint.CONFIG_CHANGE, {
            "actor": "system", "action": "engine.stop", "target": str(self.loaded.path),
            "details": {}})
        if self.audit is not None:
            self.audit.close(time.time())
        log.info("engine.stopped")


def _log_sip_message(event: str, data: bytes, flow: Flow) -> None:
    """One log record per SIP message (`logging.sip_messages`). Like every record it passes
    the log processor, which masks personal data and redacts Authorization and SDES keys by
    the maskers' policy, so the raw text is never written."""
    log.info(event, transport=flow.transport, peer=f"{flow.host}:{flow.port}",
             message=data.decode("utf-8", "replace"))


async def serve(config_path: str) -> int:
    loaded = load_config(config_path)
    loop = asyncio.get_running_loop()
    hooks_probe = HookRegistry()
    configure_logging(loaded.config.logging.level, hooks_probe)
    engine = Engine(loaded, loop)
    configure_logging(loaded.config.logging.level, engine.hooks)
    await engine.start()
    loop.add_signal_handler(signal.SIGTERM, engine.stop)
    loop.add_signal_handler(signal.SIGINT, engine.stop)
    loop.add_signal_handler(signal.SIGHUP, engine.reload)
    await engine.run_until_stopped()
    return 0
