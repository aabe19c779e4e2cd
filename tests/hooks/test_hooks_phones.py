"""Phone numbers in national and international formats: one subject per number, and maskers
that find them in free text under the configured country (issue 17, item 7)."""

from __future__ import annotations

import time

import pytest
from vaultpbx.hooks.maskers import TextMasker
from vaultpbx.hooks.phones import PhoneFinder, normalise_number
from vaultpbx.security.config import SecurityConfig


@pytest.mark.parametrize("spelling", [
    "02079460000", "020 7946 0000", "(020) 7946-0000", "+44 20 7946 0000", "+442079460000",
    "0044 20 7946 0000", "+44 (0)20 7946 0000"])
def test_every_spelling_of_a_gb_number_is_one_subject(spelling: str) -> None:
    assert normalise_number(spelling, "GB") == "+442079460000"


def test_national_format_depends_on_the_country_and_other_values_stay_stable() -> None:
    assert normalise_number("02079460000", "DE") == "+492079460000"  # Bottrop, not London
    assert normalise_number("(202) 555-0123", "US") == "+12025550123"
    assert normalise_number("13800138000", "CN") == "+8613800138000"
    assert normalise_number("1001") == "1001"  # an extension: not a subscriber number
    assert normalise_number("Anonymous") == "anonymous"
    assert normalise_number("+1 555") == "+1555"
    # The fiction range 07700 900xxx is possible (not valid): still one subject.
    assert normalise_number("07700 900123") == normalise_number("+447700900123")


@pytest.mark.parametrize(("country", "text", "masked"), [
    ("GB", "caller 02079460000 hung up", "caller 020****0000 hung up"),
    ("GB", "call back on 020 7946 0000.", "call back on 020 **** 0000."),
    ("GB", "mobile 07700 900123", "mobile 077** **0123"),
    ("GB", "intl +44 20 7946 0000 or 0044 20 7946 0000",
     "intl +44 2* **** 0000 or 004* ** **** 0000"),
    ("GB", "file /var/voicemail/02079460000/1.wav", "file /var/voicemail/020****0000/1.wav"),
    ("US", "call (202) 555-0123 or 202-555-0123", "call (202) ***-0123 or 202-***-0123"),
    ("CN", "手机 13800138000 座机 010-12345678", "手机 138****8000 座机 010-****5678"),
])
def test_maskers_find_national_and_international_numbers(country: str, text: str,
                                                        masked: str) -> None:
    masker = TextMasker(country=country)
    assert masker.mask_text(text, "agent") == masked
    assert masker.mask_text(text, "supervisor") == text  # supervisors see phones in clear


@pytest.mark.parametrize("text", [
    "2026-12-03T16:52:30.123456Z", "listen 127.0.0.1:5060 media 20000-32767",
    "at 1733243423.123 took 12.345 s", "branch=z9hG4bK-12345678 CSeq: 1 INVITE",
    "recording 0123456789abcdef0123456789abcdef size 123456", "status 200 legs 2 port 5060",
    "version 1.2.3.4567890",
])
def test_timestamps_addresses_ids_and_counts_are_not_phone_numbers(text: str) -> None:
    assert TextMasker(country="GB").mask_text(text, "agent") == text


def test_a_bare_run_is_a_number_only_where_the_country_writes_it_so() -> None:
    gb, us = PhoneFinder("GB"), PhoneFinder("US")
    assert not gb.is_phone("1733243423")  # an epoch second; without the trunk prefix
    assert gb.is_phone("01733 243423")  # ...the same digits as a Peterborough number
    assert us.is_phone("(202) 555-0123") and not gb.is_phone("(202) 555-0123")
    assert not us.is_phone("1733243423")  # no US area code 173


def test_the_country_is_configuration_checked_at_load() -> None:
    config = SecurityConfig.from_dict({"privacy": {"default_country": "us"}})
    assert config.privacy.default_country == "US"
    with pytest.raises(ValueError, match=r"security\.privacy\.default_country: unknown country"):
        SecurityConfig.from_dict({"privacy": {"default_country": "XX"}})
    with pytest.raises(ValueError, match=r"security\.privacy: unknown key"):
        SecurityConfig.from_dict({"privacy": {"country": "GB"}})


def test_masking_cost_grows_linearly_with_hostile_digit_groups() -> None:
    # Long runs of digit groups must not make the phone pattern backtrack (a log line is
    # attacker-controlled: a SIP user part, a display name).
    masker = TextMasker()

    def cost(n: int) -> float:
        text = "1 " * n + "x"
        start = time.perf_counter()
        masker.mask_text(text, "agent")
        return time.perf_counter() - start

    cost(500)  # warm up the caches
    small = min(cost(2000) for _ in range(3))
    large = min(cost(4000) for _ in range(3))
    assert large < small * 4, (small, large)


def test_a_text_full_of_new_digit_groups_costs_linear_time_and_fails_closed() -> None:
    # Each new candidate costs libphonenumber ~50-100 us; an attacker-controlled text (a SIP
    # message logged after an internal error) could hold thousands. Past a per-text budget they
    # are masked without asking.
    def text(n: int, base: int) -> str:
        return " ".join(f"{base + i:010d}" for i in range(n))

    def cost(n: int, base: int) -> float:
        masker = TextMasker()  # a fresh cache: every candidate is new
        start = time.perf_counter()
        masked = masker.mask_text(text(n, base), "agent")
        assert "*" in masked.rsplit(" ", 1)[-1]  # the last ones were masked, fail closed
        return time.perf_counter() - start

    small = min(cost(2000, 10**9 + 7 * k) for k in range(3))
    large = min(cost(4000, 2 * 10**9 + 7 * k) for k in range(3))
    assert large < small * 4, (small, large)
