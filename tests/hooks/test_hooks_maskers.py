"""Masking: valid IDs and cards never leak to a masked role; invalid ones are left alone."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vaultpbx.hooks.maskers import (
    REDACTED,
    MaskPolicy,
    TextMasker,
    is_card_number,
    is_resident_id,
    luhn_ok,
    mask_processor,
    mask_text,
    mask_value,
    policies_from_dict,
    resident_id_check_char,
)

MASKED_ROLES = ("agent", "qa", "supervisor", "admin", "auditor", "system", "unknown-role")


def make_resident_id(rng: random.Random, legacy: bool = False) -> str:
    region = f"{rng.randint(11, 82)}{rng.randint(0, 99):02d}{rng.randint(0, 99):02d}"
    year, month, day = rng.randint(1930, 2020), rng.randint(1, 12), rng.randint(1, 28)
    seq = f"{rng.randint(0, 999):03d}"
    if legacy:
        return f"{region}{year % 100:02d}{month:02d}{day:02d}{seq}"
    body = f"{region}{year}{month:02d}{day:02d}{seq}"
    return body + resident_id_check_char(body)


def luhn_complete(partial: str) -> str:
    for check in "0123456789":
        if luhn_ok(partial + check):
            return partial + check
    raise AssertionError


def make_card(rng: random.Random, length: int | None = None) -> str:
    length = length or rng.choice((13, 15, 16, 16, 16, 19))
    prefix = rng.choice(("4", "51", "55", "62", "37", "6011"))
    body = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    return luhn_complete(body)


def group(card: str, sep: str) -> str:
    return sep.join(card[i : i + 4] for i in range(0, len(card), 4))


def test_known_resident_id_and_check_x() -> None:
    assert is_resident_id("11010519491231002X")
    assert is_resident_id("11010519491231002x")
    assert not is_resident_id("110105194912310021")  # wrong check character
    assert not is_resident_id("110105194902300021")  # 30 February
    assert is_resident_id("110105491231002")  # legacy 15-digit


def test_luhn_reference_numbers() -> None:
    assert is_card_number("4111111111111111")
    assert is_card_number("378282246310005")
    assert not is_card_number("4111111111111112")


CONTEXTS = [
    'From: "x" <sip:{v}@pbx.example.com>;tag=1',
    "2026-01-01T00:00:00Z INFO caller said {v} twice",
    '{{"customer": {{"id": "{v}", "note": "ok"}}}}',
    "P-Asserted-Identity: <tel:{v}>",
    "id={v},next",
]


@pytest.mark.parametrize("seed", range(40))
def test_random_valid_numbers_never_leak(seed: int) -> None:
    rng = random.Random(seed)
    values = [
        make_resident_id(rng),
        make_resident_id(rng, legacy=True),
        make_card(rng),
        group(make_card(rng, 16), " "),
        group(make_card(rng, 16), "-"),
        f"1{rng.randint(3, 9)}{rng.randint(0, 10**9 - 1):09d}",
    ]
    masker = TextMasker()
    for value in values:
        for ctx in CONTEXTS:
            text = ctx.format(v=value)
            for role in MASKED_ROLES:
                if role == "supervisor" and len(value) == 11:
                    continue  # supervisors see phone numbers in clear by default
                out = masker.mask_text(text, role)
                assert value not in out, (role, text, out)
                assert len(out) == len(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789", min_size=18, max_size=18))
def test_invalid_18_digit_numbers_left_alone(digits: str) -> None:
    if is_resident_id(digits) or luhn_ok(digits):
        return
    text = f"ticket {digits} closed"
    assert mask_text(text, "agent") == text


def test_invalid_card_left_alone() -> None:
    assert mask_text("ref 4111 1111 1111 1112", "agent") == "ref 4111 1111 1111 1112"
    assert mask_text("ref 4111111111111112", "agent") == "ref 4111111111111112"


def test_shapes_per_policy() -> None:
    assert mask_text("11010519491231002X", "agent") == "1101***********02X"
    assert mask_text("11010519491231002X", "admin") == "110105********002X"
    assert mask_text("4111111111111111", "agent") == "4111********1111"
    assert mask_text("4111111111111111", "admin") == "411111******1111"
    assert mask_text("13812345678", "agent") == "138****5678"
    assert mask_text("13812345678", "supervisor") == "13812345678"
    assert mask_text("+8613812345678", "qa") == "+86138****5678"
    assert mask_text("+14155552671", "qa") == "+141****2671"
    assert mask_text("mail alice.w@example.com now", "qa") == "mail a***@example.com now"
    assert mask_text('<sip:alice@example.com>', "qa") == "<sip:alice@example.com>"
    assert mask_text("short 1001 ext", "qa") == "short 1001 ext"


def test_policy_config_rules() -> None:
    policies = policies_from_dict({"supervisor": {"resident_id": "6+4", "phone": [3, 4]}})
    assert policies["supervisor"] == MaskPolicy(resident_id=(6, 4))
    with pytest.raises(ValueError, match="PCI"):
        policies_from_dict({"admin": {"card": [8, 4]}})
    with pytest.raises(ValueError, match="only"):
        policies_from_dict({"admin": {"resident_id": [5, 5]}})
    with pytest.raises(ValueError, match="masked"):
        policies_from_dict({"qa": {"phone": "clear"}})
    with pytest.raises(ValueError, match="unknown role"):
        policies_from_dict({"boss": {}})
    assert TextMasker(policies_from_dict({"admin": {"card": "clear"}})).mask_text(
        "4111111111111111", "admin"
    ) == "4111111111111111"


SECRET_TEXTS = [
    ('Authorization: Digest username="bob", nonce="n0nc3", response="d1g3st"', "d1g3st"),
    ('Proxy-Authorization: Digest username="bob", response="r3sp0nse"', "r3sp0nse"),
    ('WWW-Authenticate: Digest realm="x", nonce="s3cretnonce"', "s3cretnonce"),
    ("a=crypto:1 AES_256_CM inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk|2^31", "QUJDREVG"),
    ("login failed password=hunter2 user=bob", "hunter2"),
    ("Bearer eyJhbGciOiJIUzI1NiJ9.abc.def", "eyJhbGci"),
]


@pytest.mark.parametrize(("text", "secret"), SECRET_TEXTS)
def test_secrets_redacted_in_text_for_every_role(text: str, secret: str) -> None:
    for role in MASKED_ROLES:
        assert secret not in mask_text(text, role)


def test_structlog_processor_drops_secrets_and_masks_values() -> None:
    rng = random.Random(7)
    rid, card = make_resident_id(rng), make_card(rng, 16)
    event = {
        "event": f"customer {rid} paid with {card}",
        "password": "hunter2",
        "api_key": "k-123",
        "Authorization": "Digest response=abc",
        "nested": {"token": "t0k", "card": card, "list": [rid, {"secret": "s"}]},
        "card_int": int(card),
        "sdp": "v=0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2VjcmV0a2V5bWF0ZXJpYWw=|2^20",
        "status": 200,
    }
    out = mask_processor(None, "info", dict(event))
    rendered = json.dumps(out, default=str)
    for leak in (rid, card, "hunter2", "k-123", "t0k", "c2VjcmV0a2V5bWF0ZXJpYWw", '"s"'):
        assert leak not in rendered
    assert out["password"] == REDACTED and out["nested"]["token"] == REDACTED
    assert out["status"] == 200


def test_processor_in_structlog_pipeline() -> None:
    import structlog

    captured: list[str] = []
    structlog.configure(
        processors=[mask_processor, structlog.processors.JSONRenderer()],
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    try:
        log = structlog.get_logger()
        captured.append(log.info("call from 13812345678", nonce="abc", pin="1234"))
    finally:
        structlog.reset_defaults()
    assert "13812345678" not in captured[0] and "abc" not in captured[0]
    assert "1234" not in captured[0]


def test_mask_value_keeps_shape() -> None:
    assert mask_value({"a": [1, 2.5, None, True]}) == {"a": [1, 2.5, None, True]}
    assert mask_value(("13812345678",), "agent") == ("138****5678",)
