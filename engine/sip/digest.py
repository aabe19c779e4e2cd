"""SIP digest authentication, both sides (RFC 3261 §22, RFC 2617 qop=auth, RFC 8760 SHA-256).

Invariants:
- No I/O. Time is the `now` argument; the nonce key and any per-challenge entropy are bytes the
  caller injects. Nothing here reads a clock, a socket or a random source.
- Nonces are stateless and unforgeable: base64url(issued | entropy | HMAC-SHA256(secret, issued |
  entropy | realm)), canonical encoding only. A nonce verifies only under the secret and realm
  that minted it, and is stale once older than `nonce_ttl` (or if it claims to be from the future).
- `verify` never raises on what the peer sent; every outcome is a `DigestResult`, and the caller
  acts on `result.answer`, never on `result.reason` (which is for logs and metrics).
- An unknown user costs the same hashing as a known one (the response is computed against a dummy
  password) and gets the same `answer` as a wrong password.
- `stale` (RFC 2617 §3.2.1) is only reported when the digest itself was right, i.e. the client
  proved it knows the password and may retry with a fresh nonce without asking its user.
- A nonce's count only moves when a request carrying it verified, so a forged request cannot burn
  a legitimate client's counts. The count table is bounded; evicting an entry raises a watermark
  below which untracked nonces are stale, so eviction never reopens a replay window.
- Header values are `str` as decoded by the SIP parser (UTF-8 with surrogateescape); hashing
  re-encodes the same way, so the digest covers the bytes that were on the wire.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import math
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "DigestAnswer",
    "DigestChallengeError",
    "DigestReason",
    "DigestResult",
    "DigestServer",
    "build_authorization",
    "parse_digest_params",
    "select_challenge",
]


# --- hashing (RFC 2617 §3.2.2.1, RFC 8760 §2.1) ---------------------------------------------


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Keyed by canonical name; `_ALGORITHM_NAMES` maps the case-insensitive token to it.
_HASHES: dict[str, Callable[[bytes], str]] = {"MD5": _md5_hex, "SHA-256": _sha256_hex}
_ALGORITHM_NAMES = {name.upper(): name for name in _HASHES}


def _canonical_algorithm(token: str) -> str | None:
    return _ALGORITHM_NAMES.get(token.upper())


def _wire(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _digest_response(
    algorithm: str,
    *,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None,
    nc: str,
    cnonce: str,
) -> str:
    """request-digest of RFC 2617 §3.2.2.1 (qop=auth) or RFC 2069 (qop absent)."""
    digest = _HASHES[algorithm]
    ha1 = digest(_wire(f"{username}:{realm}:{password}"))
    ha2 = digest(_wire(f"{method}:{uri}"))
    if qop is None:
        return digest(_wire(f"{ha1}:{nonce}:{ha2}"))
    return digest(_wire(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"))


# --- the auth-param list (RFC 3261 §25.1: challenge / credentials) --------------------------

_TOKEN = r"[A-Za-z0-9.!%*_+`'~-]+"
# qdtext: LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII; quoted-pair: "\" %x00-09 / %x0B-0C /
# %x0E-7F. Folding has been replaced by SP before this runs.
_QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"'
_SCHEME = re.compile(rf"[ \t]*({_TOKEN})[ \t]+")
_PARAM = re.compile(rf"[ \t]*({_TOKEN})[ \t]*=[ \t]*({_TOKEN}|{_QUOTED})[ \t]*")
# RFC 3261 §7.3.1: folding (blanks, a line break, blanks) reads as one SP. The expression starts
# at the line break, not at the blanks before it: `[ \t]*\r?\n[ \t]+` made every blank of a long
# run a new start that scanned the rest of the run ("Digest " + 60,000 blanks: ~24 s, quadratic).
# `_unfold` strips the blanks before each break instead, so every character is read once or twice.
_FOLD = re.compile(r"\r?\n[ \t]+")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def _unfold(text: str) -> str:
    """Replace each fold, with the blanks before it, by one SP (what `re.sub` of
    `[ \t]*\r?\n[ \t]+` did, in linear time)."""
    pieces = _FOLD.split(text)
    if len(pieces) == 1:
        return text
    last = pieces.pop()
    return " ".join([piece.rstrip(" \t") for piece in pieces] + [last])


def parse_digest_params(header_value: str) -> dict[str, str] | None:
    """Read `Digest name=value, ...` into {lower-case name: unquoted value}.

    Returns None, never raises, for anything that is not a well-formed Digest challenge or
    credentials value: another scheme, a missing or repeated parameter list element, a
    duplicate name (RFC 3261 §7.3.1), an unterminated quote, stray characters.
    """
    text = _unfold(header_value) if "\n" in header_value else header_value
    try:
        _wire(text)
    except UnicodeEncodeError:  # a lone surrogate no wire could have carried
        return None
    scheme = _SCHEME.match(text)
    if scheme is None or scheme.group(1).lower() != "digest":
        return None
    params: dict[str, str] = {}
    pos = scheme.end()
    while True:
        param = _PARAM.match(text, pos)
        if param is None:
            return None
        name, raw = param.group(1).lower(), param.group(2)
        if name in params:
            return None
        if raw.startswith('"'):
            params[name] = _QUOTED_PAIR.sub(r"\1", raw[1:-1])
        else:
            params[name] = raw
        pos = param.end()
        if pos == len(text):
            return params
        if text[pos] != ",":
            return None
        pos += 1


def _quote(value: str) -> str:
    """quoted-string of RFC 3261 §25.1; control characters cannot be carried at all."""
    if any(ch < " " and ch != "\t" or ch == "\x7f" for ch in value):
        raise ValueError("control character in a digest parameter")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- results -----------------------------------------------------------------------------


class DigestReason(enum.Enum):
    """Why `verify` decided as it did. For logs and metrics; callers act on `DigestAnswer`."""

    OK = "ok"
    MALFORMED = "malformed"  # unreadable, missing fields, qop/nc/cnonce inconsistent, auth-int
    WRONG_REALM = "wrong-realm"
    BAD_NONCE = "bad-nonce"  # not minted by this server under this realm (forged, mangled)
    STALE = "stale"  # right digest, nonce expired or no longer tracked
    REPLAY = "replay"  # right digest, nonce-count did not increase
    BAD_RESPONSE = "bad-response"  # known user, wrong digest
    UNKNOWN_USER = "unknown-user"  # digest checked against a dummy password; same answer
    UNSUPPORTED_ALGORITHM = "unsupported-algorithm"
    URI_MISMATCH = "uri-mismatch"  # digest-uri is not the Request-URI (RFC 2617 §3.2.2.5)


class DigestAnswer(enum.Enum):
    """What the caller sends back. 401 for a registrar or UAS, 407 for a proxy (RFC 3261 §22)."""

    ACCEPT = "accept"
    CHALLENGE = "challenge"  # 401/407 with challenge_headers(now)
    CHALLENGE_STALE = "challenge-stale"  # 401/407 with challenge_headers(now, stale=True)
    BAD_REQUEST = "bad-request"  # 400: the credentials cannot be read


_ANSWERS: dict[DigestReason, DigestAnswer] = {
    DigestReason.OK: DigestAnswer.ACCEPT,
    DigestReason.MALFORMED: DigestAnswer.BAD_REQUEST,
    DigestReason.WRONG_REALM: DigestAnswer.CHALLENGE,
    DigestReason.BAD_NONCE: DigestAnswer.CHALLENGE,
    DigestReason.STALE: DigestAnswer.CHALLENGE_STALE,
    # The digest was right, so the sender knows the password: most likely a reordered request
    # of a legitimate client, which may then retry silently; a replaying attacker learns nothing.
    DigestReason.REPLAY: DigestAnswer.CHALLENGE_STALE,
    DigestReason.BAD_RESPONSE: DigestAnswer.CHALLENGE,
    DigestReason.UNKNOWN_USER: DigestAnswer.CHALLENGE,
    DigestReason.UNSUPPORTED_ALGORITHM: DigestAnswer.CHALLENGE,
    DigestReason.URI_MISMATCH: DigestAnswer.CHALLENGE,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DigestResult:
    ok: bool
    username: str  # as claimed by the request, for logs; "" when unreadable
    reason: DigestReason

    @property
    def answer(self) -> DigestAnswer:
        return _ANSWERS[self.reason]


def _reject(reason: DigestReason, username: str = "") -> DigestResult:
    return DigestResult(ok=False, username=username, reason=reason)


# --- server ------------------------------------------------------------------------------

_NONCE_TIME = struct.Struct(">d")  # issue time, exactly as the float `now` the caller gave
_NONCE_MAC_LEN = 32
_MAX_ENTROPY = 32
_NONCE_LABEL = b"vaultpbx sip digest nonce v1\x00"
_B64URL = re.compile(r"[A-Za-z0-9_-]{54,96}")  # 40..72 raw bytes, unpadded
_NC = re.compile(r"[0-9A-Fa-f]{8}")  # nc-value = 8LHEX (RFC 2617 §3.2.2)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes | None:
    if _B64URL.fullmatch(text) is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Only the canonical spelling: trailing bits that decode to the same bytes are refused.
    return raw if _b64url(raw) == text else None


class DigestServer:
    """Challenges and verifies digest credentials for one realm.

    `secret` keys the nonces (at least 16 bytes; share it between processes that must accept
    each other's nonces). `allow_rfc2069` accepts credentials without qop; such a nonce is
    single-use, since without a nonce-count a second use cannot be told from a replay.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        nonce_ttl: float = 300.0,
        algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
        max_tracked_nonces: int = 100_000,
        *,
        allow_rfc2069: bool = False,
    ) -> None:
        if not realm:
            raise ValueError("empty realm")
        _quote(realm)
        if len(secret) < 16:
            raise ValueError("nonce secret shorter than 16 bytes")
        if not (math.isfinite(nonce_ttl) and nonce_ttl > 0):
            raise ValueError(f"nonce_ttl must be positive, not {nonce_ttl!r}")
        if max_tracked_nonces < 1:
            raise ValueError("max_tracked_nonces must be at least 1")
        canonical: list[str] = []
        for token in algorithms:
            name = _canonical_algorithm(token)
            if name is None:
                raise ValueError(f"unsupported digest algorithm {token!r}")
            if name not in canonical:
                canonical.append(name)
        if not canonical:
            raise ValueError("no digest algorithm")
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.algorithms = tuple(canonical)  # offered in this order (RFC 8760 §2.3)
        self.max_tracked_nonces = max_tracked_nonces
        self.allow_rfc2069 = allow_rfc2069
        self._secret = secret
        self._realm_bytes = _wire(realm)
        self._dummy_password = hmac.digest(secret, b"vaultpbx unknown user", "sha256").hex()
        # nonce -> (issued, highest nc seen); insertion order is order of first use.
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._evicted_up_to = -math.inf  # latest issue time of any nonce dropped from _counts

    # Nonces ------------------------------------------------------------------------------

    def _nonce_mac(self, stamp: bytes, entropy: bytes) -> bytes:
        message = b"".join(
            (_NONCE_LABEL, stamp, bytes((len(entropy),)), entropy, self._realm_bytes)
        )
        return hmac.digest(self._secret, message, "sha256")

    def _mint_nonce(self, now: float, entropy: bytes) -> str:
        stamp = _NONCE_TIME.pack(now)
        return _b64url(stamp + entropy + self._nonce_mac(stamp, entropy))

    def _nonce_issued(self, nonce: str) -> float | None:
        """Issue time of a nonce this server minted for this realm, else None."""
        raw = _unb64url(nonce)
        if raw is None or len(raw) < _NONCE_TIME.size + _NONCE_MAC_LEN:
            return None
        stamp = raw[: _NONCE_TIME.size]
        entropy, mac = raw[_NONCE_TIME.size : -_NONCE_MAC_LEN], raw[-_NONCE_MAC_LEN:]
        if len(entropy) > _MAX_ENTROPY or not hmac.compare_digest(
            mac, self._nonce_mac(stamp, entropy)
        ):
            return None
        issued: float = _NONCE_TIME.unpack(stamp)[0]
        return issued

    def _is_fresh(self, issued: float, now: float) -> bool:
        return 0.0 <= now - issued <= self.nonce_ttl  # False for NaN too

    # Challenge ---------------------------------------------------------------------------

    def challenge_headers(
        self, now: float, stale: bool = False, opaque: str | None = None, *, entropy: bytes = b""
    ) -> list[str]:
        """WWW-Authenticate / Proxy-Authenticate values, one per algorithm, preferred first.

        All values share one nonce. Pass `entropy` (up to 32 random bytes) so that clients
        challenged at the same `now` never share a nonce, and with it a nonce-count. `opaque`
        is echoed by clients but not checked by `verify`.
        """
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, not {now!r}")
        if len(entropy) > _MAX_ENTROPY:
            raise ValueError(f"entropy longer than {_MAX_ENTROPY} bytes")
        params = f'realm={_quote(self.realm)}, nonce="{self._mint_nonce(now, entropy)}"'
        if opaque is not None:
            params += f", opaque={_quote(opaque)}"
        tail = ', qop="auth"' + (", stale=true" if stale else "")
        return [f"Digest {params}, algorithm={name}{tail}" for name in self.algorithms]

    # Verify ------------------------------------------------------------------------------

    def verify(
        self,
        method: str,
        header_value: str,
        credentials: Callable[[str], str | None],
        now: float,
        request_uri: str | None = None,
    ) -> DigestResult:
        """Check one Authorization / Proxy-Authorization value.

        `credentials(username)` returns the plaintext password or None for an unknown user; it
        is called exactly once for every request that gets as far as the digest comparison,
        whether or not the user exists. `request_uri`, when given, must equal the digest-uri
        character for character.
        """
        params = parse_digest_params(header_value)
        if params is None:
            return _reject(DigestReason.MALFORMED)
        username = params.get("username")
        realm = params.get("realm")
        nonce = params.get("nonce")
        uri = params.get("uri")
        response = params.get("response")
        if username is None or realm is None or nonce is None or uri is None or response is None:
            return _reject(DigestReason.MALFORMED, username or "")

        qop = params.get("qop")
        nc_text = params.get("nc")
        cnonce = params.get("cnonce")
        if qop is None:
            # RFC 2617 §3.2.2: nc and cnonce MUST NOT be sent without qop.
            if not self.allow_rfc2069 or nc_text is not None or cnonce is not None:
                return _reject(DigestReason.MALFORMED, username)
            nc_text, cnonce, nc = "", "", 1
        else:
            if qop.lower() != "auth" or nc_text is None or cnonce is None:
                return _reject(DigestReason.MALFORMED, username)  # auth-int was never offered
            if _NC.fullmatch(nc_text) is None:
                return _reject(DigestReason.MALFORMED, username)
            nc = int(nc_text, 16)
            if nc == 0:  # counting starts at 1; 0 would let a first use tie "nothing seen"
                return _reject(DigestReason.MALFORMED, username)

        if realm != self.realm:
            return _reject(DigestReason.WRONG_REALM, username)
        algorithm = _canonical_algorithm(params.get("algorithm", "MD5"))  # RFC 2617 default
        if algorithm is None or algorithm not in self.algorithms:
            return _reject(DigestReason.UNSUPPORTED_ALGORITHM, username)
        if request_uri is not None and uri != request_uri:
            return _reject(DigestReason.URI_MISMATCH, username)
        issued = self._nonce_issued(nonce)
        if issued is None:
            return _reject(DigestReason.BAD_NONCE, username)

        # From here on a known and an unknown user take the same path and the same hashing.
        password = credentials(username)
        expected = _digest_response(
            algorithm,
            username=username,
            realm=self.realm,
            password=self._dummy_password if password is None else password,
            method=method,
            uri=uri,
            nonce=nonce,
            qop=qop,
            nc=nc_text,
            cnonce=cnonce,
        )
        if not hmac.compare_digest(_wire(response.lower()), _wire(expected)):
            reason = DigestReason.UNKNOWN_USER if password is None else DigestReason.BAD_RESPONSE
            return _reject(reason, username)

        tracked = self._counts.get(nonce)
        if not self._is_fresh(issued, now) or (tracked is None and issued <= self._evicted_up_to):
            return _reject(DigestReason.STALE, username)
        if tracked is not None and nc <= tracked[1]:
            return _reject(DigestReason.REPLAY, username)
        self._record_count(nonce, issued, nc, now)
        return DigestResult(ok=True, username=username, reason=DigestReason.OK)

    def _record_count(self, nonce: str, issued: float, nc: int, now: float) -> None:
        counts = self._counts
        counts[nonce] = (issued, nc)  # an existing entry keeps its place
        while counts:
            oldest_issued = next(iter(counts.values()))[0]
            if len(counts) <= self.max_tracked_nonces and self._is_fresh(oldest_issued, now):
                break
            counts.popitem(last=False)
            self._evicted_up_to = max(self._evicted_up_to, oldest_issued)


