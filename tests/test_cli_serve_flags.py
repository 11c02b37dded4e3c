"""Every ``serve`` flag lands in the relay's settings, over the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sserelay import cli
from sserelay.cli.serve import serve_settings
from sserelay.config import Settings
from sserelay.errors import ConfigError

SECRET = "k" * 40


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("SSERELAY_") or name in ("DATABASE_URL", "REDIS_URL"):
            monkeypatch.delenv(name)
    return monkeypatch


def settings_of(*argv: str) -> Settings:
    return serve_settings(cli.build_parser().parse_args(["serve", *argv]))


def test_security_and_limit_flags(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = settings_of(
        "--jwt-secret", SECRET,
        "--public-channel", "news-*",
        "--public-channel", "lobby",
        "--token-cookie", "jwt",
        "--max-streams", "500",
        "--max-streams-per-client", "10",
        "--max-streams-per-subject", "0",
        "--max-stream-lifetime", "15m",
        "--max-publish-bytes", "2048",
        "--publish-rate", "2.5",
        "--publish-burst", "7",
        "--max-distinct-channels", "300",
        "--max-channels-per-client", "20",
        "--forwarded-allow-ips", "10.0.0.1, 10.0.0.2",
        "--drain-timeout", "2.5",
    )  # fmt: skip
    expected = {
        "jwt_secret": SECRET,
        "public_channels": ("news-*", "lobby"),
        "token_cookie": "jwt",
        "max_streams": 500,
        "max_streams_per_client": 10,
        "max_streams_per_subject": 0,
        "max_stream_lifetime": 900.0,
        "max_publish_bytes": 2048,
        "publish_rate": 2.5,
        "publish_burst": 7,
        "max_distinct_channels": 300,
        "max_channels_per_client": 20,
        "forwarded_allow_ips": ("10.0.0.1", "10.0.0.2"),
        "drain_timeout": 2.5,
    }
    assert {name: getattr(settings, name) for name in expected} == expected


def test_flags_win_over_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SSERELAY_MAX_STREAMS", "100")
    clean_env.setenv("SSERELAY_MAX_STREAM_LIFETIME", "1h")
    clean_env.setenv("SSERELAY_PUBLISH_RATE", "9")
    from_env = settings_of()
    assert (from_env.max_streams, from_env.max_stream_lifetime) == (100, 3600.0)
    assert from_env.publish_rate == 9.0
    assert settings_of("--max-streams", "7").max_streams == 7


def test_public_key_flag(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert settings_of("--jwt-public-key", str(pem)).jwt_public_key == pem


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-streams", "0"], "max_streams must be at least 1"),
        (["--max-streams-per-client", "-1"], "max_streams_per_client must be 0"),
        (["--publish-rate", "0"], "publish_rate must be a positive number"),
        (["--max-publish-bytes", "0"], "max_publish_bytes must be at least 1"),
    ],
)
def test_bad_limits_are_refused(
    clean_env: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_of(*argv)


def test_the_operators_page_flags(clean_env: pytest.MonkeyPatch) -> None:
    assert settings_of().admin is False
    clean_env.setenv("SSERELAY_ADMIN_PASSWORD", "correct horse battery")
    settings = settings_of("--admin", "--admin-user", "ops")
    assert (settings.admin, settings.admin_user) == (True, "ops")
    assert settings.admin_password == "correct horse battery"
    clean_env.delenv("SSERELAY_ADMIN_PASSWORD")
    with pytest.raises(ConfigError, match="admin needs a way in"):
        settings_of("--admin")


def test_presence_flags_and_environment(clean_env: pytest.MonkeyPatch) -> None:
    settings = settings_of(
        "--presence", "room-*,lobby", "--presence", "chat-*", "--presence-events"
    )
    assert settings.presence == ("room-*", "lobby", "chat-*")
    assert settings.presence_events is True
    assert settings_of("--presence-lease", "1m").presence_lease == 60
    clean_env.setenv("SSERELAY_PRESENCE", "room-*, desk-*")
    clean_env.setenv("SSERELAY_PRESENCE_EVENTS", "yes")
    clean_env.setenv("SSERELAY_PRESENCE_MAX_EVENTS", "5")
    settings = settings_of()
    assert settings.presence == ("room-*", "desk-*")
    assert settings.presence_events is True and settings.presence_max_events == 5
    assert settings_of("--presence", "x").presence == ("x",)  # the flag wins


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--presence", "bad\nname"], "presence: "),
        (["--presence-lease", "2s"], "presence_lease .* must be at least 3 times"),
    ],
)
def test_bad_presence_settings_are_refused(
    clean_env: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_of(*argv)
    with pytest.raises(ConfigError, match="presence_max_events must be at least 1"):
        Settings(presence_max_events=0)
    with pytest.raises(ConfigError, match="presence_linger must be 0 or more"):
        Settings(presence_linger=-1)
