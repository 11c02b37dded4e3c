"""The operator's page, pure logic: the ring of stream endings, the snapshot's rates and
size, the table of relays and its view, who may see the page, and the HTML's escaping."""

from __future__ import annotations

import base64
import json

import pytest

from sserelay import mint_token
from sserelay.access.operator import COOKIE, COOKIE_TTL, OperatorAuth
from sserelay.access.tokens import TokenVerifier
from sserelay.admin import page
from sserelay.admin.peers import MAX_RELAYS, Peers
from sserelay.admin.snapshot import SNAPSHOT_BYTES, VERSION, Sampler, compact_json, fit, top
from sserelay.core.endings import REASONS, Ending, Endings
from sserelay.errors import HttpError
from sserelay.wire.message import Message

SECRET = "a-secret-of-the-admin-unit-tests-0123456789"


# -- the ring ---------------------------------------------------------------------------


def test_the_ring_keeps_the_newest_endings_with_their_reasons() -> None:
    ring = Endings(size=3)
    for i, reason in enumerate(REASONS):
        ring.record(reason, [f"room-{i}"], subject=f"u{i}", client="10.0.0.1", at=100.0 + i)
    assert len(ring) == 3
    assert [e.reason for e in ring.last()] == list(REASONS[-3:])
    assert [e.channels for e in ring.last(2)] == [("room-4",), ("room-5",)]
    assert ring.last(1)[0].subject == "u5"
    assert ring.counts == dict.fromkeys(REASONS, 1)  # counted since start, not only held


def test_the_ring_accepts_exactly_the_documented_reasons() -> None:
    assert REASONS == ("expired", "revoked", "slow", "limit", "client_gone", "shutdown")
    ring = Endings()
    ring.record("revoked", ["a"], subject="u42")  # made by the revocation feature
    with pytest.raises(ValueError, match="unknown ending reason 'gone'"):
        ring.record("gone", ["a"])
    with pytest.raises(ValueError):
        Endings(size=0)


def test_endings_merge_once_in_order() -> None:
    theirs = Endings()
    for i in range(5):
        theirs.record("slow", [f"c{i}"], at=float(i))
    mine = Endings(size=10)
    assert mine.merge(reversed(theirs.last(3))) == 3
    assert mine.merge(theirs.last()) == 0  # older than the newest held: already seen or lost
    theirs.record("expired", ["c5"])
    assert mine.merge(theirs.last()) == 1
    assert [e.channels[0] for e in mine.last()] == ["c2", "c3", "c4", "c5"]


def test_an_ending_round_trips_as_json_and_bad_ones_are_refused() -> None:
    ending = Ending(7, 1700000000.123456, "limit", ("a", "b"), None, "::1")
    back = Ending.from_compact(json.loads(json.dumps(ending.compact())))
    assert back == Ending(7, 1700000000.123, "limit", ("a", "b"), None, "::1")
    for bad in ([1, 2], "text", [1, 2.0, "nope", [], None, None], None, [1, "x", "slow", [], 1, 2]):
        with pytest.raises(ValueError):
            Ending.from_compact(bad)


# -- the snapshot -----------------------------------------------------------------------


def test_rates_come_from_the_difference_of_two_samples() -> None:
    sampler = Sampler()
    rates, channels = sampler.rates(10.0, {"deliveries": 100, "slow": 3}, {"a": 5, "b": 1})
    assert rates == {"deliveries": 0.0, "slow": 0.0} and channels == []
    rates, channels = sampler.rates(12.0, {"deliveries": 300, "slow": 3}, {"a": 25, "b": 2, "c": 4})
    assert rates == {"deliveries": 100.0, "slow": 0.0}
    assert channels == [["a", 10.0], ["c", 2.0], ["b", 0.5]]
    # A counter that went back (a channel that left and came back) counts from zero.
    rates, channels = sampler.rates(14.0, {"deliveries": 50, "slow": 4}, {"a": 4})
    assert rates == {"deliveries": 0, "slow": 0.5} and channels == [["a", 2.0]]


def test_top_is_largest_first_ties_by_name_and_leaves_out_zeros() -> None:
    assert top([("b", 2), ("a", 2), ("c", 9), ("z", 0)], 3) == [["c", 9], ["a", 2], ["b", 2]]
    assert top(((f"c{i}", i) for i in range(100)), 2) == [["c99", 99], ["c98", 98]]


def _big_snapshot() -> dict:
    long = "x" * 55
    return {
        "v": VERSION,
        "relay": "host:1",
        "top_subscribers": [[f"{long}{i:02d}", 1000 + i] for i in range(10)],
        "top_rates": [[f"{long}{i:02d}", 10.5] for i in range(10)],
        "listener": {"last_error": "e" * 200},
        "capture": {"error": "c" * 300},
    }


