"""Offer/answer (RFC 3264) for an anchoring B2BUA: our address, our ports, our SRTP keys. No I/O.

The media controller uses three functions, one per leg event:

- `build_answer(offer, ...)`: a leg offered; answer it with what we accept, anchored on our
  address and ports, with a fresh SRTP key for every accepted secure stream.
- `create_offer(...)`: we offer to a leg (optionally shaped like another leg's offer, so codecs
  and hold state pass through), with fresh keys for every suite we are willing to use.
- `process_answer(offer, answer)`: the leg answered our offer; learn its address and keys.

Each returns the negotiated streams (`NegotiatedStream`), which say where to send, with which
keys to protect and unprotect, and which payload types flow: what the relay needs, no SDP.

Invariants:
- Only audio over RTP/AVP, RTP/AVPF, RTP/SAVP or RTP/SAVPF is accepted; other m= lines are
  rejected with port 0 (RFC 3264 §6), keeping their place.
- SRTP is SDES (RFC 4568), suites in our preference order, AEAD_AES_256_GCM first; only suites
  pylibsrtp implements are ever chosen (never AES_256_CM_HMAC_SHA1_80), and crypto lines with MKI,
  several keys or session parameters (KDR, UNENCRYPTED_SRTP...) are not acceptable to us.
- `srtp` policy: "required" → a stream is accepted only with an acceptable crypto line, and we
  offer RTP/SAVP; "optional" → SRTP when the peer offers an acceptable crypto line, plain RTP
  otherwise, and we offer RTP/AVP with crypto lines (best effort); "off" → plain RTP only,
  crypto lines are ignored in RTP/AVP offers, RTP/SAVP is rejected.
- If no stream can be accepted, `SdpNegotiationError` (488 Not Acceptable Here) says why.
- Keys come only from the injected `random_bytes`; time and I/O are not touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .crypto import SDES_SUITES, SUPPORTED_SUITES, CryptoAttribute, CryptoKey
from .errors import SdpNegotiationError
from .model import (
    Attribute,
    Connection,
    Direction,
    MediaDescription,
    Origin,
    RtpMap,
    SessionDescription,
)

__all__ = [
    "STATIC_PAYLOAD_TYPES",
    "Codec",
    "LocalMedia",
    "MediaPolicy",
    "Negotiation",
    "NegotiatedStream",
    "Offer",
    "SrtpKeys",
    "SrtpMode",
    "build_answer",
    "create_offer",
    "generate_key_material",
    "process_answer",
]

SrtpMode = Literal["required", "optional", "off"]
RandomBytes = Callable[[int], bytes]

# RFC 3551 §6 static audio payload types we may meet without an a=rtpmap.
STATIC_PAYLOAD_TYPES: dict[int, RtpMap] = {
    0: RtpMap(payload_type=0, encoding="PCMU", clock_rate=8000),
    8: RtpMap(payload_type=8, encoding="PCMA", clock_rate=8000),
    9: RtpMap(payload_type=9, encoding="G722", clock_rate=8000),
    18: RtpMap(payload_type=18, encoding="G729", clock_rate=8000),
}
_RTP_PROTOS = ("RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF")
_TELEPHONE_EVENT = "telephone-event"


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaPolicy:
    """What one endpoint (or trunk) may negotiate with us; typed from the YAML config."""

    srtp: SrtpMode = "optional"
    #: Encoding names we relay, best first (case-insensitive), all at 8000 Hz.
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    #: SDES suites we accept, best first; must be among SUPPORTED_SUITES.
    crypto_suites: tuple[str, ...] = SUPPORTED_SUITES
    #: Negotiate RFC 4733 telephone-event (DTMF) when the peer offers it.
    telephone_event: bool = True
    telephone_event_payload_type: int = 101  # used in our own offers
    #: Accept and offer RTP/RTCP multiplexing on one port (RFC 5761).
    rtcp_mux: bool = True
    #: a=ptime we state, or None to state none.
    ptime: int | None = None

    def __post_init__(self) -> None:
        unsupported = [s for s in self.crypto_suites if s not in SDES_SUITES]
        if unsupported:
            raise ValueError(f"crypto suites not supported by the SRTP layer: {unsupported}")
        if self.srtp == "required" and not self.crypto_suites:
            raise ValueError("srtp: required needs at least one crypto suite")


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalMedia:
    """Where we anchor a leg: our address and the RTP ports the port pool gave us."""

    address: str
    ports: tuple[int, ...]  # one per accepted audio stream, in m= line order
    session_id: str
    session_version: str
    username: str = "vaultpbx"


@dataclass(frozen=True, slots=True, kw_only=True)
class Codec:
    payload_type: int
    encoding: str
    clock_rate: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SrtpKeys:
    suite: str
    tag: int
    send_key: bytes  # ours: protect what we send to the peer
    receive_key: bytes  # the peer's: unprotect what it sends us


@dataclass(frozen=True, slots=True, kw_only=True)
class NegotiatedStream:
    index: int  # m= line
    accepted: bool
    local_port: int = 0
    remote_address: str = ""
    remote_port: int = 0
    remote_rtcp_address: str = ""
    remote_rtcp_port: int = 0
    rtcp_mux: bool = False
    codecs: tuple[Codec, ...] = ()  # agreed, best first; codecs[0] is what we send
    telephone_event_payload_type: int | None = None
    direction: Direction = Direction.INACTIVE  # ours: do we send, do we receive
    srtp: SrtpKeys | None = None
    rejection: str = ""  # why, when not accepted


@dataclass(frozen=True, slots=True, kw_only=True)
class Negotiation:
    sdp: SessionDescription  # our answer, to send
    streams: tuple[NegotiatedStream, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    sdp: SessionDescription  # our offer, to send
    #: Per m= line, the crypto lines we offered (with our keys), to match the answer against.
    crypto: tuple[tuple[CryptoAttribute, ...], ...]
    policy: MediaPolicy
    local_ports: tuple[int, ...] = field(default=())


# --- helpers ------------------------------------------------------------------------------


def generate_key_material(suite_name: str, random_bytes: RandomBytes) -> bytes:
    """Fresh master key || master salt for an SDES suite, from the injected random source."""
    length = SDES_SUITES[suite_name].key_material_length
    material = random_bytes(length)
    if len(material) != length:
        raise ValueError("random source returned the wrong number of bytes")
    return material


def _matching_codecs(media: MediaDescription, policy: MediaPolicy) -> list[Codec]:
    """Offered codecs we relay, in our order of preference."""
    offered = []
    rtpmaps = media.rtpmaps()  # once: per payload type it made formats x rtpmaps work
    for payload_type in media.payload_types:
        rtpmap = rtpmaps.get(payload_type) or STATIC_PAYLOAD_TYPES.get(payload_type)
        if rtpmap is not None and rtpmap.clock_rate == 8000:
            offered.append(rtpmap)
    wanted = [name.upper() for name in policy.codecs]
    chosen = [r for r in offered if r.encoding.upper() in wanted]
    chosen.sort(key=lambda r: wanted.index(r.encoding.upper()))
    return [
        Codec(payload_type=r.payload_type, encoding=r.encoding, clock_rate=r.clock_rate)
        for r in chosen
    ]


def _telephone_event(media: MediaDescription) -> RtpMap | None:
    rtpmaps = media.rtpmaps()
    for payload_type in media.payload_types:
        rtpmap = rtpmaps.get(payload_type)
        if rtpmap and rtpmap.encoding.lower() == _TELEPHONE_EVENT and rtpmap.clock_rate == 8000:
            return rtpmap
    return None


def _acceptable_crypto(crypto: CryptoAttribute, policy: MediaPolicy) -> bool:
    suite = SDES_SUITES.get(crypto.suite)
    return (
        crypto.suite in policy.crypto_suites
        and suite is not None
        and len(crypto.keys) == 1
        and crypto.keys[0].mki is None
        and not crypto.session_params
        and len(crypto.key_material) == suite.key_material_length
    )


def _choose_crypto(media: MediaDescription, policy: MediaPolicy) -> CryptoAttribute | None:
    acceptable = [c for c in media.cryptos() if _acceptable_crypto(c, policy)]
    if not acceptable:
        return None
    return min(acceptable, key=lambda c: policy.crypto_suites.index(c.suite))


def _remote_endpoint(offer: SessionDescription, index: int, mux: bool) -> tuple[str, int, str, int]:
    media = offer.media[index]
    connection = offer.connection_for(index)
    address = connection.address.split("/")[0] if connection else ""
    rtcp = media.rtcp
    if mux:
        return address, media.port, address, media.port
    if rtcp is None:
        return address, media.port, address, media.port + 1
    rtcp_address = rtcp.connection.address if rtcp.connection else address
    return address, media.port, rtcp_address, rtcp.port


def _media_attributes(
    codecs: Sequence[Codec],
    telephone_event: RtpMap | None,
    telephone_event_fmtp: str | None,
    source: MediaDescription | None,
    direction: Direction,
    rtcp_mux: bool,
    crypto: Sequence[CryptoAttribute],
    ptime: int | None,
) -> tuple[Attribute, ...]:
    attributes = []
    for codec in codecs:
        rtpmap = RtpMap(
            payload_type=codec.payload_type, encoding=codec.encoding, clock_rate=codec.clock_rate
        )
        attributes.append(Attribute(name="rtpmap", value=rtpmap.to_value()))
        fmtp = source.fmtp(codec.payload_type) if source is not None else None
        if fmtp is not None:
            attributes.append(Attribute(name="fmtp", value=f"{codec.payload_type} {fmtp}"))
    if telephone_event is not None:
        attributes.append(Attribute(name="rtpmap", value=telephone_event.to_value()))
        attributes.append(
            Attribute(
                name="fmtp",
                value=f"{telephone_event.payload_type} {telephone_event_fmtp or '0-16'}",
            )
        )
    if ptime is not None:
        attributes.append(Attribute(name="ptime", value=str(ptime)))
    attributes.extend(Attribute(name="crypto", value=c.to_value()) for c in crypto)
    if rtcp_mux:
        attributes.append(Attribute(name="rtcp-mux"))
    attributes.append(Attribute(name=direction.value))
    return tuple(attributes)


def _our_session(local: LocalMedia, media: Sequence[MediaDescription]) -> SessionDescription:
    connection = Connection.for_address(local.address)
    return SessionDescription(
        origin=Origin(
            username=local.username,
            session_id=local.session_id,
            session_version=local.session_version,
            addrtype=connection.addrtype,
            address=local.address,
        ),
        session_name="-",
        connection=connection,
        media=tuple(media),
    )


def _rejected(media: MediaDescription) -> MediaDescription:
    return MediaDescription(
        media=media.media, port=0, proto=media.proto, formats=media.formats[:1] or ("0",)
    )


def _offered_direction(offer: SessionDescription, index: int) -> Direction:
    direction = offer.direction_for(index)
    connection = offer.connection_for(index)
    if connection is not None and connection.is_hold_address:
        # RFC 3264 §8.4: c=0.0.0.0 is the old way to say "do not send to me".
        direction = Direction.of(sends=direction.sends, receives=False)
    return direction


# --- answering ----------------------------------------------------------------------------


def build_answer(
    offer: SessionDescription,
    *,
    policy: MediaPolicy,
    local: LocalMedia,
    random_bytes: RandomBytes,
) -> Negotiation:
    """Answer a received offer, anchoring every accepted audio stream on `local`."""
    answer_media: list[MediaDescription] = []
    streams: list[NegotiatedStream] = []
    ports = list(local.ports)
    for index in range(len(offer.media)):
        stream, described = _answer_stream(offer, index, policy, ports, random_bytes)
        answer_media.append(described)
        streams.append(stream)
    if not any(stream.accepted for stream in streams):
        reasons = "; ".join(f"m={s.index}: {s.rejection}" for s in streams) or "no m= lines"
        raise SdpNegotiationError(reasons)
    return Negotiation(sdp=_our_session(local, answer_media), streams=tuple(streams))


def _answer_stream(
    offer: SessionDescription,
    index: int,
    policy: MediaPolicy,
    ports: list[int],
    random_bytes: RandomBytes,
) -> tuple[NegotiatedStream, MediaDescription]:
    media = offer.media[index]

    def reject(why: str) -> tuple[NegotiatedStream, MediaDescription]:
        return NegotiatedStream(index=index, accepted=False, rejection=why), _rejected(media)

    if media.port == 0:
        return reject("stream disabled by the offerer (port 0)")
    if media.media != "audio" or media.proto not in _RTP_PROTOS:
        return reject(f"only RTP audio is relayed, not {media.media} over {media.proto}")
    codecs = _matching_codecs(media, policy)
    if not codecs:
        offered = " ".join(media.formats)
        return reject(
            f"no codec in common (offered {offered}; we relay {', '.join(policy.codecs)})"
        )

    secure_proto = "SAVP" in media.proto
    crypto = _choose_crypto(media, policy) if policy.srtp != "off" else None
    if crypto is None and (secure_proto or policy.srtp == "required"):
        offered_suites = ", ".join(c.suite for c in media.cryptos()) or "none"
        if policy.srtp == "off":
            return reject(f"{media.proto} offered but SRTP is off for this endpoint")
        return reject(
            f"SRTP required but no acceptable a=crypto (offered: {offered_suites}; "
            f"we accept: {', '.join(policy.crypto_suites)})"
        )
    if not ports:
        return reject("no media port left for this stream")
    local_port = ports.pop(0)

    srtp = None
    our_crypto: list[CryptoAttribute] = []
    if crypto is not None:
        key = generate_key_material(crypto.suite, random_bytes)
        our_crypto.append(
            CryptoAttribute(tag=crypto.tag, suite=crypto.suite, keys=(CryptoKey(key_material=key),))
        )
        srtp = SrtpKeys(
            suite=crypto.suite, tag=crypto.tag, send_key=key, receive_key=crypto.key_material
        )

    mux = policy.rtcp_mux and media.rtcp_mux
    telephone_event = _telephone_event(media) if policy.telephone_event else None
    direction = _offered_direction(offer, index).answer()
    address, port, rtcp_address, rtcp_port = _remote_endpoint(offer, index, mux)
    formats = [str(c.payload_type) for c in codecs]
    if telephone_event is not None:
        formats.append(str(telephone_event.payload_type))
    described = MediaDescription(
        media="audio",
        port=local_port,
        proto=media.proto,
        formats=tuple(formats),
        attributes=_media_attributes(
            codecs,
            telephone_event,
            media.fmtp(telephone_event.payload_type) if telephone_event else None,
            media,
            direction,
            mux,
            our_crypto,
            policy.ptime if policy.ptime is not None else media.ptime,
        ),
    )
    stream = NegotiatedStream(
        index=index,
        accepted=True,
        local_port=local_port,
        remote_address=address,
        remote_port=port,
        remote_rtcp_address=rtcp_address,
        remote_rtcp_port=rtcp_port,
        rtcp_mux=mux,
        codecs=tuple(codecs),
        telephone_event_payload_type=telephone_event.payload_type if telephone_event else None,
        direction=direction,
        srtp=srtp,
    )
    return stream, described


# --- offering -----------------------------------------------------------------------------


def create_offer(
    *,
    policy: MediaPolicy,
    local: LocalMedia,
    random_bytes: RandomBytes,
    like: SessionDescription | None = None,
) -> Offer:
    """Our offer to a leg. With `like` (the other leg's offer), keep its audio codecs that the
    policy allows, its direction (hold passes through) and its number of m= lines; otherwise
    offer one audio stream with the policy's codecs at their static payload types."""
    templates: list[MediaDescription | None] = list(like.media) if like is not None else [None]
    media_out: list[MediaDescription] = []
    crypto_out: list[tuple[CryptoAttribute, ...]] = []
    ports = list(local.ports)
    used_ports: list[int] = []
    for index, template in enumerate(templates):
        if template is not None and (
            template.port == 0 or template.media != "audio" or template.proto not in _RTP_PROTOS
        ):
            media_out.append(_rejected(template))
            crypto_out.append(())
            continue
        codecs = _offer_codecs(template, policy)
        if not codecs or not ports:
            why = "no codec allowed by policy" if not codecs else "no media port left"
            raise SdpNegotiationError(f"cannot offer m={index}: {why}")
        port = ports.pop(0)
        used_ports.append(port)
        crypto = (
            tuple(
                CryptoAttribute(
                    tag=tag,
                    suite=suite,
                    keys=(CryptoKey(key_material=generate_key_material(suite, random_bytes)),),
                )
                for tag, suite in enumerate(policy.crypto_suites, start=1)
            )
            if policy.srtp != "off"
            else ()
        )
        telephone_event = None
        telephone_event_fmtp = None
        if policy.telephone_event:
            if template is not None:
                telephone_event = _telephone_event(template)
                if telephone_event is not None:
                    telephone_event_fmtp = template.fmtp(telephone_event.payload_type)
            else:
                telephone_event = RtpMap(
                    payload_type=policy.telephone_event_payload_type,
                    encoding=_TELEPHONE_EVENT,
                    clock_rate=8000,
                )
        direction = _offered_direction(like, index) if like is not None else Direction.SENDRECV
        formats = [str(c.payload_type) for c in codecs]
        if telephone_event is not None:
            formats.append(str(telephone_event.payload_type))
        ptime = policy.ptime if policy.ptime is not None else (template.ptime if template else None)
        media_out.append(
            MediaDescription(
                media="audio",
                port=port,
                proto="RTP/SAVP" if policy.srtp == "required" else "RTP/AVP",
                formats=tuple(formats),
                attributes=_media_attributes(
                    codecs,
                    telephone_event,
                    telephone_event_fmtp,
                    template,
                    direction,
                    policy.rtcp_mux,
                    crypto,
                    ptime,
                ),
            )
        )
        crypto_out.append(crypto)
    return Offer(
        sdp=_our_session(local, media_out),
        crypto=tuple(crypto_out),
        policy=policy,
        local_ports=tuple(used_ports),
    )


def _offer_codecs(template: MediaDescription | None, policy: MediaPolicy) -> list[Codec]:
    if template is not None:
        return _matching_codecs(template, policy)
    static = {r.encoding.upper(): r for r in STATIC_PAYLOAD_TYPES.values()}
    return [
        Codec(
            payload_type=static[name.upper()].payload_type, encoding=name.upper(), clock_rate=8000
        )
        for name in policy.codecs
        if name.upper() in static
    ]


def process_answer(offer: Offer, answer: SessionDescription) -> tuple[NegotiatedStream, ...]:
    """Check a leg's answer against our offer and say what flows where, with which keys."""
    sent = offer.sdp.media
    if len(answer.media) != len(sent):
        raise SdpNegotiationError(
            f"answer has {len(answer.media)} m= lines, our offer had {len(sent)} (RFC 3264 §6)"
        )
    streams = []
    for index, (ours, theirs) in enumerate(zip(sent, answer.media, strict=True)):
        streams.append(_answered_stream(offer, index, ours, answer, theirs))
    if not any(stream.accepted for stream in streams):
        raise SdpNegotiationError("; ".join(f"m={s.index}: {s.rejection}" for s in streams))
    return tuple(streams)


def _answered_stream(
    offer: Offer,
    index: int,
    ours: MediaDescription,
    answer: SessionDescription,
    theirs: MediaDescription,
) -> NegotiatedStream:
    def reject(why: str) -> NegotiatedStream:
        return NegotiatedStream(index=index, accepted=False, rejection=why)

    if ours.port == 0 or theirs.port == 0:
        return reject("stream rejected" if ours.port else "stream not offered")
    if theirs.media != ours.media:
        return reject(f"answer changed media {ours.media} to {theirs.media}")
    offered_pts = set(ours.payload_types)
    codecs = [c for c in _matching_codecs(theirs, offer.policy) if c.payload_type in offered_pts]
    if not codecs:
        return reject("answer names no codec that we offered")

    srtp = None
    answered_crypto = theirs.cryptos()
    if answered_crypto:
        chosen = answered_crypto[0]
        offered = {c.tag: c for c in offer.crypto[index]}
        mine = offered.get(chosen.tag)
        if (
            mine is None
            or mine.suite != chosen.suite
            or not _acceptable_crypto(chosen, offer.policy)
        ):
            return reject(f"answer's a=crypto tag {chosen.tag} {chosen.suite} was not offered")
        srtp = SrtpKeys(
            suite=chosen.suite,
            tag=chosen.tag,
            send_key=mine.key_material,
            receive_key=chosen.key_material,
        )
    elif offer.policy.srtp == "required" or "SAVP" in theirs.proto:
        return reject("SRTP required but the answer has no a=crypto")

    telephone_event = _telephone_event(theirs) if offer.policy.telephone_event else None
    if telephone_event is not None and telephone_event.payload_type not in offered_pts:
        telephone_event = None
    mux = offer.policy.rtcp_mux and theirs.rtcp_mux
    address, port, rtcp_address, rtcp_port = _remote_endpoint(answer, index, mux)
    their_direction = _offered_direction(answer, index)
    ours_offered = ours.direction or Direction.SENDRECV
    direction = Direction.of(
        sends=ours_offered.sends and their_direction.receives,
        receives=ours_offered.receives and their_direction.sends,
    )
    return NegotiatedStream(
        index=index,
        accepted=True,
        local_port=ours.port,
        remote_address=address,
        remote_port=port,
        remote_rtcp_address=rtcp_address,
        remote_rtcp_port=rtcp_port,
        rtcp_mux=mux,
        codecs=tuple(codecs),
        telephone_event_payload_type=telephone_event.payload_type if telephone_event else None,
        direction=direction,
        srtp=srtp,
    )
