"""sserelay: live events from PostgreSQL to browsers over Server-Sent Events."""

from __future__ import annotations

from .channels import validate_channel
from .errors import (
    BrokerUnavailable,
    ConfigError,
    InvalidChannel,
    InvalidEvent,
    PayloadTooLarge,
    PublishError,
    SseRelayError,
)
from .publish import apublish, encode_payload, publish

__version__ = "0.1.0"

__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "InvalidChannel",
    "InvalidEvent",
    "PayloadTooLarge",
    "PublishError",
    "SseRelayError",
    "__version__",
    "apublish",
    "encode_payload",
    "publish",
    "validate_channel",
]
