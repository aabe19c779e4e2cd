"""Digest authentication: RFC known answers, client→server round trips, and hostile input."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vaultpbx.sip import digest
from vaultpbx.sip.digest import (
    DigestAnswer,
    DigestChallengeError,
    DigestReason,
    DigestServer,
    build_authorization,
    parse_digest_params,
    select_challenge,
)

REALM = "vaultpbx.local"
SECRET = b"k" * 32
URI = "sip:200@vaultpbx.local"
PASSWORDS = {"alice": "s3cret", "bob": 'quote"and\\slash'}


def lookup(username: str) -> str | None:
    return PASSWORDS.get(username)


def server(**kwargs: object) -> DigestServer:
    return DigestServer(REALM, SECRET, **kwargs)  # type: ignore[arg-type]


def answer(
    srv: DigestServer,
    now: float,
    *,
    username: str = "alice",
    password: str = "s3cret",
    nc: int = 1,
    which: int = 0,
    entropy: bytes = b"",
    method: str = "REGISTER",
) -> str:
    challenge = srv.challenge_headers(now, entropy=entropy)[which]
    return build_authorization(challenge, method, URI, username, password, "c0ffee", nc)


# --- known answers -----------------------------------------------------------------------


def test_rfc2617_section_3_5_md5_known_answer() -> None:
    challenge = (
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    value = build_authorization(
        challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", "0a4f113b", 1
    )
    params = parse_digest_params(value)
    assert params is not None
    assert params["response"] == "6629fae49393a05397450978507c4ef1"
    assert params["qop"] == "auth"
    assert params["nc"] == "00000001"
    assert params["cnonce"] == "0a4f113b"
    assert params["opaque"] == "5ccc069c403ebaf9f0171e9517f40e41"


RFC7616_CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg}, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)


@pytest.mark.parametrize(
    ("alg", "expected"),
    [
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ],
)
def test_rfc7616_section_3_9_1_known_answers(alg: str, expected: str) -> None:
    value = build_authorization(
        RFC7616_CHALLENGE.format(alg=alg),
        "GET",
        "/dir/index.html",
        "Mufasa",
        "Circle of Life",
        "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        1,
    )
    params = parse_digest_params(value)
    assert params is not None
    assert params["response"] == expected
    assert params["algorithm"] == alg


# --- challenges --------------------------------------------------------------------------


def test_challenge_offers_sha256_then_md5_with_one_nonce() -> None:
    sha, md5 = server().challenge_headers(1000.0)
    assert sha.startswith(f'Digest realm="{REALM}", nonce="')
    assert sha.endswith(', algorithm=SHA-256, qop="auth"')
    assert md5.endswith(', algorithm=MD5, qop="auth"')
    sha_params, md5_params = parse_digest_params(sha), parse_digest_params(md5)
    assert sha_params is not None and md5_params is not None
    assert sha_params["nonce"] == md5_params["nonce"]
    assert select_challenge([sha, md5]) == sha


def test_stale_and_opaque_in_challenge() -> None:
    (value,) = server(algorithms=("SHA-256",)).challenge_headers(5.0, True, opaque='o"p')
    params = parse_digest_params(value)
    assert params is not None
    assert params["stale"] == "true"
    assert params["opaque"] == 'o"p'


def test_entropy_separates_nonces_minted_at_the_same_instant() -> None:
    srv = server()
    a = parse_digest_params(srv.challenge_headers(7.0, entropy=b"\x01" * 16)[0])
    b = parse_digest_params(srv.challenge_headers(7.0, entropy=b"\x02" * 16)[0])
    assert a is not None and b is not None and a["nonce"] != b["nonce"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"algorithms": ("SHA-512-256",)},
        {"algorithms": ()},
        {"nonce_ttl": 0.0},
        {"max_tracked_nonces": 0},
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        server(**kwargs)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        DigestServer(REALM, b"short")


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("username", ["alice", "bob"])
def test_round_trip(which: int, username: str) -> None:
    srv = server()
    value = answer(srv, 100.0, username=username, password=PASSWORDS[username], which=which)
    result = srv.verify("REGISTER", value, lookup, 101.0, request_uri=URI)
    assert result.ok
    assert result.username == username
    assert result.reason is DigestReason.OK
    assert result.answer is DigestAnswer.ACCEPT


def test_round_trip_with_a_realm_that_needs_escaping() -> None:
    srv = DigestServer('a "quoted" \\ realm', SECRET)
    challenge = srv.challenge_headers(0.0)[0]
    value = build_authorization(challenge, "INVITE", URI, "alice", "s3cret", "xyz", 1)
    assert srv.verify("INVITE", value, lookup, 1.0).ok


def test_wrong_password() -> None:
    srv = server()
    result = srv.verify("REGISTER", answer(srv, 0.0, password="guess"), lookup, 1.0)
    assert not result.ok
    assert result.reason is DigestReason.BAD_RESPONSE
    assert result.answer is DigestAnswer.CHALLENGE


def test_wrong_method_or_uri_breaks_the_digest() -> None:
    srv = server()
    assert srv.verify("INVITE", answer(srv, 0.0), lookup, 1.0).reason is DigestReason.BAD_RESPONSE
    mismatch = srv.verify("REGISTER", answer(srv, 0.0), lookup, 1.0, request_uri="sip:x@y")
    assert mismatch.reason is DigestReason.URI_MISMATCH


def test_unknown_user_looks_like_a_wrong_password_and_costs_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hash_calls: list[int] = []
    lookups: list[str] = []

    def counting(inner: Callable[[bytes], str]) -> Callable[[bytes], str]:
        def wrapped(data: bytes) -> str:
            hash_calls.append(len(data))
            return inner(data)

        return wrapped

    for name, fn in list(digest._HASHES.items()):
        monkeypatch.setitem(digest._HASHES, name, counting(fn))

    def credentials(username: str) -> str | None:
        lookups.append(username)
        return lookup(username)

    srv = server()
    results = {}
    for case, (user, password) in {"wrong": ("alice", "x"), "unknown": ("mallory", "x")}.items():
        value = answer(srv, 0.0, username=user, password=password)
        hash_calls.clear()
        results[case] = (srv.verify("REGISTER", value, credentials, 1.0), len(hash_calls))

    (wrong, wrong_hashes), (unknown, unknown_hashes) = results["wrong"], results["unknown"]
    assert lookups == ["alice", "mallory"]
    assert wrong_hashes == unknown_hashes == 3
    assert wrong.ok is unknown.ok is False
    assert wrong.answer is unknown.answer is DigestAnswer.CHALLENGE
    assert (wrong.reason, unknown.reason) == (DigestReason.BAD_RESPONSE, DigestReason.UNKNOWN_USER)
    # What the caller sends back depends only on `answer` and `now`: the same bytes either way.
    assert srv.challenge_headers(2.0, stale=wrong.answer is DigestAnswer.CHALLENGE_STALE) == (
        srv.challenge_headers(2.0, stale=unknown.answer is DigestAnswer.CHALLENGE_STALE)
    )


# --- nonce lifetime and replay -----------------------------------------------------------


def test_stale_after_ttl_only_with_the_right_password() -> None:
    srv = server(nonce_ttl=30.0)
    good = answer(srv, 100.0)
    assert srv.verify("REGISTER", good, lookup, 130.0).ok  # exactly ttl: still fresh
    late = answer(srv, 100.0, nc=2)
    result = srv.verify("REGISTER", late, lookup, 130.5)
    assert result.reason is DigestReason.STALE
    assert result.answer is DigestAnswer.CHALLENGE_STALE
    # stale=true tells the client its password was right; never say it to a wrong one.
    wrong = srv.verify("REGISTER", answer(srv, 100.0, password="x"), lookup, 500.0)
    assert wrong.reason is DigestReason.BAD_RESPONSE


def test_nonce_from_the_future_is_stale() -> None:
    srv = server()
    assert srv.verify("REGISTER", answer(srv, 100.0), lookup, 99.0).reason is DigestReason.STALE


def test_replayed_nonce_count() -> None:
    srv = server()
    first = answer(srv, 0.0, nc=1)
    assert srv.verify("REGISTER", first, lookup, 1.0).ok
    replay = srv.verify("REGISTER", first, lookup, 2.0)
    assert replay.reason is DigestReason.REPLAY
    assert replay.answer is DigestAnswer.CHALLENGE_STALE
    assert srv.verify("REGISTER", answer(srv, 0.0, nc=3), lookup, 3.0).ok
    assert srv.verify("REGISTER", answer(srv, 0.0, nc=2), lookup, 4.0).reason is (
        DigestReason.REPLAY
    )
    assert srv.verify("REGISTER", answer(srv, 0.0, nc=4), lookup, 5.0).ok


def test_forged_requests_do_not_burn_nonce_counts() -> None:
    srv = server()
    forged = answer(srv, 0.0, password="guess", nc=0xFFFFFFFF)
    assert srv.verify("REGISTER", forged, lookup, 1.0).reason is DigestReason.BAD_RESPONSE
    assert srv.verify("REGISTER", answer(srv, 0.0, nc=1), lookup, 2.0).ok


def test_evicted_nonces_do_not_reopen_replay() -> None:
    srv = server(max_tracked_nonces=2)
    values = [answer(srv, float(t + 1), entropy=bytes([t])) for t in range(4)]
    pending = answer(srv, 0.5)  # minted early, first used after the table has moved on
    for value in values[:3]:
        assert srv.verify("REGISTER", value, lookup, 10.0).ok
    # values[0] was evicted: a replay of it is stale, not accepted again.
    assert srv.verify("REGISTER", values[0], lookup, 11.0).reason is DigestReason.STALE
    assert srv.verify("REGISTER", pending, lookup, 11.0).reason is DigestReason.STALE
    assert srv.verify("REGISTER", values[3], lookup, 11.0).ok  # newer than anything evicted
    assert srv.verify("REGISTER", values[2], lookup, 12.0).reason is DigestReason.REPLAY


def test_expired_entries_leave_the_table() -> None:
    srv = server(nonce_ttl=10.0)
    assert srv.verify("REGISTER", answer(srv, 0.0, entropy=b"a"), lookup, 1.0).ok
    assert srv.verify("REGISTER", answer(srv, 50.0, entropy=b"b"), lookup, 51.0).ok
    assert len(srv._counts) == 1


def test_forged_and_foreign_nonces() -> None:
    srv = server()
    value = answer(srv, 0.0)
    params = parse_digest_params(value)
    assert params is not None
    nonce = params["nonce"]
    flipped = nonce[:-1] + ("A" if nonce[-1] != "A" else "B")
    tampered = value.replace(nonce, flipped)
    assert srv.verify("REGISTER", tampered, lookup, 1.0).reason is DigestReason.BAD_NONCE
    other_key = DigestServer(REALM, b"x" * 32)
    assert other_key.verify("REGISTER", value, lookup, 1.0).reason is DigestReason.BAD_NONCE
    other_realm = DigestServer("elsewhere", SECRET)
    foreign = answer(other_realm, 0.0).replace('realm="elsewhere"', f'realm="{REALM}"')
    assert srv.verify("REGISTER", foreign, lookup, 1.0).reason is DigestReason.BAD_NONCE
    padded = value.replace(nonce, nonce + "==")
    assert srv.verify("REGISTER", padded, lookup, 1.0).reason is DigestReason.BAD_NONCE


# --- policy checks -----------------------------------------------------------------------


def test_wrong_realm_and_unsupported_algorithms() -> None:
    srv = server()
    assert (
        srv.verify("REGISTER", answer(srv, 0.0).replace(REALM, "other"), lookup, 1.0).reason
        is DigestReason.WRONG_REALM
    )
    sess = answer(srv, 0.0).replace("algorithm=SHA-256", "algorithm=SHA-256-sess")
    assert srv.verify("REGISTER", sess, lookup, 1.0).reason is DigestReason.UNSUPPORTED_ALGORITHM
    sha_only = server(algorithms=("sha-256",))
    md5 = answer(srv, 0.0, which=1)
    assert sha_only.verify("REGISTER", md5, lookup, 1.0).reason is (
        DigestReason.UNSUPPORTED_ALGORITHM
    )
    no_algorithm = md5.replace(", algorithm=MD5", "")  # RFC 2617: absent means MD5
    assert srv.verify("REGISTER", no_algorithm, lookup, 1.0).ok


def rfc2069_value(srv: DigestServer, now: float) -> str:
    challenge = srv.challenge_headers(now)[0].replace(', qop="auth"', "")
    return build_authorization(challenge, "REGISTER", URI, "alice", "s3cret", "unused", 1)


def test_rfc2069_refused_by_default_and_single_use_when_allowed() -> None:
    value = rfc2069_value(server(), 0.0)
    assert "qop" not in value and "cnonce" not in value
    assert server().verify("REGISTER", value, lookup, 1.0).reason is DigestReason.MALFORMED
    legacy = server(allow_rfc2069=True)
    value = rfc2069_value(legacy, 0.0)
    assert legacy.verify("REGISTER", value, lookup, 1.0).ok
    assert legacy.verify("REGISTER", value, lookup, 2.0).reason is DigestReason.REPLAY


@pytest.mark.parametrize(
    "edit",
    [
        lambda v: v.replace("qop=auth", "qop=auth-int"),
        lambda v: v.replace("nc=00000001", "nc=1"),
        lambda v: v.replace("nc=00000001", "nc=00000000"),
        lambda v: v.replace(', cnonce="c0ffee"', ""),
        lambda v: v.replace(", qop=auth", ""),  # nc and cnonce without qop
        lambda v: v.replace("username=", "username*="),
        lambda v: v + ', nonce="again"',
        lambda v: v.replace("Digest ", "Basic "),
    ],
)
def test_malformed_credentials(edit: Callable[[str], str]) -> None:
    srv = server(allow_rfc2069=True)
    result = srv.verify("REGISTER", edit(answer(srv, 0.0)), lookup, 1.0)
    assert result.reason is DigestReason.MALFORMED
    assert result.answer is DigestAnswer.BAD_REQUEST
    assert not result.ok


# --- the parameter-list parser -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('Digest a="x, y=z", b=tok', {"a": "x, y=z", "b": "tok"}),
        ('digest A = "q\\"uote\\\\d" ,B=1', {"a": 'q"uote\\d', "b": "1"}),
        ('DIGEST  realm="r",\r\n  nonce="n"', {"realm": "r", "nonce": "n"}),
        ('Digest a="fold\r\n inside"', {"a": "fold inside"}),
        ('Digest a=""', {"a": ""}),
        ('Digest a="caf\u00e9"', {"a": "caf\u00e9"}),
    ],
)
def test_parser_reads(text: str, expected: dict[str, str]) -> None:
    assert parse_digest_params(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Digest",
        "Digest ",
        'Basic realm="x"',
        "Digest a=1,",
        "Digest ,a=1",
        "Digest a=1,,b=2",
        "Digest a=1, A=2",
        'Digest a="unterminated',
        'Digest a="x"y',
        "Digest a=b c",
        "Digest a=<x>",
        'Digest a="bell\x07"',
        'Digest a="x"\r\nb="y"',
        "Digest a=1, Digest b=2",
        'Digest a="\\\u00e9"',
        "Digest a=\ud800",
    ],
)
def test_parser_refuses(text: str) -> None:
    assert parse_digest_params(text) is None


DIGESTY = st.text(alphabet='Digestrealmnoncuri =,"\\ \t\r\n\x00\u00e9\udc80', max_size=80)


@settings(max_examples=500)
@given(st.one_of(st.text(max_size=200), DIGESTY, DIGESTY.map(lambda t: "Digest " + t)))
def test_garbage_never_raises(text: str) -> None:
    srv = server(allow_rfc2069=True)
    result = srv.verify("REGISTER", text, lookup, 1.0, request_uri=URI)
    assert not result.ok
    try:
        build_authorization(text, "INVITE", URI, "alice", "s3cret", "c", 1)
    except DigestChallengeError:
        pass
    select_challenge([text])


@settings(max_examples=200)
@given(
    username=st.text(
        st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters="\x7f"), min_size=1
    ),
    password=st.text(st.characters(codec="utf-8")),
    nc=st.integers(1, 0xFFFFFFFF),
)
def test_round_trip_any_credentials(username: str, password: str, nc: int) -> None:
    srv = server()
    challenge = srv.challenge_headers(0.0)[0]
    value = build_authorization(challenge, "INVITE", URI, username, password, "cn", nc)
    result = srv.verify("INVITE", value, lambda u: password if u == username else None, 1.0)
    assert result.ok and result.username == username


# --- client edge cases -------------------------------------------------------------------


@pytest.mark.parametrize(
    "challenge",
    [
        'Digest realm="r", nonce="n", qop="auth-int"',
        'Digest realm="r", nonce="n", algorithm=SHA-512-256',
        'Digest nonce="n"',
        "Basic realm=x",
    ],
)
def test_client_refuses_what_it_cannot_answer(challenge: str) -> None:
    with pytest.raises(DigestChallengeError):
        build_authorization(challenge, "INVITE", URI, "alice", "s3cret", "c", 1)
    assert select_challenge([challenge]) is None


def test_client_picks_topmost_supported_and_checks_nc() -> None:
    md5 = 'Digest realm="r", nonce="n"'
    unsupported = 'Digest realm="r", nonce="n", algorithm=SHA-512-256'
    assert select_challenge([unsupported, md5]) == md5
    for nc in (0, 2**32):
        with pytest.raises(ValueError):
            build_authorization(md5, "INVITE", URI, "alice", "s3cret", "c", nc)


# --- no I/O ------------------------------------------------------------------------------


def test_module_imports_no_io() -> None:
    tree = ast.parse(inspect.getsource(digest))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    forbidden = {"time", "random", "secrets", "socket", "asyncio", "os", "selectors", "ssl"}
    assert imported & forbidden == set()
