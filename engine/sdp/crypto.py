"""The SDES `a=crypto` attribute (RFC 4568 §9.1). No I/O.

    a=crypto:<tag> <crypto-suite> <key-params> [<session-param> ...]
    key-params = "inline:" base64(key||salt) ["|" lifetime] ["|" MKI ":" MKI-length]
                 *(";" key-params)

Invariants: key material is kept as bytes exactly as decoded; its length is not checked here
(that depends on the suite, and unknown suites must still parse). Lifetimes are integers
(`2^31` is read as 2**31 and written back in that form). Formatting what was parsed gives an
equivalent attribute value. Numbers are bounded before they are computed: a lifetime is at most
2^64 (RFC 4568 §6.1 allows 2^48 for SRTP), so "2^999999999" is a parse error, not a
gigabyte-sized integer; every other number is a short ASCII digit string.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from .errors import SdpParseError

__all__ = ["SDES_SUITES", "SUPPORTED_SUITES", "CryptoAttribute", "CryptoKey", "SdesSuite"]


_MAX_LIFETIME_POWER = 64


def _short_number(text: str, max_digits: int) -> bool:
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


@dataclass(frozen=True, slots=True, kw_only=True)
class SdesSuite:
    name: str
    key_length: int  # master key octets
    salt_length: int  # master salt octets

    @property
    def key_material_length(self) -> int:
        return self.key_length + self.salt_length


# The suites the SRTP layer (vaultpbx.media.srtp, pylibsrtp) implements, best first, with their
# key||salt lengths (RFC 4568 §6.2, RFC 7714 §12). AES_256_CM_HMAC_SHA1_80 (RFC 6188) is absent on
# purpose: pylibsrtp cannot run it, so it must never be chosen. The SDP layer keeps its own copy
# so that it needs neither pylibsrtp nor the media package; a test checks that the two agree.
SDES_SUITES: dict[str, SdesSuite] = {
    suite.name: suite
    for suite in (
        SdesSuite(name="AEAD_AES_256_GCM", key_length=32, salt_length=12),
        SdesSuite(name="AEAD_AES_128_GCM", key_length=16, salt_length=12),
        SdesSuite(name="AES_CM_128_HMAC_SHA1_80", key_length=16, salt_length=14),
        SdesSuite(name="AES_CM_128_HMAC_SHA1_32", key_length=16, salt_length=14),
    )
}
SUPPORTED_SUITES: tuple[str, ...] = tuple(SDES_SUITES)


@dataclass(frozen=True, slots=True, kw_only=True)
class CryptoKey:
    key_material: bytes  # master key || master salt
    lifetime: int | None = None  # packets under this key
    mki: int | None = None  # master key identifier value
    mki_length: int | None = None  # octets of MKI in each packet

    def to_value(self) -> str:
        value = "inline:" + base64.b64encode(self.key_material).decode("ascii")
        if self.lifetime is not None:
            power = self.lifetime.bit_length() - 1
            is_power = self.lifetime > 0 and self.lifetime == 1 << power
            value += f"|2^{power}" if is_power else f"|{self.lifetime}"
        if self.mki is not None:
            value += f"|{self.mki}:{self.mki_length}"
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class CryptoAttribute:
    tag: int  # 1..999999999, unique among the m= line's crypto attributes
    suite: str
    keys: tuple[CryptoKey, ...]
    session_params: tuple[str, ...] = ()

    @property
    def key_material(self) -> bytes:
        return self.keys[0].key_material

    def to_value(self) -> str:
        parts = [str(self.tag), self.suite, ";".join(key.to_value() for key in self.keys)]
        return " ".join(parts + list(self.session_params))

    @classmethod
    def parse(cls, value: str, *, line_number: int | None = None) -> CryptoAttribute:
        def fail(why: str) -> SdpParseError:
            return SdpParseError(f"a=crypto: {why}", line_number=line_number)

        fields = value.split()
        if len(fields) < 3:
            raise fail("expected '<tag> <crypto-suite> <key-params>'")
        tag_text, suite, key_params, *session_params = fields
        if not _short_number(tag_text, 9):
            raise fail(f"tag {tag_text!r} is not 1 to 9 digits")
        keys = []
        for key_param in key_params.split(";"):
            method, _, info = key_param.partition(":")
            if method != "inline" or not info:
                raise fail(f"key method must be 'inline:', got {key_param!r}")
            key_salt, *extras = info.split("|")
            try:
                material = base64.b64decode(key_salt, validate=True)
            except ValueError:  # binascii.Error, or a non-ASCII character (found by fuzzing)
                raise fail("inline key is not valid base64") from None
            lifetime = mki = mki_length = None
            for extra in extras:
                if ":" in extra:
                    mki_text, _, length_text = extra.partition(":")
                    if not (_short_number(mki_text, 20) and _short_number(length_text, 3)):
                        raise fail(f"bad MKI {extra!r}")
                    mki, mki_length = int(mki_text), int(length_text)
                elif extra.startswith("2^") and _short_number(extra[2:], 2):
                    if int(extra[2:]) > _MAX_LIFETIME_POWER:
                        raise fail(f"lifetime above 2^{_MAX_LIFETIME_POWER}: {extra!r}")
                    lifetime = 2 ** int(extra[2:])
                elif _short_number(extra, 20):
                    lifetime = int(extra)
                else:
                    raise fail(f"bad lifetime {extra!r}")
            keys.append(
                CryptoKey(key_material=material, lifetime=lifetime, mki=mki, mki_length=mki_length)
            )
        return cls(
            tag=int(tag_text), suite=suite, keys=tuple(keys), session_params=tuple(session_params)
        )