def test_a_snapshot_fits_in_one_notify_keeping_the_newest_endings() -> None:
    ring = Endings()
    for i in range(300):
        ring.record("client_gone", [f"{'é' * 30}{i}"] * 3, subject="s" * 60, client="10.1.2.3")
    snapshot = _big_snapshot()
    text = fit(snapshot, ring.last())
    assert len(text.encode()) <= SNAPSHOT_BYTES
    carried = [Ending.from_compact(e) for e in json.loads(text)["endings"]]
    assert 0 < len(carried) < 40 and carried[-1].seq == 300  # the newest kept
    assert [e.seq for e in carried] == list(range(301 - len(carried), 301))
    # As the bus sends it: an envelope under PostgreSQL's limit.
    envelope = Message("sserelay.admin", snapshot, None, None, None, True).envelope(7999, "NOTIFY")
    assert json.loads(envelope)["data"]["relay"] == "host:1"


def test_a_snapshot_too_large_even_without_endings_is_cut_down() -> None:
    snapshot = _big_snapshot()
    text = fit(snapshot, [], limit=400)
    assert len(text.encode()) <= 400
    cut = json.loads(text)
    assert cut["listener"]["last_error"] is None and cut["top_subscribers"] == []
    assert fit(_big_snapshot(), [], limit=1200).count("x" * 55) == 4  # two of each list
    with pytest.raises(ValueError, match="cannot fit"):
        fit({"relay": "r" * 500}, [], limit=100)


# -- the relays -------------------------------------------------------------------------


def _payload(relay: str, streams: int = 1, endings: list | None = None, **extra: object) -> str:
    snapshot = {"v": VERSION, "relay": relay, "streams": streams, "channels": 1, **extra}
    snapshot["endings"] = endings or []
    return compact_json({"data": snapshot})


def test_peers_keep_the_latest_snapshot_of_each_relay_and_forget_the_silent() -> None:
    peers = Peers("me:1", expiry=10.0)
    assert peers.receive(_payload("b:2", streams=3), now=0.0) == "b:2"
    assert peers.receive(_payload("b:2", streams=5), now=4.0) == "b:2"
    assert peers.receive(_payload("c:3"), now=8.0) == "c:3"
    peers.own({"v": VERSION, "relay": "me:1", "streams": 7}, now=8.0)
    assert [(r["relay"], r["streams"]) for r in peers.relays()] == [
        ("b:2", 5),
        ("c:3", 1),
        ("me:1", 7),
    ]
    assert peers.expire(now=14.0) == []
    assert peers.expire(now=14.5) == ["b:2"]  # last heard at 4
    assert [r["relay"] for r in peers.relays()] == ["c:3", "me:1"]


def test_our_own_echo_and_unreadable_messages_change_nothing() -> None:
    peers = Peers("me:1", expiry=10.0)
    peers.own({"v": VERSION, "relay": "me:1", "streams": 2}, now=0.0)
    assert peers.receive(_payload("me:1", streams=99), now=1.0) == "me:1"
    assert peers.relays()[0]["streams"] == 2
    bad = [
        "not json",
        '{"data": 1}',
        "[]",
        compact_json({"data": {"v": VERSION + 1, "relay": "x"}}),
        compact_json({"data": {"v": VERSION, "relay": "x" * 500}}),
        _payload("y:1", endings=[[1, 2.0, "nope", [], None, None]]),
    ]
    for payload in bad:
        assert peers.receive(payload, now=1.0) is None
    assert peers.unreadable == len(bad) and len(peers.relays()) == 1


def test_the_table_of_relays_is_bounded() -> None:
    peers = Peers("me:1", expiry=10.0)
    for i in range(MAX_RELAYS + 5):
        peers.receive(_payload(f"r:{i}"), now=0.0)
    assert len(peers.relays()) == MAX_RELAYS and peers.unreadable == 5


