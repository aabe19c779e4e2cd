"""Bounded fuzzing in the suite (issue 17): the targets of fuzzing.py, seeded with the RFC 4475
and RFC 5118 messages and mutated by Hypothesis, a few thousand examples in all. The examples
are derandomized so the suite is repeatable; scripts/fuzz_sip.py runs the same targets for as
long as one likes (bench/results/fuzz.md)."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vaultpbx.sip.digest import _unfold, parse_digest_params
from vaultpbx.sip.errors import SipParseError
from vaultpbx.sip.headers import parse_cseq, parse_name_addr, parse_params, parse_via, split_list
from vaultpbx.sip.uri import parse_uri

from .fuzzing import Target, mutate, seed_messages

SEEDS = seed_messages()
BOUNDED = settings(deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    seed = draw(st.sampled_from(SEEDS))
    rng = draw(st.randoms(use_true_random=False))
    return mutate(seed, rng)


def test_there_are_seeds_from_both_rfcs() -> None:
    assert len(SEEDS) > 50
    assert any(b"badinv01" in s or b"Via: SIP/2.0/UDP 192.0.2.15;;,;,," in s for s in SEEDS)


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_every_seed_through_every_target(index: int) -> None:
    data = SEEDS[index]
    for run in ("parse", "datagram", "stream", "two_sources"):
        target = Target()
        getattr(target, run)(data)


@settings(BOUNDED, max_examples=700)
@given(mutated())
def test_mutated_messages_parse_or_fail_cleanly(data: bytes) -> None:
    Target().parse(data)


@settings(BOUNDED, max_examples=600)
@given(mutated())
def test_mutated_datagrams_are_answered_and_the_engine_keeps_answering(data: bytes) -> None:
    Target().datagram(data)


@settings(BOUNDED, max_examples=400)
@given(mutated(), st.lists(st.integers(0, 70000), max_size=4))
def test_mutated_streams_cut_anywhere(data: bytes, cuts: list[int]) -> None:
    Target().stream(data, cuts)


@settings(BOUNDED, max_examples=300)
@given(mutated())
def test_responses_go_only_to_the_source_of_their_request(data: bytes) -> None:
    Target().two_sources(data)


@settings(BOUNDED, max_examples=300)
@given(st.binary(max_size=400))
def test_arbitrary_bytes(data: bytes) -> None:
    target = Target()
    target.parse(data)
    target.datagram(data)


# -- header-level parsers on arbitrary text ------------------------------------------------------
SIP_TEXT = st.text(alphabet=st.sampled_from(list(' \t\r\n,;:=<>"\\@[]%?/.aZ09*#~\x00é')),
                   max_size=60)
HEADER_PARSERS = [parse_uri, parse_name_addr, parse_via, parse_params, parse_cseq, split_list]


@settings(BOUNDED, max_examples=300)
@given(st.sampled_from(HEADER_PARSERS), SIP_TEXT)
def test_header_parsers_raise_only_sip_parse_errors(parser: object, text: str) -> None:
    try:
        parser(text)  # type: ignore[operator]
    except SipParseError:
        pass


@settings(BOUNDED, max_examples=300)
@given(st.one_of(SIP_TEXT.map(lambda t: "Digest " + t), SIP_TEXT))
def test_digest_params_never_raise(text: str) -> None:
    result = parse_digest_params(text)
    assert result is None or isinstance(result, dict)


_OLD_FOLD = re.compile(r"[ \t]*\r?\n[ \t]+")  # the quadratic expression of item 14


@settings(BOUNDED, max_examples=500)
@given(st.text(alphabet=st.sampled_from(list(" \t\r\nab")), max_size=40))
def test_linear_digest_folding_means_what_the_old_expression_meant(text: str) -> None:
    assert _unfold(text) == _OLD_FOLD.sub(" ", text)


def test_mutate_is_deterministic_and_bounded() -> None:
    seed = SEEDS[0]
    assert mutate(seed, random.Random(7)) == mutate(seed, random.Random(7))
    assert all(len(mutate(seed, random.Random(i), rounds=8)) <= 65535 for i in range(50))
