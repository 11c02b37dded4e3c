"""The public API: what ``import sserelay`` offers (in the style of httpx's test of the same name).

A change to ``sserelay.__all__`` is a change to the public API. If it is intended,
update ``EXPECTED`` below in the same commit (and the README if it documents the name).
"""

from __future__ import annotations

import types

import sserelay

EXPECTED = [
    "BrokerUnavailable",
    "ConfigError",
    "InvalidChannel",
    "InvalidEvent",
    "PayloadTooLarge",
    "PublishError",
    "SchemaMissing",
    "SseRelayError",
    "__version__",
    "apresence",
    "apublish",
    "apublish_durable",
    "encode_payload",
    "mint_token",
    "presence",
    "publish",
    "publish_durable",
    "revoke",
    "validate_channel",
]


def test_all_is_pinned() -> None:
    added = sorted(set(sserelay.__all__) - set(EXPECTED))
    removed = sorted(set(EXPECTED) - set(sserelay.__all__))
    assert not added and not removed, (
        f"sserelay.__all__ changed: added {added}, removed {removed}. If that is intended, "
        "update EXPECTED in tests/test_exported_members.py (and the README if it lists them)."
    )
    assert sserelay.__all__ == EXPECTED, "keep sserelay.__all__ sorted, as EXPECTED is"


def test_all_imports_are_exported() -> None:
    """Every public name of the package is in ``__all__``, and nothing else is."""
    public = sorted(
        name
        for name, value in vars(sserelay).items()
        if (not name.startswith("_") or name == "__version__")
        # Submodules are attributes once imported, and `from __future__ import annotations`
        # leaves a name behind: neither is API.
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    )
    assert public == sorted(sserelay.__all__), (
        "names imported into sserelay/__init__.py must be listed in __all__ (or be private)"
    )


def test_every_exported_name_resolves() -> None:
    for name in sserelay.__all__:
        assert getattr(sserelay, name) is not None, name


def test_exceptions_share_one_base() -> None:
    errors = [
        value
        for value in (getattr(sserelay, name) for name in sserelay.__all__)
        if isinstance(value, type) and issubclass(value, BaseException)
    ]
    assert errors, "no exceptions exported"
    for error in errors:
        assert issubclass(error, sserelay.SseRelayError), error


def test_version() -> None:
    parts = sserelay.__version__.split(".")
    assert len(parts) >= 3 and all(p.isdigit() for p in parts[:3]), sserelay.__version__
