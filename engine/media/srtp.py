"""SRTP and SRTCP (RFC 3711, RFC 7714) for SDES-keyed streams, as a thin layer over pylibsrtp.

Invariants:
- All cryptography is libsrtp's (through pylibsrtp); this module only maps SDES suite names and
  inline key material (RFC 4568) onto libsrtp policies and keeps the packet loop exception-free.
- A session protects (sender) or unprotects (receiver) one direction of one RTP stream, for any
  SSRC, with RTCP on the same keys (rtcp-mux or not, the keys are the same, RFC 4568 §6.1).
- Per packet: `protect*`/`unprotect*` return the new packet, or None when libsrtp refuses it
  (forged or corrupted: authentication failure; replayed; malformed or too large). The refusal is
  counted on the session and its kind left in `last_failure`; nothing is raised, nothing is
  logged. Exceptions are reserved for setup errors (unknown suite, wrong key length).
- The relay's per-packet path uses `rtp_protector()` / `rtp_unprotector()`: callables that return
  the new packet or raise one of `SRTP_ERRORS` (the caller hands the exception to `count_refusal`,
  so counts and `last_failure` are the same whichever way a packet went). They call libsrtp's
  `srtp_protect`/`srtp_unprotect` through pylibsrtp's own cffi binding, in the session's own
  buffer, exactly as pylibsrtp's `Session.protect`/`unprotect` do, minus the per-call checks and
  allocations that cost ~1 µs per relayed packet (measured: bench/results/media.md). That binding
  is pylibsrtp's internals, so if they are not what we expect (another pylibsrtp version), the
  public `Session.protect`/`unprotect` are returned instead; tests check both give the same bytes
  and the same refusals.
- The sender keeps libsrtp's refusal to encrypt the same packet index twice (`allow_repeat_tx` off):
  a repeated index under AES-CM or GCM would reuse keystream, so a duplicate is dropped instead.
- Randomness for key generation is injected (`random_bytes`, shaped like `os.urandom`).
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable
from dataclasses import dataclass

import pylibsrtp
from pylibsrtp import Policy

__all__ = [
    "SRTP_ERRORS",
    "SRTP_SUITES",
    "SUPPORTED_SUITES",
    "SrtpFailure",
    "SrtpKeyError",
    "SrtpSession",
    "SrtpSuite",
    "decode_inline_key",
    "encode_inline_key",
    "generate_key_material",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class SrtpSuite:
    name: str  # SDES crypto-suite name (RFC 4568 §6.2, RFC 7714 §14.2)
    profile: int  # Policy.SRTP_PROFILE_*
    key_length: int  # master key octets
    salt_length: int  # master salt octets

    @property
    def key_material_length(self) -> int:
        return self.key_length + self.salt_length


# What pylibsrtp can do, best first. AES_256_CM_HMAC_SHA1_80 (RFC 6188) is deliberately absent:
# pylibsrtp has no profile for it, so it must never be negotiated.
SRTP_SUITES: dict[str, SrtpSuite] = {
    suite.name: suite
    for suite in (
        SrtpSuite(
            name="AEAD_AES_256_GCM",
            profile=Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
            key_length=32,
            salt_length=12,
        ),
        SrtpSuite(
            name="AEAD_AES_128_GCM",
            profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
            key_length=16,
            salt_length=12,
        ),
        SrtpSuite(
            name="AES_CM_128_HMAC_SHA1_80",
            profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
            key_length=16,
            salt_length=14,
        ),
        SrtpSuite(
            name="AES_CM_128_HMAC_SHA1_32",
            profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
            key_length=16,
            salt_length=14,
        ),
    )
}
SUPPORTED_SUITES: tuple[str, ...] = tuple(SRTP_SUITES)


class SrtpKeyError(ValueError):
    """An unknown suite or key material of the wrong shape (a setup error, never per packet)."""


class SrtpFailure(enum.Enum):
    AUTH = "authentication failure"  # forged, corrupted, or keyed differently
    REPLAY = "replay"  # seen before, or older than the replay window
    MALFORMED = "malformed"  # too short, too long, or otherwise refused by libsrtp


def _suite(name: str) -> SrtpSuite:
    try:
        return SRTP_SUITES[name]
    except KeyError:
        raise SrtpKeyError(f"unsupported SRTP crypto suite {name!r}") from None


def generate_key_material(suite_name: str, random_bytes: Callable[[int], bytes]) -> bytes:
    """Fresh master key || master salt for `suite_name`, from the injected random source."""
    suite = _suite(suite_name)
    material = random_bytes(suite.key_material_length)
    if len(material) != suite.key_material_length:
        raise SrtpKeyError("random source returned the wrong number of bytes")
    return material


def encode_inline_key(key_material: bytes) -> str:
    """key||salt → the base64 of an SDES `inline:` key parameter (RFC 4568 §6.1)."""
    return base64.b64encode(key_material).decode("ascii")


def decode_inline_key(suite_name: str, inline: str) -> bytes:
    """The base64 of an SDES `inline:` parameter → key||salt, checked against the suite."""
    suite = _suite(suite_name)
    try:
        material = base64.b64decode(inline.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SrtpKeyError(f"inline key for {suite.name} is not valid base64") from None
    if len(material) != suite.key_material_length:
        raise SrtpKeyError(
            f"inline key for {suite.name} must be {suite.key_material_length} octets "
            f"(key {suite.key_length} + salt {suite.salt_length}), got {len(material)}"
        )
    return material


#: What pylibsrtp raises for a packet it refuses (TypeError/ValueError: not bytes, too long).
SRTP_ERRORS: tuple[type[Exception], ...] = (pylibsrtp.Error, ValueError, TypeError)

_FAILURES_BY_MESSAGE = {
    "authentication failure": SrtpFailure.AUTH,
    "replay check failed (bad index)": SrtpFailure.REPLAY,
    "replay check failed (index too old)": SrtpFailure.REPLAY,
}


#: libsrtp's room for the auth tag and MKI after an RTP packet (pylibsrtp's SRTP_MAX_TRAILER_LEN)
_RTP_TRAILER_ROOM = 16 + 128
PacketTransform = Callable[[bytes], bytes]


def _libsrtp_call(
    session: pylibsrtp.Session, function_name: str, trailer_room: int
) -> PacketTransform | None:
    """libsrtp's `function_name` on `session`, in the session's buffer, or None if pylibsrtp's
    internals are not the ones this was written against (1.0: _binding, _srtp, _cdata, _buffer)."""
    try:
        from pylibsrtp import _binding

        function = getattr(_binding.lib, function_name)
        srtp = session._srtp[0]  # type: ignore[attr-defined]
        cdata = session._cdata  # type: ignore[attr-defined]
        buffer = session._buffer  # type: ignore[attr-defined]
        messages = pylibsrtp.ERRORS  # type: ignore[attr-defined]
        length = _binding.ffi.new("int *")
        limit = len(buffer) - trailer_room
    except (ImportError, AttributeError, TypeError):
        return None
    error = pylibsrtp.Error

    def call(packet: bytes) -> bytes:
        size = len(packet)
        if size > limit:
            raise ValueError("packet is too long")
        length[0] = size
        buffer[0:size] = packet
        status = function(srtp, cdata, length)
        if status:
            raise error(messages[status])
        return buffer[0 : length[0]]  # type: ignore[no-any-return]

    call.session = session  # type: ignore[attr-defined]  # libsrtp's context lives as long as we do
    return call


class SrtpSession:
    """One direction of one stream. Build with `sender(...)` or `receiver(...)`."""

    __slots__ = (
        "libsrtp",
        "suite",
        "auth_failures",
        "replay_failures",
        "malformed",
        "last_failure",
    )

    def __init__(self, suite_name: str, key_material: bytes, *, outbound: bool) -> None:
        suite = _suite(suite_name)
        if len(key_material) != suite.key_material_length:
            raise SrtpKeyError(
                f"{suite.name} needs {suite.key_material_length} octets of key material, "
                f"got {len(key_material)}"
            )
        any_ssrc = Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND
        policy = Policy(key=bytes(key_material), ssrc_type=any_ssrc, srtp_profile=suite.profile)
        self.libsrtp = pylibsrtp.Session(policy)
        self.suite = suite
        self.auth_failures = 0
        self.replay_failures = 0
        self.malformed = 0
        self.last_failure: SrtpFailure | None = None

    @classmethod
    def sender(cls, suite_name: str, key_material: bytes) -> SrtpSession:
        """Protects what we send, with the key we offered or answered."""
        return cls(suite_name, key_material, outbound=True)

    @classmethod
    def receiver(cls, suite_name: str, key_material: bytes) -> SrtpSession:
        """Unprotects what the peer sends, with the key the peer gave us."""
        return cls(suite_name, key_material, outbound=False)

    def rtp_protector(self) -> PacketTransform:
        """RTP packet → SRTP packet; raises one of SRTP_ERRORS (see the module docstring)."""
        direct = _libsrtp_call(self.libsrtp, "srtp_protect", _RTP_TRAILER_ROOM)
        return direct if direct is not None else self.libsrtp.protect

    def rtp_unprotector(self) -> PacketTransform:
        """SRTP packet → RTP packet; raises one of SRTP_ERRORS (see the module docstring)."""
        direct = _libsrtp_call(self.libsrtp, "srtp_unprotect", 0)
        return direct if direct is not None else self.libsrtp.unprotect

    @property
    def failures(self) -> int:
        return self.auth_failures + self.replay_failures + self.malformed

    def protect(self, packet: bytes) -> bytes | None:
        try:
            return self.libsrtp.protect(packet)
        except SRTP_ERRORS as error:
            self.count_refusal(error)
            return None

    def unprotect(self, packet: bytes) -> bytes | None:
        try:
            return self.libsrtp.unprotect(packet)
        except SRTP_ERRORS as error:
            self.count_refusal(error)
            return None

    def protect_rtcp(self, packet: bytes) -> bytes | None:
        try:
            return self.libsrtp.protect_rtcp(packet)
        except SRTP_ERRORS as error:
            self.count_refusal(error)
            return None

    def unprotect_rtcp(self, packet: bytes) -> bytes | None:
        try:
            return self.libsrtp.unprotect_rtcp(packet)
        except SRTP_ERRORS as error:
            self.count_refusal(error)
            return None

    def count_refusal(self, error: Exception) -> SrtpFailure:
        """Count a packet libsrtp refused with `error` (one of SRTP_ERRORS); returns its kind."""
        failure = (
            _FAILURES_BY_MESSAGE.get(str(error), SrtpFailure.MALFORMED)
            if isinstance(error, pylibsrtp.Error)
            else SrtpFailure.MALFORMED
        )
        if failure is SrtpFailure.AUTH:
            self.auth_failures += 1
        elif failure is SrtpFailure.REPLAY:
            self.replay_failures += 1
        else:
            self.malformed += 1
        self.last_failure = failure
        return failure
