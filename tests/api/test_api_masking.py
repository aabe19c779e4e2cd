"""API output through the role's mask policy: random valid resident IDs and card numbers in call
records and recording listings never leave unmasked for QA or agents; invalid numbers are left
alone; configured policies (admin 6+4, supervisor phones in clear) are honoured."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from vaultpbx.hooks.maskers import is_card_number, is_resident_id, luhn_ok

from .api_helpers import (
    FakeCdr,
    FakeRecordings,
    Harness,
    body,
    luhn_card,
    make_harness,
    resident_id,
)

SEEDS = range(8)


def _records(rng: random.Random) -> tuple[list[dict[str, object]], str, str, str]:
    rid, card, mobile = resident_id(rng), luhn_card(rng), f"139{rng.randint(10**7, 10**8 - 1)}"
    records: list[dict[str, object]] = [{
        "call_id": f"c{rng.random()}@pbx", "caller": f'"{rid}" <sip:{mobile}@198.51.100.4>',
        "callee": f"sip:{card}@pbx.example", "route_kind": "queue",
        "route_name": f"billing card {card[:4]} {card[4:8]} {card[8:12]} {card[12:]}",
        "started": 1.0, "answered": 2.0, "ended": 3.0, "cause": f"id {rid} verified",
        "status": 200,
        "legs": json.dumps([{"side": "caller", "peer": "198.51.100.4", "target": card}]),
    }]
    return records, rid, card, mobile


def _harness(tmp_path: Path, records: list[dict[str, object]], caller: str,
             **security: object) -> Harness:
    recordings = FakeRecordings()
    recordings.rows[0]["caller"] = caller
    return make_harness(tmp_path, cdr=FakeCdr(records), recordings=recordings,
                        security=security or None)


@pytest.mark.parametrize("role", ["qa", "agent"])
@pytest.mark.parametrize("seed", SEEDS)
def test_ids_and_cards_never_unmasked_for_qa_and_agents(tmp_path: Path, role: str,
                                                        seed: int) -> None:
    rng = random.Random(seed)
    records, rid, card, mobile = _records(rng)
    assert is_resident_id(rid) and is_card_number(card)
    h = _harness(tmp_path, records, caller=card)
    token = h.token(role)
    calls = h.request("GET", "/calls", token=token)
    listing = h.request("GET", "/recordings", token=token)
    assert calls.status == listing.status == 200
    for text in (calls.body.decode(), listing.body.decode()):
        for secret in (rid, card, card[:4] + " " + card[4:8], mobile):
            assert secret not in text
    call = body(calls)["calls"][0]
    assert rid[:4] + "*" * 11 + rid[-3:] in call["caller"]  # ID: first 4, last 3
    assert f"sip:{mobile[:3]}****{mobile[-4:]}@" in call["caller"]
    assert call["callee"] == f"sip:{card[:4]}{'*' * 8}{card[-4:]}@pbx.example"
    assert body(listing)["recordings"][0]["caller"] == card[:4] + "*" * 8 + card[-4:]
    h.audit.close()


def test_invalid_numbers_are_left_alone(tmp_path: Path) -> None:
    rng = random.Random(99)
    rid, card = resident_id(rng), luhn_card(rng)
    # A wrong check character (and, as 18 digits could pass as a card, not Luhn-valid either).
    bad_rid = next(rid[:17] + c for c in "0123456789"
                   if not is_resident_id(rid[:17] + c) and not luhn_ok(rid[:17] + c))
    bad_card = card[:-1] + str((int(card[-1]) + 1) % 10)  # Luhn fails
    assert not is_card_number(bad_card)
    records = [{"call_id": "x", "caller": "sip:1001@pbx", "callee": "sip:2002@pbx",
                "cause": f"ref {bad_rid} / {bad_card}"}]
    h = _harness(tmp_path, records, caller="1001")
    call = body(h.request("GET", "/calls", token=h.token("qa")))["calls"][0]
    assert call["cause"] == f"ref {bad_rid} / {bad_card}"
    assert call["caller"] == "sip:1001@pbx"  # a 4-digit extension is not a phone number
    h.audit.close()


def test_party_fields_mask_any_long_number(tmp_path: Path) -> None:
    # A landline or a foreign number without "+" is no validated pattern, but in a caller or
    # callee field it is a phone number all the same.
    assert not luhn_ok("4915112345679")  # else the card masker would take it first
    records = [{"call_id": "x", "caller": "sip:02087654321@gw", "callee": "tel:4915112345679",
                "route_name": "02087654321"}]
    h = _harness(tmp_path, records, caller="02087654321")
    call = body(h.request("GET", "/calls", token=h.token("agent")))["calls"][0]
    assert call["caller"] == "sip:020****4321@gw"
    assert call["callee"] == "tel:491******5679"
    # Not a party field, but a GB number in national format: the phone finder knows it now.
    assert call["route_name"] == "020****4321"
    h.audit.close()


def test_configured_policies_for_admin_and_supervisor(tmp_path: Path) -> None:
    rng = random.Random(7)
    records, rid, card, mobile = _records(rng)
    h = _harness(tmp_path, records, caller=card,
                 masking={"roles": {"admin": {"resident_id": [6, 4], "card": [6, 4]}}})
    admin = body(h.request("GET", "/calls", token=h.token("admin")))["calls"][0]
    assert rid[:6] + "*" * 8 + rid[-4:] in admin["caller"]
    assert admin["callee"] == f"sip:{card[:6]}{'*' * 6}{card[-4:]}@pbx.example"
    supervisor = body(h.request("GET", "/calls", token=h.token("supervisor")))["calls"][0]
    assert f"sip:{mobile}@" in supervisor["caller"]  # supervisors see phone numbers
    assert rid not in supervisor["caller"] and card not in supervisor["callee"]
    h.audit.close()


def test_plugin_maskers_also_shape_api_output(tmp_path: Path) -> None:
    h = _harness(tmp_path, [{"call_id": "x", "caller": "sip:1001@pbx", "callee": "ACME-42"}],
                 caller="1001")
    h.api.hooks.add_masker(lambda kind, value, role: value.replace("ACME", "[customer]"),
                           name="crm")
    call = body(h.request("GET", "/calls", token=h.token("qa")))["calls"][0]
    assert call["callee"] == "[customer]-42"
    h.audit.close()
