"""Request routing: every rule of ``routes.route``, and fuzzing with arbitrary strings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sserelay.errors import HttpError
from sserelay.http.routes import (
    MAX_QUERY_FIELDS,
    AdminRoute,
    AssetRoute,
    Endpoint,
    Route,
    StreamRoute,
    route,
)


def get(path: str, query: str = "", *, max_channels: int = 32) -> Route:
    return route("GET", path, query, max_channels=max_channels)


def refused(
    path: str, query: str = "", *, method: str = "GET", max_channels: int = 32
) -> HttpError:
    with pytest.raises(HttpError) as info:
        route(method, path, query, max_channels=max_channels)
    return info.value


# -- streams -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "channel"),
    [
        ("/events/lobby", "lobby"),
        ("/events/Lobby", "Lobby"),
        ("/events/a%20b", "a b"),
        ("/events/a+b", "a+b"),  # "+" is a space only in a query string
        ("/events/a%2Fb", "a/b"),
        ("/events/a/b", "a/b"),  # the rest of the path, slashes included
        ("/events/caf%C3%A9", "café"),
        ("/events/%F0%9F%98%80", "😀"),
        ("/events/events", "events"),  # endpoint names are reachable under /events/
        ("/events/healthz", "healthz"),
        ("/events/publish", "publish"),
        ("/events/%27%3B%20DROP%20TABLE%20x", "'; DROP TABLE x"),
        ("/lobby", "lobby"),  # sse-relay-server's path
        ("/a%2Fb", "a/b"),
        ("/caf%C3%A9", "café"),
    ],
)
def test_one_channel(path: str, channel: str) -> None:
    assert get(path) == StreamRoute((channel,), ())


def test_several_channels_in_the_query() -> None:
    assert get("/events", "channel=a&channel=b") == StreamRoute(
        ("a", "b"), (("channel", "a"), ("channel", "b"))
    )
    assert get("/events/", "channel=a") == StreamRoute(("a",), (("channel", "a"),))


def test_query_channels_are_percent_and_plus_decoded() -> None:
    route_ = get("/events", "channel=a+b&channel=caf%C3%A9&channel=x%26y")
    assert isinstance(route_, StreamRoute)
    assert route_.channels == ("a b", "café", "x&y")


def test_duplicate_channels_are_merged_in_order() -> None:
    route_ = get("/events", "channel=b&channel=a&channel=b")
    assert isinstance(route_, StreamRoute)
    assert route_.channels == ("b", "a")


def test_other_query_fields_are_kept() -> None:
    assert get("/events/lobby", "token=abc&x=&y") == StreamRoute(
        ("lobby",), (("token", "abc"), ("x", ""), ("y", ""))
    )
    route_ = get("/events", "token=1&channel=a")
    assert isinstance(route_, StreamRoute)
    assert route_.channels == ("a",)


def test_channel_limit() -> None:
    query = "&".join(f"channel=c{i}" for i in range(3))
    assert isinstance(get("/events", query, max_channels=3), StreamRoute)
    error = refused("/events", query, max_channels=2)
    assert (error.status, error.reason) == (400, "3 channels requested; at most 2 per stream")


def test_the_limit_counts_names_as_asked() -> None:
    # Checked before duplicates are merged: the request is refused as sent.
    error = refused("/events", "channel=a&channel=a&channel=a", max_channels=2)
    assert error.status == 400


# -- endpoints -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["healthz", "metrics"])
def test_endpoints(name: str) -> None:
    assert get(f"/{name}") == Endpoint(name)
    assert get(f"/{name}", "verbose=1&channel=x") == Endpoint(name)


def test_the_operators_page_and_its_stream() -> None:
    assert get("/admin") == AdminRoute(False)
    assert get("/admin", "format=json") == AdminRoute(False, (("format", "json"),))
    assert get("/admin/stream") == AdminRoute(True)
    # A channel named "admin" is under /events/ (the legacy GET /{channel} no longer reaches it).
    assert get("/events/admin") == StreamRoute(("admin",))
    assert refused("/admin/other").status == 404
    assert refused("/admin", method="POST").status == 405


# -- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD", "PATCH", "get", "CONNECT"])
def test_only_get(method: str) -> None:
    error = refused("/events/lobby", method=method)
    assert error.status == 405
    assert error.reason == f"method {method!r} not allowed; use GET"
    assert error.headers == (("Allow", "GET, OPTIONS"),)


def test_method_is_checked_before_anything_else_but_the_target() -> None:
    assert refused("/a/b/c", "%ff", method="POST").status == 405
    assert refused("*", method="POST").status == 400


@pytest.mark.parametrize("target", ["", "*", "lobby", "http://example.com/lobby", "events/x"])
def test_target_must_be_an_absolute_path(target: str) -> None:
    error = refused(target)
    assert (error.status, error.reason) == (400, "request target must be an absolute path")


@pytest.mark.parametrize(
    ("path", "query", "status", "reason"),
    [
        ("/", "", 404, "no channel in the path; use /events/{channel}"),
        ("/a/b", "", 404, "no such endpoint '/a/b'; use /events/{channel}"),
        ("/healthz/", "", 404, "no such endpoint '/healthz/'; use /events/{channel}"),
        ("/events", "", 400, "no channel given; use /events/{channel} or ?channel=NAME"),
        ("/events", "chan=a", 400, "no channel given; use /events/{channel} or ?channel=NAME"),
        ("/events/", "", 400, "no channel given; use /events/{channel} or ?channel=NAME"),
        ("/events", "channel=", 400, "invalid channel '': channel name is empty"),
        ("/publish", "", 405, "method 'GET' not allowed; use POST"),
        ("/%65vents", "", 404, "'events' is an endpoint name; use /events/events"),
        ("/events/%ff", "", 400, "channel name is not valid UTF-8 after percent-decoding"),
        ("/%C3", "", 400, "channel name is not valid UTF-8 after percent-decoding"),
        ("/events", "channel=%ff", 400, "query string is not valid UTF-8 after percent-decoding"),
        ("/events/lobby", "x=%ff", 400, "query string is not valid UTF-8 after percent-decoding"),
        (
            "/events/a%00b",
            "",
            400,
            "invalid channel 'a\\x00b': channel name contains a NUL character",
        ),
        (
            "/events/a%0Ab",
            "",
            400,
            "invalid channel 'a\\nb': channel name contains a control character",
        ),
        (
            "/events/sserelay.probe",
            "",
            400,
            "invalid channel 'sserelay.probe': channel names starting with 'sserelay.' are "
            "reserved",
        ),
        (
            "/events/" + "x" * 64,
            "",
            400,
            f"invalid channel {'x' * 64!r}: channel name is 64 bytes; PostgreSQL allows at most 63",
        ),
    ],
)
def test_refusals(path: str, query: str, status: int, reason: str) -> None:
    error = refused(path, query)
    assert (error.status, error.reason) == (status, reason)
    assert str(error) == reason


def test_one_bad_channel_refuses_the_stream() -> None:
    assert refused("/events", "channel=ok&channel=").status == 400


def test_long_names_are_cut_in_the_reason() -> None:
    error = refused("/events/" + "y" * 5000)
    assert error.status == 400
    assert len(error.reason) < 200


def test_query_field_limit() -> None:
    query = "&".join(["x=1"] * MAX_QUERY_FIELDS)
    assert isinstance(get("/events/lobby", query), StreamRoute)
    error = refused("/events/lobby", query + "&x=1")
    assert (error.status, error.reason) == (400, "query string has more than 256 fields")


# -- the browser client's files -------------------------------------------------------


def test_the_client_files() -> None:
    assert get("/sserelay.js") == AssetRoute("sserelay.js", ())
    classic = AssetRoute("sserelay.classic.js", (("v", "abc"),))
    assert get("/sserelay.classic.js", "v=abc") == classic
    assert refused("/sserelay.js", method="POST").status == 405
    # Other "sserelay." names stay channel names, which the reserved prefix refuses.
    assert refused("/sserelay.mjs").status == 400
    assert refused("/events/sserelay.js").status == 400


# -- fuzzing -------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "/",
        "/events",
        "/events/",
        "/healthz",
        "/metrics",
        "/publish",
        "%",
        "%2F",
        "%ff",
        "%C3",
        "%00",
        "%0A",
        "%0d",
        "%e2%80%a8",
        "?",
        "&",
        "=",
        ";",
        "+",
        "channel=",
        "channel",
        "sserelay.",
        "\n",
        "\r\n",
        "\x00",
        "\x85",
        "\u2028",
        "é",
        "\ud800",
        " ",
    ]
)
fuzz_text = st.lists(
    st.one_of(_PIECES, st.text(st.characters(exclude_categories=()), max_size=5)), max_size=20
).map("".join)
methods = st.one_of(st.sampled_from(["GET", "POST", "OPTIONS", "get", ""]), fuzz_text)


@settings(deadline=None)
@given(
    method=methods,
    path=st.one_of(fuzz_text, fuzz_text.map(lambda s: "/" + s)),
    query=fuzz_text,
    max_channels=st.integers(min_value=1, max_value=40),
)
def test_any_request(method: str, path: str, query: str, max_channels: int) -> None:
    try:
        result = route(method, path, query, max_channels=max_channels)
    except HttpError as error:
        assert 400 <= error.status < 500
        assert error.reason and error.reason == str(error)
        assert len(error.reason.splitlines()) == 1, error.reason  # no line break of any kind
        assert all("\r" not in value and "\n" not in value for _, value in error.headers), (
            error.headers
        )
        return
    assert method == "GET"
    assert isinstance(result, StreamRoute | Endpoint | AssetRoute)
    if isinstance(result, StreamRoute):
        assert 1 <= len(result.channels) <= max_channels
        assert len(set(result.channels)) == len(result.channels)