def test_the_view_merges_every_relay_newest_ending_first() -> None:
    peers = Peers("me:1", expiry=10.0)
    mine = Endings()
    mine.record("slow", ["a"], subject="alice", client="10.0.0.1", at=50.0)
    theirs = Endings()
    theirs.record("expired", ["a"], subject="bob", at=60.0)
    theirs.record("client_gone", ["b"], at=40.0)
    peers.own(
        {"relay": "me:1", "streams": 2, "rates": {"deliveries": 1.5},
         "top_subscribers": [["a", 2]], "top_rates": [["a", 1.0]]},
        now=0.0,
    )  # fmt: skip
    endings = [e.compact() for e in theirs.last()]
    peers.receive(
        _payload("b:2", streams=3, endings=endings, rates={"deliveries": 2.0},
                 top_subscribers=[["a", 1], ["b", 2]], top_rates=[["b", 3.0]]),
        now=0.0,
    )  # fmt: skip
    view = peers.view(mine.last(), now=70.0)
    assert view["totals"] == {"streams": 5, "channels": 1}
    assert view["rates"] == {"deliveries": 3.5}
    assert view["top_subscribers"] == [["a", 3], ["b", 2]]
    assert view["top_rates"] == [["b", 3.0], ["a", 1.0]]
    assert view["ended"] == dict.fromkeys(REASONS, 0)  # the snapshots above counted none
    assert [(e[0], e[2], e[4]) for e in view["endings"]] == [
        ("b:2", "expired", "bob"),
        ("me:1", "slow", "alice"),
        ("b:2", "client_gone", None),
    ]
    assert len(peers.view(mine.last(), now=70.0, limit=1)["endings"]) == 1


# -- who may see it ---------------------------------------------------------------------


def _basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_token_and_cookie_admit_and_nothing_else_does() -> None:
    auth = OperatorAuth("ops", "correct horse battery", TokenVerifier(SECRET), SECRET)
    assert auth.check(_basic("ops", "correct horse battery"), ()) == "basic"
    admin = mint_token(SECRET, admin=True, ttl=60)
    assert auth.check({"authorization": f"Bearer {admin}"}, ()) == "token"
    assert auth.check({}, [("token", admin)]) == "token"
    assert "; Secure" in auth.set_cookie(secure=True) and "Secure" not in auth.set_cookie()
    cookie = auth.set_cookie().split(";")[0]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in auth.set_cookie()
    assert auth.check({"cookie": f"other=1; {cookie}"}, ()) == "cookie"
    refusals = [
        ({}, ()),
        (_basic("ops", "wrong password here"), ()),
        (_basic("root", "correct horse battery"), ()),
        ({"authorization": "Basic !!!"}, ()),
        ({"authorization": "Bearer not-a-token"}, ()),
        ({"cookie": f"{COOKIE}=99999999999.deadbeef"}, ()),
        ({"cookie": f"{COOKIE}=1.x"}, ()),
    ]
    for headers, query in refusals:
        with pytest.raises(HttpError) as refused:
            auth.check(headers, query)
        assert refused.value.status == 401, headers
        assert dict(refused.value.headers)["WWW-Authenticate"].startswith('Basic realm="sserelay')
    with pytest.raises(HttpError) as forbidden:
        auth.check({"authorization": f"Bearer {mint_token(SECRET, subscribe=['a'])}"}, ())
    assert forbidden.value.status == 403


def test_the_cookie_expires_and_is_shared_by_relays_with_the_same_secrets() -> None:
    one = OperatorAuth(None, None, TokenVerifier(SECRET), SECRET)
    other = OperatorAuth(None, None, TokenVerifier(SECRET), SECRET)
    stranger = OperatorAuth(None, None, TokenVerifier(SECRET), SECRET + "-other")
    header = one.set_cookie(now=1000.0).split(";")[0]
    assert other.cookie_valid(header, now=1000.0 + COOKIE_TTL - 1)
    assert not other.cookie_valid(header, now=1000.0 + COOKIE_TTL)
    assert not stranger.cookie_valid(header, now=1000.0)
    with pytest.raises(HttpError) as refused:
        one.check({}, ())
    assert dict(refused.value.headers)["WWW-Authenticate"] == "Bearer"


# -- the HTML ---------------------------------------------------------------------------


def test_the_page_escapes_everything_a_client_chose() -> None:
    evil = "<script>alert(1)</script>"
    view = {
        "at": 100.0,
        "relay": "me:1",
        "relays": [{"relay": "me:1", "streams": 1, "started": 50.0, "limits": {"max_streams": 5}}],
        "totals": {"streams": 1},
        "rates": {},
        "top_subscribers": [[evil, 1]],
        "top_rates": [],
        "endings": [["me:1", 99.0, "slow", [evil], evil, "10.0.0.1"]],
        "ended": {"slow": 1, "client_gone": 12345},
    }
    html = page.page(view, "n0nce")
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script") == 1 and "<script nonce='n0nce'>" in html
    assert "<tr data-ending>" in html and "max_streams" in html
    assert "client_gone</span> 12,345" in html
    assert "No stream has ended yet." in page.main({**view, "endings": []})
