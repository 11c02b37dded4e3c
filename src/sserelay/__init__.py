"""sserelay: live events from PostgreSQL to browsers over Server-Sent Events."""

from __future__ import annotations

from .access.tokens import mint_token
from .bus.presence import apresence, presence
from .bus.publish import apublish, apublish_durable, encode_payload, publish, publish_durable
from .bus.revocations import revoke
from .errors import (
    BrokerUnavailable,
    ConfigError,
    InvalidChannel,
    InvalidEvent,
    PayloadTooLarge,
    PublishError,
    SchemaMissing,
    SseRelayError,
)
from .wire.channels import validate_channel

__version__ = "0.1.0"

__all__ = [
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
