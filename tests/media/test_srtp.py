"""SRTP/SRTCP through vaultpbx.media.srtp against known-answer vectors (tests/data/srtp).

What goes through our layer (pylibsrtp) byte-exact:
- libsrtp's srtp_validate packet pair (AES_CM_128_HMAC_SHA1_80, SSRC cafebabe), RTP and RTCP.
- RFC 7714 AES-GCM: its vectors are built from *session* keys, and libsrtp always derives session
  keys from a master key (RFC 3711 §4.3), so they cannot be fed to pylibsrtp as they are. Here the
  RFC 7714 packets are (1) recomputed from the RFC's session key with `cryptography`'s AES-GCM,
  which pins down the RFC 7714 §8-§10 construction (IV, AAD, trailer), then (2) that same
  construction, keyed through a test-only RFC 3711 KDF, must equal what our layer sends for the
  same RTP/RTCP packets under a master key. The KDF itself is checked on RFC 3711 B.2/B.3 and
  RFC 6188 §7 (AES-256) vectors, also test-only, with AES-CTR from `cryptography`.
"""

from __future__ import annotations

import base64
import os
import pathlib

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from vaultpbx.media.srtp import (
    SRTP_ERRORS,
    SRTP_SUITES,
    SUPPORTED_SUITES,
    SrtpFailure,
    SrtpKeyError,
    SrtpSession,
    _libsrtp_call,
    decode_inline_key,
    encode_inline_key,
    generate_key_material,
)

VECTORS_PATH = pathlib.Path(__file__).parent.parent / "data" / "srtp" / "srtp_vectors.txt"


def load_vectors() -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in VECTORS_PATH.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            name, _, value = line.partition("=")
            current[name.strip()] = value.strip()
    return sections


V = load_vectors()


def h(section: str, name: str) -> bytes:
    return bytes.fromhex(V[section][name])


# --- test-only RFC 3711 §4.3 key derivation (AES-CM PRF), for cross-checking ----------------


def aes_cm_keystream(key: bytes, iv: bytes, length: int) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return encryptor.update(bytes(length)) + encryptor.finalize()


