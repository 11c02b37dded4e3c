"""Token keys: an HS256 secret long enough to be safe, RSA and EC P-256 key files."""

from __future__ import annotations

from pathlib import Path
from typing import TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..errors import ConfigError

#: HS256 secrets shorter than the hash output are refused (RFC 7518, section 3.2).
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048

PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def check_secret(secret: str | bytes, source: str = "jwt_secret") -> bytes:
    """The HS256 secret as bytes, or a ConfigError if it is too short to be safe.

    Anyone holding one token (every browser user holds theirs) can test guesses of an
    HS256 secret offline, as fast as they can compute HMACs; only a long random secret
    makes that hopeless. 32 bytes is the SHA-256 output size, the minimum RFC 7518 sets.
    """
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if raw.lstrip().startswith(b"-----BEGIN"):
        raise ConfigError(
            f"{source} looks like a PEM key; a key pair is for RS256/ES256 "
            "(--jwt-public-key on serve, --jwt-private-key on token)"
        )
    if len(raw) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{source} is {len(raw)} bytes; use at least {MIN_SECRET_BYTES} random bytes "
            "(a short secret can be guessed offline from any one token), e.g. the output of "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return raw


def read_key_file(path: Path, source: str) -> bytes:
    """The bytes of a key file, or a ConfigError naming ``source`` and the path."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {source} {str(path)!r}: {exc.strerror or exc}") from None


def _key_algorithm(key: object, source: str) -> str:
    """RS256 for an RSA key of at least 2048 bits, ES256 for an EC P-256 key."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(
                f"{source} is a {key.key_size}-bit RSA key; use at least {MIN_RSA_BITS} bits"
            )
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ConfigError(
                f"{source} is an EC key on {key.curve.name}; ES256 needs P-256 (secp256r1)"
            )
        return "ES256"
    raise ConfigError(
        f"{source} is a {type(key).__name__.lstrip('_')}; use an RSA key (RS256) "
        "or an EC P-256 key (ES256)"
    )


def load_public_key(pem: str | bytes, source: str = "jwt_public_key") -> tuple[PublicKey, str]:
    """A PEM public key and the one algorithm it verifies (``RS256`` or ``ES256``)."""
    data = pem.encode("utf-8") if isinstance(pem, str) else pem
    if b"PRIVATE KEY-----" in data:
        raise ConfigError(
            f"{source} is a private key; the relay needs only the public key "
            "(openssl pkey -in private.pem -pubout -out public.pem)"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{source} is not a PEM public key (-----BEGIN PUBLIC KEY-----)"
        ) from None
    algorithm = _key_algorithm(key, source)
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)  # checked above
    return key, algorithm


def load_private_key(pem: str | bytes, source: str = "private key") -> tuple[PrivateKey, str]:
    """A PEM private key (unencrypted) and the one algorithm it signs with."""
    data = pem.encode("utf-8") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying "encrypted, and no password given"
        raise ConfigError(
            f"{source} is encrypted; decrypt it (openssl pkey -in key.pem -out plain.pem)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{source} is not a PEM private key") from None
    algorithm = _key_algorithm(key, source)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)  # checked above
    return key, algorithm
