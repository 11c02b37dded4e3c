"""Settings: the environment variables, their parsing, and ``Settings`` validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sserelay.config import Settings, load_settings, parse_origins, settings_from_env
from sserelay.errors import ConfigError, SseRelayError

# -- the environment -----------------------------------------------------------------


def test_empty_environment_sets_nothing() -> None:
    assert settings_from_env({}) == {}
    assert Settings() == Settings(**settings_from_env({}))  # type: ignore[arg-type]  # empty


def test_sse_relay_server_names() -> None:
    env = {
        "DATABASE_URL": "postgresql://app@db/app",
        "ALLOWED_ORIGINS": "https://a.example.com, https://b.example.com/",
        "LOG_LEVEL": "debug",
    }
    assert settings_from_env(env) == {
        "dsn": "postgresql://app@db/app",
        "allowed_origins": ("https://a.example.com", "https://b.example.com"),
        "log_level": "DEBUG",
    }


def test_sserelay_variables() -> None:
    env = {
        "SSERELAY_LISTEN_DSN": "postgresql://direct@db/app",
        "SSERELAY_HOST": "0.0.0.0",
        "SSERELAY_DATA_DIR": "/var/lib/sserelay",
        "SSERELAY_PORT": "9000",
        "SSERELAY_WORKERS": "4",
        "SSERELAY_RETRY_MS": "0",
        "SSERELAY_MAX_CLIENT_BUFFER": "1024",
        "SSERELAY_MAX_CHANNELS": "8",
        "SSERELAY_MAX_HEADER_BYTES": "4096",
        "SSERELAY_HEARTBEAT": "2.5",
        "SSERELAY_HEADER_TIMEOUT": "3",
        "SSERELAY_PROBE_INTERVAL": "0.5",
        "SSERELAY_SHUTDOWN_TIMEOUT": "1e1",
    }
    values = settings_from_env(env)
    assert values == {
        "listen_dsn": "postgresql://direct@db/app",
        "host": "0.0.0.0",
        "data_dir": Path("/var/lib/sserelay"),
        "port": 9000,
        "workers": 4,
        "retry_ms": 0,
        "max_client_buffer": 1024,
        "max_channels_per_stream": 8,
        "max_header_bytes": 4096,
        "heartbeat": 2.5,
        "header_timeout": 3.0,
        "probe_interval": 0.5,
        "shutdown_timeout": 10.0,
    }
    settings = Settings(**values)  # type: ignore[arg-type]  # what load_settings does
    assert settings.listener_dsn == "postgresql://direct@db/app"


def test_empty_values_are_unset() -> None:
    env = {name: "" for name in ("DATABASE_URL", "ALLOWED_ORIGINS", "LOG_LEVEL", "SSERELAY_PORT")}
    assert settings_from_env(env) == {}


def test_other_variables_are_ignored() -> None:
    assert settings_from_env({"PORT": "1", "SSERELAY_UNKNOWN": "x", "database_url": "x"}) == {}


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("SSERELAY_PORT", "http", "SSERELAY_PORT='http' is not a valid int"),
        ("SSERELAY_PORT", "80.5", "SSERELAY_PORT='80.5' is not a valid int"),
        ("SSERELAY_WORKERS", "two", "SSERELAY_WORKERS='two' is not a valid int"),
        ("SSERELAY_RETRY_MS", "1s", "SSERELAY_RETRY_MS='1s' is not a valid int"),
        ("SSERELAY_MAX_CLIENT_BUFFER", "256k", "SSERELAY_MAX_CLIENT_BUFFER='256k' is not"),
        ("SSERELAY_MAX_CHANNELS", "many", "SSERELAY_MAX_CHANNELS='many' is not a valid int"),
        ("SSERELAY_MAX_HEADER_BYTES", "8 KiB", "SSERELAY_MAX_HEADER_BYTES='8 KiB' is not"),
        ("SSERELAY_HEARTBEAT", "15s", "SSERELAY_HEARTBEAT='15s' is not a valid float"),
        ("SSERELAY_HEADER_TIMEOUT", "ten", "SSERELAY_HEADER_TIMEOUT='ten' is not a valid float"),
        ("SSERELAY_PROBE_INTERVAL", "5,0", "SSERELAY_PROBE_INTERVAL='5,0' is not a valid float"),
        ("SSERELAY_SHUTDOWN_TIMEOUT", "-", "SSERELAY_SHUTDOWN_TIMEOUT='-' is not a valid float"),
        ("ALLOWED_ORIGINS", "example.com", "ALLOWED_ORIGINS entry 'example.com' is not an origin"),
        ("ALLOWED_ORIGINS", "https://ok.com,bad", "ALLOWED_ORIGINS entry 'bad' is not an origin"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL='LOUD' is not a log level"),
        ("LOG_LEVEL", "info please", "LOG_LEVEL='info please' is not a log level"),
        ("SSERELAY_MAX_STREAMS", "10k", "SSERELAY_MAX_STREAMS='10k' is not a valid int"),
        ("SSERELAY_MAX_STREAMS_PER_CLIENT", "x", "SSERELAY_MAX_STREAMS_PER_CLIENT='x' is not"),
        ("SSERELAY_MAX_STREAMS_PER_SUBJECT", "1.5", "SSERELAY_MAX_STREAMS_PER_SUBJECT='1.5'"),
        ("SSERELAY_MAX_PUBLISH_BYTES", "64KiB", "SSERELAY_MAX_PUBLISH_BYTES='64KiB' is not"),
        ("SSERELAY_PUBLISH_BURST", "lots", "SSERELAY_PUBLISH_BURST='lots' is not a valid int"),
        ("SSERELAY_PUBLISH_RATE", "50/s", "SSERELAY_PUBLISH_RATE='50/s' is not a valid float"),
        ("SSERELAY_MAX_STREAM_LIFETIME", "soon", "SSERELAY_MAX_STREAM_LIFETIME"),
        ("SSERELAY_RETENTION_AGE", "-1d", "SSERELAY_RETENTION_AGE"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_env({var: value})
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, SseRelayError)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SSERELAY_MAX_STREAMS": "0"}, "max_streams must be at least 1"),
        ({"SSERELAY_MAX_STREAMS_PER_CLIENT": "-1"}, "max_streams_per_client must be 0"),
        ({"SSERELAY_MAX_STREAMS_PER_SUBJECT": "-2"}, "max_streams_per_subject must be 0"),
        ({"SSERELAY_PUBLISH_RATE": "0"}, "publish_rate must be a positive number"),
        ({"SSERELAY_PUBLISH_RATE": "inf"}, "publish_rate must be a positive number"),
        ({"SSERELAY_PUBLISH_BURST": "0"}, "publish_burst must be at least 1"),
        ({"SSERELAY_MAX_PUBLISH_BYTES": "0"}, "max_publish_bytes must be at least 1"),
        ({"SSERELAY_PUBLIC_CHANNELS": "ok, bad\x01"}, "contains a control character"),
    ],
)
def test_out_of_range_limits_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**settings_from_env(env))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ("*", ("*",)),
        ("https://a.com", ("https://a.com",)),
        ("https://a.com/", ("https://a.com",)),
        ("https://a.com,https://b.com:8443", ("https://a.com", "https://b.com:8443")),
        ("https://a.com https://b.com", ("https://a.com", "https://b.com")),
        (" https://a.com ,, http://localhost:3000 ", ("https://a.com", "http://localhost:3000")),
        (",", ()),
    ],
)
def test_parse_origins(value: str, origins: tuple[str, ...]) -> None:
    assert parse_origins(value) == origins


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "ERROR", "critical", " info "])
def test_log_levels(level: str) -> None:
    assert settings_from_env({"LOG_LEVEL": level}) == {"log_level": level.strip().upper()}


# -- Settings ------------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings()
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8001, 1)
    assert (settings.dsn, settings.listen_dsn, settings.listener_dsn) == (None, None, None)
    assert (settings.heartbeat, settings.retry_ms) == (15.0, 2000)
    assert settings.max_client_buffer == 262144
    assert (settings.max_channels_per_stream, settings.max_header_bytes) == (32, 8192)
    assert (settings.header_timeout, settings.probe_interval, settings.shutdown_timeout) == (
        10.0,
        5.0,
        3.0,
    )
    assert (settings.allowed_origins, settings.log_level) == ((), "INFO")


def test_listener_dsn_defaults_to_dsn() -> None:
    assert Settings(dsn="postgresql://a").listener_dsn == "postgresql://a"
    assert Settings(dsn="postgresql://a", listen_dsn="postgresql://b").listener_dsn == (
        "postgresql://b"
    )


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]  # frozen: that is what is tested


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"port": -1}, "port must be between 0 and 65535, not -1"),
        ({"port": 65536}, "port must be between 0 and 65535, not 65536"),
        ({"workers": 0}, "workers must be at least 1, not 0"),
        ({"heartbeat": 0}, "heartbeat must be a positive number of seconds, not 0"),
        ({"heartbeat": float("nan")}, "heartbeat must be a positive number of seconds, not nan"),
        ({"header_timeout": -1.0}, "header_timeout must be a positive number of seconds"),
        ({"probe_interval": 0.0}, "probe_interval must be a positive number of seconds"),
        ({"probe_timeout": 0}, "probe_timeout must be a positive number of seconds"),
        ({"reconnect_min": 0}, "reconnect_min must be a positive number of seconds"),
        ({"reconnect_max": -5}, "reconnect_max must be a positive number of seconds"),
        ({"shutdown_timeout": 0}, "shutdown_timeout must be a positive number of seconds"),
        ({"max_client_buffer": 0}, "max_client_buffer must be at least 1, not 0"),
        ({"max_channels_per_stream": 0}, "max_channels_per_stream must be at least 1, not 0"),
        ({"max_header_bytes": -1}, "max_header_bytes must be at least 1, not -1"),
        ({"retry_ms": -1}, "retry_ms must not be negative, not -1"),
        (
            {"reconnect_min": 5.0, "reconnect_max": 1.0},
            "reconnect_max must not be smaller than reconnect_min",
        ),
        ({"log_level": "LOUD"}, "log_level='LOUD' is not a log level"),
        ({"log_level": "info"}, "log_level='info' is not a log level"),
    ],
)
def test_validation(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(**changes)  # type: ignore[arg-type]  # values of the right type
    assert str(info.value).startswith(message), str(info.value)
    with pytest.raises(ConfigError):
        Settings().replace(**changes)


def test_edge_values_are_accepted() -> None:
    Settings(port=0, workers=1, retry_ms=0, reconnect_min=1.0, reconnect_max=1.0)
    Settings(port=65535, max_client_buffer=1, max_channels_per_stream=1, max_header_bytes=1)


def test_replace() -> None:
    settings = Settings().replace(port=9000, heartbeat=1.0)
    assert (settings.port, settings.heartbeat, settings.host) == (9000, 1.0, "127.0.0.1")


# -- load_settings: flags over environment over defaults -----------------------------


def test_load_settings_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSERELAY_PORT", "9000")
    monkeypatch.setenv("SSERELAY_WORKERS", "3")
    monkeypatch.setenv("DATABASE_URL", "postgresql://env")
    settings = load_settings(port=9100, workers=None, dsn=None, host=None)
    assert (settings.port, settings.workers, settings.dsn) == (9100, 3, "postgresql://env")
    assert settings.host == "127.0.0.1"


def test_load_settings_refuses_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSERELAY_PORT", "70000")
    with pytest.raises(ConfigError, match="port must be between 0 and 65535, not 70000"):
        load_settings()
    monkeypatch.setenv("SSERELAY_PORT", "x")
    with pytest.raises(ConfigError, match="SSERELAY_PORT='x'"):
        load_settings()


def test_load_settings_unknown_override() -> None:
    with pytest.raises(ConfigError, match="colour"):
        load_settings(colour="blue")


# -- the operator's page ----------------------------------------------------------------

SECRET = "a-secret-of-the-config-tests-0123456789abcdef"


def test_the_operators_page_from_the_environment() -> None:
    env = {
        "SSERELAY_ADMIN": "yes",
        "SSERELAY_ADMIN_USER": "ops",
        "SSERELAY_ADMIN_PASSWORD": "correct horse battery",
        "SSERELAY_ADMIN_INTERVAL": "0.5",
    }
    values = settings_from_env(env)
    assert values == {
        "admin": True,
        "admin_user": "ops",
        "admin_password": "correct horse battery",
        "admin_interval": 0.5,
    }
    settings = Settings(**values)  # type: ignore[arg-type]  # parsed above
    assert "correct horse" not in repr(settings)
    assert Settings().admin is False and Settings().admin_interval == 2.0
    with pytest.raises(ConfigError, match="SSERELAY_ADMIN='maybe' is not a boolean"):
        settings_from_env({"SSERELAY_ADMIN": "maybe"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"admin": True}, "admin needs a way in: admin_user and admin_password"),
        ({"admin_user": "ops"}, "set admin_user and admin_password together"),
        ({"admin_password": "correct horse battery"}, "set admin_user and admin_password"),
        ({"admin_user": "o:ps", "admin_password": "x" * 12}, "admin_user must be non-empty"),
        ({"admin_user": "", "admin_password": "x" * 12}, "admin_user must be non-empty"),
        ({"admin_user": "ops", "admin_password": "short"}, "admin_password must be at least 12"),
        ({"admin_interval": 0}, "admin_interval must be a positive number of seconds"),
    ],
)
def test_the_operators_page_settings_are_checked(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**changes)  # type: ignore[arg-type]  # values of the right type


def test_the_operators_page_with_a_token_key_or_a_password() -> None:
    assert Settings(admin=True, jwt_secret=SECRET).admin
    assert Settings(admin=True, admin_user="ops", admin_password="x" * 12).admin