def kdf(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    """RFC 3711 §4.3.1 with key_derivation_rate 0: x = (label || r=0) XOR master_salt, IV = x*2^16.

    A 96-bit AEAD master salt is used as the first 96 bits of the 112-bit salt (RFC 7714 §11).
    """
    salt = master_salt.ljust(14, b"\0")
    key_id = (label << 48).to_bytes(14, "big")
    x = bytes(a ^ b for a, b in zip(key_id, salt, strict=True))
    return aes_cm_keystream(master_key, x + b"\0\0", length)


def test_kdf_rfc3711_b3():
    s = "rfc3711_B3_key_derivation_aes128"
    mk, ms = h(s, "master_key"), h(s, "master_salt")
    assert kdf(mk, ms, 0, 16) == h(s, "label0_cipher_key")
    assert kdf(mk, ms, 2, 14) == h(s, "label2_cipher_salt")
    assert kdf(mk, ms, 1, 94) == h(s, "label1_auth_key_94")


def test_kdf_rfc6188_aes256():
    s = "rfc6188_7.2_key_derivation_aes256"
    mk, ms = h(s, "master_key"), h(s, "master_salt")
    assert kdf(mk, ms, 0, 32) == h(s, "label0_cipher_key")
    assert kdf(mk, ms, 2, 14) == h(s, "label2_cipher_salt")
    assert kdf(mk, ms, 1, 20) == h(s, "label1_auth_key_20")


@pytest.mark.parametrize(
    "section", ["rfc3711_B2_aes_cm_keystream", "rfc6188_7.1_aes256_cm_keystream"]
)
def test_aes_cm_keystream(section):
    key, iv = h(section, "session_key"), h(section, "session_salt_shifted_iv")
    if "keystream_first48" in V[section]:
        assert aes_cm_keystream(key, iv, 48) == h(section, "keystream_first48")
        return
    for name, value in V[section].items():
        if name.startswith("keystream_block_"):
            block = int(name.rsplit("_", 1)[1], 16)
            counter = ((int.from_bytes(iv, "big") + block) % 2**128).to_bytes(16, "big")
            assert aes_cm_keystream(key, counter, 16).hex() == value, name


# --- libsrtp srtp_validate, through our layer ---------------------------------------------

LIBSRTP = "libsrtp_srtp_validate_aes_cm_128_hmac_sha1_80"
LIBSRTP_KEY = h(LIBSRTP, "master_key") + h(LIBSRTP, "master_salt")


def test_libsrtp_validate_rtp_protect_and_unprotect():
    sender = SrtpSession.sender("AES_CM_128_HMAC_SHA1_80", LIBSRTP_KEY)
    assert sender.protect(h(LIBSRTP, "rtp_plain")) == h(LIBSRTP, "srtp_protected")
    receiver = SrtpSession.receiver("AES_CM_128_HMAC_SHA1_80", LIBSRTP_KEY)
    assert receiver.unprotect(h(LIBSRTP, "srtp_protected")) == h(LIBSRTP, "rtp_plain")
    assert receiver.failures == 0


def test_libsrtp_validate_rtcp_protect_and_unprotect():
    sender = SrtpSession.sender("AES_CM_128_HMAC_SHA1_80", LIBSRTP_KEY)
    assert sender.protect_rtcp(h(LIBSRTP, "rtcp_plain")) == h(LIBSRTP, "srtcp_protected")
    receiver = SrtpSession.receiver("AES_CM_128_HMAC_SHA1_80", LIBSRTP_KEY)
    assert receiver.unprotect_rtcp(h(LIBSRTP, "srtcp_protected")) == h(LIBSRTP, "rtcp_plain")


@pytest.mark.parametrize("bit", [0, 7, 79])  # first, last of the first octet, last tag bit
def test_flipped_tag_bit_is_counted_not_raised(bit):
    packet = bytearray(h(LIBSRTP, "srtp_protected"))
    packet[-10 + bit // 8] ^= 0x80 >> (bit % 8)
    receiver = SrtpSession.receiver("AES_CM_128_HMAC_SHA1_80", LIBSRTP_KEY)
    assert receiver.unprotect(bytes(packet)) is None
    assert (receiver.auth_failures, receiver.last_failure) == (1, SrtpFailure.AUTH)
    # The genuine packet still gets through afterwards.
    assert receiver.unprotect(h(LIBSRTP, "srtp_protected")) == h(LIBSRTP, "rtp_plain")


def test_flipped_srtcp_tag_bit_and_replay_and_garbage_are_counted():
    receiver = SrtpSession.receiver("AES_CM_128_HMAC_SHA1_80", LIBSRTP_KEY)
    forged = bytearray(h(LIBSRTP, "srtcp_protected"))
    forged[-1] ^= 1
    assert receiver.unprotect_rtcp(bytes(forged)) is None
    assert receiver.last_failure is SrtpFailure.AUTH
    assert receiver.unprotect(h(LIBSRTP, "srtp_protected")) is not None
    assert receiver.unprotect(h(LIBSRTP, "srtp_protected")) is None
    assert receiver.last_failure is SrtpFailure.REPLAY
    assert receiver.unprotect(b"\x80\x00") is None
    assert receiver.unprotect(bytes(2000)) is None
    assert (receiver.auth_failures, receiver.replay_failures, receiver.malformed) == (1, 1, 2)


def test_sender_refuses_to_reuse_a_packet_index():
    sender = SrtpSession.sender("AEAD_AES_256_GCM", bytes(range(44)))
    assert sender.protect(h(LIBSRTP, "rtp_plain")) is not None
    assert sender.protect(h(LIBSRTP, "rtp_plain")) is None
    assert sender.last_failure is SrtpFailure.REPLAY


# --- RFC 7714 AES-GCM -------------------------------------------------------------------

GCM_RTP = {
    "AEAD_AES_128_GCM": "rfc7714_16.1.1_srtp_aead_aes_128_gcm_encrypt",
    "AEAD_AES_256_GCM": "rfc7714_16.2.1_srtp_aead_aes_256_gcm_encrypt",
}


def gcm_srtp(session_key: bytes, session_salt: bytes, rtp: bytes, roc: int = 0) -> bytes:
    """RFC 7714 §8.1 IV, §8.2 AAD = the RTP header (12 octets here), tag appended."""
    iv_input = b"\0\0" + rtp[8:12] + roc.to_bytes(4, "big") + rtp[2:4]
    iv = bytes(a ^ b for a, b in zip(iv_input, session_salt, strict=True))
    return rtp[:12] + AESGCM(session_key).encrypt(iv, rtp[12:], rtp[:12])


def gcm_srtcp(session_key: bytes, session_salt: bytes, rtcp: bytes, index: int) -> bytes:
    """RFC 7714 §9.1 IV, §9.3 AAD = first 8 octets || E-flag|index, trailer E|index."""
    e_index = (0x80000000 | index).to_bytes(4, "big")
    iv_input = b"\0\0" + rtcp[4:8] + b"\0\0" + index.to_bytes(4, "big")
    iv = bytes(a ^ b for a, b in zip(iv_input, session_salt, strict=True))
    return rtcp[:8] + AESGCM(session_key).encrypt(iv, rtcp[8:], rtcp[:8] + e_index) + e_index


@pytest.mark.parametrize("section", GCM_RTP.values())
def test_rfc7714_srtp_vector_construction(section):
    assert gcm_srtp(h(section, "key"), h(section, "salt"), h(section, "rtp_plain")) == h(
        section, "srtp_protected"
    )


def test_rfc7714_srtcp_vectors_construction():
    s = "rfc7714_17.1_srtcp_aead_aes_128_gcm_encrypt"
    index = int(V[s]["srtcp_index"], 16)
    assert gcm_srtcp(h(s, "key"), h(s, "salt"), h(s, "rtcp_plain"), index) == h(
        s, "srtcp_protected"
    )
    s = "rfc7714_17.2_srtcp_aead_aes_256_gcm_decrypt"
    assert gcm_srtcp(h(s, "key"), h(s, "salt"), h(s, "rtcp_plain"), index) == h(
        s, "srtcp_protected"
    )


@pytest.mark.parametrize("suite_name", GCM_RTP)
def test_our_gcm_srtp_equals_rfc7714_construction_under_rfc3711_kdf(suite_name):
    section = GCM_RTP[suite_name]
    key_length = len(h(section, "key"))
    master = bytes(range(0x40, 0x40 + key_length + 12))
    master_key, master_salt = master[:key_length], master[key_length:]
    rtp = h(section, "rtp_plain")
    expected = gcm_srtp(
        kdf(master_key, master_salt, 0, key_length), kdf(master_key, master_salt, 2, 12), rtp
    )
    sender = SrtpSession.sender(suite_name, master)
    assert sender.protect(rtp) == expected
    receiver = SrtpSession.receiver(suite_name, master)
    assert receiver.unprotect(expected) == rtp
    forged = bytearray(expected)
    forged[-1] ^= 0x01
    assert SrtpSession.receiver(suite_name, master).unprotect(bytes(forged)) is None


@pytest.mark.parametrize("suite_name", GCM_RTP)
def test_our_gcm_srtcp_equals_rfc7714_construction_under_rfc3711_kdf(suite_name):
    rtcp = h("rfc7714_17.1_srtcp_aead_aes_128_gcm_encrypt", "rtcp_plain")
    key_length = 32 if suite_name == "AEAD_AES_256_GCM" else 16
    master = os.urandom(key_length + 12)
    master_key, master_salt = master[:key_length], master[key_length:]
    session_key = kdf(master_key, master_salt, 3, key_length)
    session_salt = kdf(master_key, master_salt, 5, 12)
    sender = SrtpSession.sender(suite_name, master)
    receiver = SrtpSession.receiver(suite_name, master)
    for index in (1, 2, 3):  # libsrtp numbers SRTCP packets from 1
        protected = sender.protect_rtcp(rtcp)
        assert protected == gcm_srtcp(session_key, session_salt, rtcp, index)
        assert receiver.unprotect_rtcp(protected) == rtcp


# --- keys and setup ---------------------------------------------------------------------


@pytest.mark.parametrize("suite_name", SUPPORTED_SUITES)
def test_generated_keys_round_trip_between_sessions(suite_name):
    counter = iter(range(1, 1000))
    material = generate_key_material(suite_name, lambda n: bytes(next(counter) for _ in range(n)))
    inline = encode_inline_key(material)
    assert decode_inline_key(suite_name, inline) == material
    sender = SrtpSession.sender(suite_name, material)
    receiver = SrtpSession.receiver(suite_name, decode_inline_key(suite_name, inline))
    rtp = h(LIBSRTP, "rtp_plain")
    assert receiver.unprotect(sender.protect(rtp)) == rtp


def test_setup_errors_are_exceptions_with_reasons():
    with pytest.raises(SrtpKeyError, match="unsupported SRTP crypto suite 'AES_256_CM"):
        SrtpSession.sender("AES_256_CM_HMAC_SHA1_80", bytes(46))
    with pytest.raises(SrtpKeyError, match="needs 30 octets"):
        SrtpSession.sender("AES_CM_128_HMAC_SHA1_80", bytes(29))
    with pytest.raises(SrtpKeyError, match="must be 44 octets"):
        decode_inline_key("AEAD_AES_256_GCM", base64.b64encode(bytes(30)).decode())
    with pytest.raises(SrtpKeyError, match="not valid base64"):
        decode_inline_key("AEAD_AES_256_GCM", "not*base64")
    with pytest.raises(SrtpKeyError, match="wrong number of bytes"):
        generate_key_material("AEAD_AES_128_GCM", lambda n: bytes(n - 1))


def test_the_relays_packet_transforms_call_libsrtp_directly_with_this_pylibsrtp():
    # If a pylibsrtp upgrade moves its internals, the transforms quietly fall back to the public
    # Session methods (correct, ~1 µs per packet slower): this says so instead of staying quiet.
    session = SrtpSession.sender("AES_CM_128_HMAC_SHA1_80", LIBSRTP_KEY)
    assert _libsrtp_call(session.libsrtp, "srtp_protect", 144) is not None
    assert session.rtp_protector() != session.libsrtp.protect


@pytest.mark.parametrize("suite_name", SUPPORTED_SUITES)
def test_packet_transforms_match_pylibsrtp_and_refuse_the_same_way(suite_name):
    key = os.urandom(SRTP_SUITES[suite_name].key_material_length)
    public = SrtpSession.sender(suite_name, key).libsrtp.protect
    sender = SrtpSession.sender(suite_name, key)
    protect = sender.rtp_protector()
    plain = [
        h(LIBSRTP, "rtp_plain")[:2] + bytes([0, n]) + h(LIBSRTP, "rtp_plain")[4:]
        for n in range(1, 5)
    ]
    protected = [protect(packet) for packet in plain]
    assert protected == [public(packet) for packet in plain]
    receiver = SrtpSession.receiver(suite_name, key)
    unprotect = receiver.rtp_unprotector()
    assert [unprotect(packet) for packet in protected[:3]] == plain[:3]
    forged = bytearray(protected[3])  # a new index, so authentication is what refuses it
    forged[-1] ^= 1
    refusals = []
    for packet, transform in (
        (bytes(forged), unprotect),  # authentication failure
        (protected[2], unprotect),  # replay
        (bytes(1400), protect),  # no room for the tag in libsrtp's buffer
        (plain[2], protect),  # the sender never reuses a packet index
    ):
        with pytest.raises(SRTP_ERRORS) as refused:
            transform(packet)
        owner = receiver if transform is unprotect else sender
        refusals.append(owner.count_refusal(refused.value))
    assert refusals == [
        SrtpFailure.AUTH,
        SrtpFailure.REPLAY,
        SrtpFailure.MALFORMED,
        SrtpFailure.REPLAY,
    ]
    assert (receiver.auth_failures, receiver.replay_failures) == (1, 1)
    assert (sender.malformed, sender.replay_failures) == (1, 1)
