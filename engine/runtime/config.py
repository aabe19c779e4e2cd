"""The typed configuration of vaultpbx: one YAML file, read once, frozen.

Every field has a docstring; `load_config` rejects unknown keys and names the YAML path and line
of any error. Sections owned by other packages (routing, recording, security) are kept as
mappings here and validated by those packages' own models at wiring time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..io.connlimits import ConnectionLimitsConfig
from ..security.throttle import ThrottleConfig
from ..sip.timers import TimerConfig
from .typedyaml import MAX_CONFIG_BYTES, ConfigError, LineMap, build, load_yaml

if TYPE_CHECKING:
    from ..media.prompts import PromptLibrary

Transport = Literal["udp", "tcp", "tls"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenConfig:
    transport: Transport
    """udp, tcp or tls."""
    host: str = "127.0.0.1"
    """Address to bind. The shipped configs bind loopback only."""
    port: int = 5060
    """Port to bind (5061 is customary for TLS)."""
    advertise: str | None = None
    """Address put in Via/Contact/SDP when it differs from `host` (NAT)."""
    max_connections: int | None = None
    """TCP/TLS: this listener's own inbound connection budget; None: sip.connections'."""

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if self.max_connections is not None and (
                self.transport == "udp" or self.max_connections < 1):
            raise ValueError("max_connections is for a tcp or tls listener, at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    certificate: str = "var/tls/dev-cert.pem"
    """PEM certificate chain presented by the TLS listener."""
    private_key: str = "var/tls/dev-key.pem"
    """PEM private key of that certificate (kept 0600)."""
    create_self_signed: bool = True
    """Create a self-signed development certificate at the paths above when missing."""
    min_version: Literal["1.2", "1.3"] = "1.3"
    """Lowest TLS version accepted."""
    client_ca: str | None = None
    """CA bundle for verifying client certificates (trunks). None: no client certificates."""
    require_client_certificate: bool = False
    """Refuse TLS clients that present no certificate signed by `client_ca`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QualifyConfig:
    interval: float = 0.0
    """Seconds between OPTIONS probes to every registered contact; 0: no probes."""
    max_failures: int = 3
    """Probes in a row a contact may leave unanswered before its binding is removed."""

    def validate(self) -> None:
        if self.interval < 0:
            raise ValueError("interval must not be negative")
        if self.max_failures < 1:
            raise ValueError("max_failures must be at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class SipConfig:
    listen: list[ListenConfig] = field(
        default_factory=lambda: [ListenConfig(transport="udp"), ListenConfig(transport="tcp")]
    )
    """Listeners; one per transport at most."""
    tls: TlsConfig = field(default_factory=TlsConfig)
    """TLS listener settings."""
    domain: str = "vaultpbx.local"
    """The SIP domain of the extensions; also the digest realm."""
    timers: TimerConfig = field(default_factory=TimerConfig)
    """RFC 3261 T1/T2/T4."""
    max_message_size: int = 65535
    """Largest SIP message accepted on any transport, in bytes."""
    nonce_ttl: float = 300.0
    """Seconds a digest nonce stays valid."""
    digest_algorithms: list[Literal["SHA-256", "MD5"]] = field(
        default_factory=lambda: ["SHA-256", "MD5"]
    )
    """Digest algorithms offered in 401/407 challenges, one header each, in this order
    (RFC 8760). Clients that answer only the topmost challenge and know only MD5 (SIPp, older
    phones) need MD5 first or alone."""
    user_agent: str = "vaultpbx"
    """User-Agent/Server header value."""
    session_expires: int = 1800
    """RFC 4028 session interval offered/accepted; 0 disables session timers."""
    keepalive_probe_interval: float = 900.0
    """Seconds between in-dialog OPTIONS probes on calls without session timers; 0: off."""
    max_call_duration: float = 14400.0
    """Calls longer than this are ended on both legs, seconds."""
    ring_timeout: float = 60.0
    """Seconds a destination may ring before the caller gets 408/480."""
    register_min_expires: int = 60
    """Shortest registration accepted (shorter gets 423 Interval Too Brief)."""
    register_max_expires: int = 7200
    """Longest registration granted."""
    register_default_expires: int = 3600
    """Registration interval when the client asks none."""
    tcp_idle_timeout: float = 600.0
    """Close TCP/TLS connections idle for this long, seconds."""
    connections: ConnectionLimitsConfig = field(default_factory=ConnectionLimitsConfig)
    """Inbound TCP/TLS connection budget of each stream listener (total and per source) and
    the slowloris timeout; exceeding them is counted, logged per source and feeds the flood
    guard's bans (security.floodguard.connection_strikes)."""
    digest_throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    """Wrong digest passwords: waits per (user, source address) and per user, for trusted
    sources too. A throttled attempt gets the same 401/407 challenge as a wrong password."""
    fork_response_timeout: float = 4.0
    """Seconds a branch to a registered contact may stay silent (not even 100 Trying) before
    it is pruned as unreachable, so one vanished device does not hold a forked call until
    ring_timeout (RFC 3261 §16.7); 0: only Timer B (64*T1) prunes it."""
    qualify: QualifyConfig = field(default_factory=QualifyConfig)
    """OPTIONS probes to registered contacts; contacts that stop answering are removed."""
    max_redirects: int = 3
    """3xx answers from callees the PBX follows itself for one call (RFC 3261 §8.1.3.4);
    past it, or for targets it cannot reach, the 3xx goes to the caller with its Contact."""

    def validate(self) -> None:
        seen = set()
        for listener in self.listen:
            if listener.transport in seen:
                raise ValueError(f"two listeners for {listener.transport}")
            seen.add(listener.transport)
        if not self.listen:
            raise ValueError("at least one listener is needed")
        if self.fork_response_timeout < 0:
            raise ValueError("fork_response_timeout must not be negative")
        if self.max_redirects < 0:
            raise ValueError("max_redirects must not be negative")
        if not self.digest_algorithms:
            raise ValueError("digest_algorithms needs at least one algorithm")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtensionConfig:
    password: str = field(repr=False)
    """Digest password of the extension (never logged)."""
    display_name: str | None = None
    """Caller name shown to callees."""
    srtp: Literal["required", "optional", "off"] = "optional"
    """Media encryption policy for this extension's leg."""
    max_contacts: int = 5
    """Registrations kept per extension (newest win)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrunkConfig:
    target: str
    """Static SIP target of the trunk, e.g. sip:127.0.0.1:5070."""
    transport: Transport = "udp"
    """Transport to reach the target."""
    username: str | None = None
    """Outbound digest credentials, when the far end challenges."""
    password: str | None = field(default=None, repr=False)
    """Outbound digest password (never logged)."""
    max_calls: int = 0
    """Concurrent call limit; 0 means unlimited."""
    from_domain: str | None = None
    """Domain for the From header of calls sent to the trunk."""
    srtp: Literal["required", "optional", "off"] = "off"
    """Media encryption policy for this trunk's leg."""
    inbound: bool = True
    """Accept calls from the target address without digest auth (routed by the dialplan)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DialplanRule:
    match: str
    """Regular expression matched against the whole user part of the Request-URI."""
    extension: str | None = None
    """Ring this extension; backreferences like \\1 allowed."""
    trunk: str | None = None
    """Send to this trunk."""
    number: str = "\\g<0>"
    """Number sent to the trunk; backreferences allowed. Default: the dialled number."""
    queue: str | None = None
    """Hand the call to this queue."""

    def validate(self) -> None:
        targets = [t for t in (self.extension, self.trunk, self.queue) if t is not None]
        if len(targets) != 1:
            raise ValueError("a dialplan rule needs exactly one of extension, trunk, queue")
        try:
            re.compile(self.match)
        except re.error as exc:
            raise ValueError(f"bad regular expression {self.match!r}: {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    members: list[str] = field(default_factory=list)
    """Extensions rung in order until one answers (until the router is wired in)."""
    ring_timeout: float = 20.0
    """Seconds each member rings before the next is tried."""
    retention_days: int | None = None
    """Recording retention for calls of this queue (None: the recording default)."""
    music_on_hold: str | None = None
    """WAV file (8 kHz mono 16-bit) waiting callers hear; None: `media.music_on_hold`; empty:
    none (callers hear the members ringing)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    trusted_sources: list[str] = field(default_factory=list)
    """Source addresses whose calls need no digest auth (load generators, SBCs)."""
    require_from_match: bool = True
    """The authenticated user must be the user part of From."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    host: str = "127.0.0.1"
    """Admin HTTP API bind address."""
    port: int = 8080
    """Admin HTTP API port; 0 disables it."""
    tls: bool = True
    """Serve the admin API over HTTPS (TLS 1.3 unless `min_version` says otherwise)."""
    certificate: str | None = None
    """PEM certificate for HTTPS; None: the SIP TLS certificate (`sip.tls`)."""
    private_key: str | None = None
    """PEM key of that certificate; None: the SIP TLS key."""
    min_version: Literal["1.2", "1.3"] = "1.3"
    """Lowest TLS version the admin API accepts."""
    max_connections: int = 512
    """Admin connections open at once, TLS handshakes included; more are closed at accept. The
    admin listener's own budget: it cannot take the descriptors SIP needs."""
    max_connections_per_source: int = 32
    """Admin connections open at once from one address."""
    header_timeout: float = 10.0
    """Seconds a client has for the TLS handshake, for a request head once its first byte
    arrived, and for a request body; then the connection is closed (slowloris)."""
    idle_timeout: float = 60.0
    """Close an admin connection with no request in progress after this many seconds."""
    max_head_size: int = 16384
    """Largest request head (request line and headers), in bytes; a larger one is cut."""
    max_body_size: int = 1048576
    """Largest request body, in bytes (413 beyond)."""
    max_new_connections_per_second: float = 200.0
    """New admin connections admitted per second in all (bursts of twice that); more are closed
    at accept. Each TLS handshake costs the event loop, which carries SIP, about 1 ms of CPU."""
    max_new_connections_per_source_per_second: float = 100.0
    """New admin connections admitted per second from one address (bursts of twice that)."""

    def validate(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if not 0 < self.max_connections_per_source <= self.max_connections:
            raise ValueError("max_connections_per_source must be from 1 to max_connections")
        for name in ("header_timeout", "idle_timeout", "max_new_connections_per_second",
                     "max_new_connections_per_source_per_second"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_head_size < 1024 or self.max_body_size < 1024:
            raise ValueError("max_head_size and max_body_size must be at least 1024")


@dataclass(frozen=True, slots=True, kw_only=True)
class DescriptorsConfig:
    reserve: int = 2000
    """File descriptors that inbound TCP/TLS connections of all listeners together (the SIP
    listeners, and an admin listener that draws on the same budget) may never take: kept for
    the UDP socket, outbound trunk connections, media worker control, stores and logs."""
    limit: int | None = None
    """The process's descriptor limit to plan with; None: RLIMIT_NOFILE (a lower value is
    used as is, a higher one is capped to RLIMIT_NOFILE)."""

    def validate(self) -> None:
        if self.reserve < 64:
            raise ValueError("reserve must be at least 64")
        if self.limit is not None and self.limit <= self.reserve:
            raise ValueError("limit must be larger than reserve")


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level written."""
    sip_messages: bool = False
    """Log every SIP message (costs ~15% CPU at 200 calls/s; for debugging)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CdrConfig:
    timezone: str = "UTC"
    """IANA time zone (e.g. Asia/Shanghai) written with each call record for display; the
    record's times themselves are always UTC (docs/cdr.md)."""

    def validate(self) -> None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if self.timezone == "UTC":
            return  # needs no time zone database (scripts/setup.sh installs Debian tzdata)
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: unknown time zone {self.timezone!r}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    data_dir: str = "var"
    """Where databases, keys, recordings and logs live (relative to the working directory)."""
    drain_timeout: float = 30.0
    """On SIGTERM, seconds established calls may continue before they are ended."""
    sip: SipConfig = field(default_factory=SipConfig)
    """Signalling."""
    auth: AuthConfig = field(default_factory=AuthConfig)
    """Who must authenticate."""
    extensions: dict[str, ExtensionConfig] = field(default_factory=dict)
    """Extensions by number."""
    trunks: dict[str, TrunkConfig] = field(default_factory=dict)
    """Trunks by name."""
    dialplan: list[DialplanRule] = field(default_factory=list)
    """Rules tried in order; the first match routes the call."""
    queues: dict[str, QueueConfig] = field(default_factory=dict)
    """Queues by name."""
    admin: AdminConfig = field(default_factory=AdminConfig)
    """Admin HTTP API."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Logs."""
    descriptors: DescriptorsConfig = field(default_factory=DescriptorsConfig)
    """The process-wide descriptor reserve (README, "Limits")."""
    media: dict[str, Any] = field(default_factory=dict)
    """Media anchoring and SRTP (validated by vaultpbx.media)."""
    recording: dict[str, Any] = field(default_factory=dict)
    """Recording, keys and retention (validated by vaultpbx.recording)."""
    routing: dict[str, Any] = field(default_factory=dict)
    """Skills-based routing (validated by vaultpbx.routing)."""
    security: dict[str, Any] = field(default_factory=dict)
    """Masking, audit, users and abuse defence (validated by vaultpbx.security)."""
    cdr: CdrConfig = field(default_factory=CdrConfig)
    """Call records and queue events (docs/cdr.md)."""
    sounds: str | None = None
    """Directory of the operator's recorded prompts: `<name>.wav` there replaces the built-in
    prompt of that name (sounds/prompts/, docs/prompts.md); each file 8 kHz mono 16-bit WAV."""

    def validate(self) -> None:
        for index, rule in enumerate(self.dialplan):
            if rule.trunk is not None and rule.trunk not in self.trunks:
                raise ValueError(f"dialplan[{index}] names unknown trunk {rule.trunk!r}")
            routed = (self.routing.get("queues") or {}) if isinstance(self.routing, dict) else {}
            if rule.queue is not None and rule.queue not in self.queues and (
                    rule.queue not in routed):
                raise ValueError(f"dialplan[{index}] names unknown queue {rule.queue!r}")
        for name, queue in self.queues.items():
            for member in queue.members:
                if member not in self.extensions:
                    raise ValueError(f"queue {name!r} has unknown member {member!r}")


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: Config
    path: Path
    lines: LineMap


def check_sections(loaded: LoadedConfig) -> None:
    """Validate the sections owned by other packages, naming the YAML line of the error."""
    from ..media.config import MediaConfig
    from ..security.config import SecurityConfig

    def media_section(raw: dict[str, Any]) -> object:
        raw = dict(raw)
        anchor = raw.pop("anchor", True)
        if not isinstance(anchor, bool):
            raise ValueError("media.anchor: must be true or false")
        return MediaConfig.from_dict(raw)

    from ..recording.config import RecordingConfig

    checks: list[tuple[str, Any]] = [("security", SecurityConfig.from_dict),
                                     ("media", media_section),
                                     ("recording", RecordingConfig.from_dict)]
    if loaded.config.routing:
        from ..routing.config import RouterConfig

        checks.append(("routing", RouterConfig.from_dict))
    from ..security.cli import audit_paths

    checks.append(("security", lambda raw: audit_paths(loaded.config.data_dir, raw)))
    for name, build_section in checks:
        try:
            build_section(getattr(loaded.config, name))
        except (ValueError, TypeError) as exc:
            message = str(exc)
            path = message.split(":", 1)[0] if message.startswith(name) else name
            raise ConfigError(path, loaded.lines.line_of(path),
                              message.split(":", 1)[-1].strip(), str(loaded.path)) from exc
    check_music_files(loaded)
    check_prompts(loaded)


def prompt_library(config: Config) -> PromptLibrary:
    """The prompts the engine plays: built-in, with the `sounds:` directory's replacements."""
    from ..media.prompts import PromptLibrary

    return PromptLibrary.load(config.sounds)


def check_prompts(loaded: LoadedConfig) -> None:
    """Every file in `sounds:` is a playable WAV, and every prompt a queue's `announce:` names
    exists, so a bad recording is a load (or SIGHUP) error naming its path and line."""
    from ..media.prompts import PromptError
    from ..routing.announce import prompts_needed

    try:
        library = prompt_library(loaded.config)
    except PromptError as exc:
        raise ConfigError("sounds", loaded.lines.line_of("sounds"), str(exc),
                          str(loaded.path)) from exc
    routed = loaded.config.routing.get("queues") if isinstance(loaded.config.routing,
                                                                dict) else None
    if not routed:
        return
    from ..routing.config import RouterConfig

    router = RouterConfig.from_dict(loaded.config.routing)  # checked above: builds
    for name, queue in router.queues.items():
        path = f"routing.queues.{name}.announce"
        try:
            library.require(prompts_needed(queue.announce))
        except PromptError as exc:
            key = f"{path}.greeting" if queue.announce.greeting else path
            raise ConfigError(key, loaded.lines.line_of(key), str(exc),
                              str(loaded.path)) from exc


def music_on_hold_settings(config: Config) -> dict[str, str]:
    """YAML path → configured music file, for every `music_on_hold` set (empty ones too)."""
    out: dict[str, str] = {}
    media = config.media if isinstance(config.media, dict) else {}
    if media.get("music_on_hold"):
        out["media.music_on_hold"] = str(media["music_on_hold"])
    for name, queue in config.queues.items():
        if queue.music_on_hold is not None:
            out[f"queues.{name}.music_on_hold"] = queue.music_on_hold
    routed = config.routing.get("queues") if isinstance(config.routing, dict) else None
    for name, raw in (routed or {}).items():
        if isinstance(raw, dict) and isinstance(raw.get("music_on_hold"), str):
            out[f"routing.queues.{name}.music_on_hold"] = raw["music_on_hold"]
    return out


def music_on_hold_by_queue(config: Config) -> dict[str, str]:
    """Queue name → the music file its waiting callers hear (queues without music left out)."""
    settings = music_on_hold_settings(config)
    default = settings.get("media.music_on_hold", "")
    names = list(config.queues)
    routed = config.routing.get("queues") if isinstance(config.routing, dict) else None
    names += [name for name in (routed or {}) if name not in config.queues]
    out: dict[str, str] = {}
    for name in names:
        own = settings.get(f"queues.{name}.music_on_hold",
                           settings.get(f"routing.queues.{name}.music_on_hold"))
        chosen = default if own is None else own
        if chosen:
            out[name] = chosen
    return out


def check_music_files(loaded: LoadedConfig) -> None:
    """Every configured music file exists and is 8 kHz mono 16-bit PCM WAV, so a bad one is a
    load (or SIGHUP) error naming its YAML path, not a silent queue hours later."""
    from ..media.player import MusicFileError, read_music_file

    for path, file in music_on_hold_settings(loaded.config).items():
        if not file:
            continue
        try:
            read_music_file(file)
        except MusicFileError as exc:
            raise ConfigError(path, loaded.lines.line_of(path), str(exc),
                              str(loaded.path)) from exc


def load_config(path: str | Path) -> LoadedConfig:
    path = Path(path)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)  # never more: the size bound holds for pipes
    except OSError as exc:
        raise ConfigError("", None, f"cannot read {path}: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError("", None, f"the file is larger than {MAX_CONFIG_BYTES} bytes",
                          str(path))
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError("", None, f"not UTF-8 text (byte {exc.start})", str(path)) from exc
    loaded = parse_config(text, str(path), path)
    check_sections(loaded)
    return loaded


def parse_config(text: str, source: str = "<config>", path: Path | None = None) -> LoadedConfig:
    data, lines = load_yaml(text, source)
    config = build(Config, data, lines, "", source)
    return LoadedConfig(config, path or Path(source), lines)


__all__ = ["Config", "ConfigError", "LoadedConfig", "load_config", "music_on_hold_by_queue",
           "parse_config"]