# --- client (the B2BUA answering a trunk's challenge) ------------------------------------


class DigestChallengeError(ValueError):
    """A challenge `build_authorization` cannot answer: unreadable, or nothing it supports."""


def select_challenge(header_values: Iterable[str]) -> str | None:
    """The topmost Digest challenge whose algorithm and qop this client can answer.

    RFC 8760 §2.4: a UAC uses the topmost challenge it supports, so a server that lists
    SHA-256 before MD5 gets SHA-256.
    """
    for value in header_values:
        params = parse_digest_params(value)
        if params is None or "realm" not in params or "nonce" not in params:
            continue
        if _canonical_algorithm(params.get("algorithm", "MD5")) is None:
            continue
        qop = params.get("qop")
        if qop is not None and "auth" not in _qop_options(qop):
            continue
        return value
    return None


def _qop_options(qop: str) -> set[str]:
    return {option.strip().lower() for option in qop.split(",")}


def build_authorization(
    challenge_value: str,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str,
    nc: int,
) -> str:
    """Authorization / Proxy-Authorization value answering one challenge value.

    Uses qop=auth when offered, RFC 2069 style when the challenge has no qop. `uri` is the
    Request-URI of the request being authorized; `nc` counts requests sent with this nonce.
    Raises `DigestChallengeError` for challenges it cannot answer (auth-int only, -sess or
    unknown algorithms, garbage) and ValueError for an `nc` outside 1..2**32-1 or a control
    character in a value it has to quote.
    """
    params = parse_digest_params(challenge_value)
    if params is None:
        raise DigestChallengeError("unreadable Digest challenge")
    realm = params.get("realm")
    nonce = params.get("nonce")
    if realm is None or nonce is None:
        raise DigestChallengeError("Digest challenge without realm or nonce")
    algorithm = _canonical_algorithm(params.get("algorithm", "MD5"))
    if algorithm is None:
        raise DigestChallengeError(f"unsupported algorithm {params['algorithm']!r}")
    offered = params.get("qop")
    if offered is not None and "auth" not in _qop_options(offered):
        raise DigestChallengeError(f"no supported qop in {offered!r}")
    qop = None if offered is None else "auth"
    if not 0 < nc <= 0xFFFFFFFF:
        raise ValueError(f"nonce-count out of range: {nc}")
    nc_text = f"{nc:08x}"
    response = _digest_response(
        algorithm,
        username=username,
        realm=realm,
        password=password,
        method=method,
        uri=uri,
        nonce=nonce,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce,
    )
    fields = [
        f"username={_quote(username)}",
        f"realm={_quote(realm)}",
        f"nonce={_quote(nonce)}",
        f"uri={_quote(uri)}",
        f'response="{response}"',
        f"algorithm={algorithm}",
    ]
    if qop is not None:
        fields += [f"qop={qop}", f"nc={nc_text}", f"cnonce={_quote(cnonce)}"]
    opaque = params.get("opaque")
    if opaque is not None:
        fields.append(f"opaque={_quote(opaque)}")
    return "Digest " + ", ".join(fields)
