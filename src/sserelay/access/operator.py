"""Who may see the operator's page (``GET /admin``, docs/admin.md).

Three ways in, checked in this order:

- HTTP Basic with ``admin_user`` / ``admin_password`` (both compared in constant time);
- a token with the ``admin`` grant (``sserelay token --admin``), in
  ``Authorization: Bearer`` or in ``?token=`` (a browser cannot send a header when it
  opens a page; the URL then holds the token: see docs/admin.md);
- the page's cookie: a short-lived (:data:`COOKIE_TTL`), HMAC-signed expiry time that a
  successful page load sets, so that the page's ``EventSource`` (which cannot send an
  ``Authorization`` header) may open ``/admin/stream``. It is ``HttpOnly`` and
  ``SameSite=Strict``; it carries no credential, only "admitted until T".

The cookie's key is derived from the secrets the relays of a deployment share (the JWT
secret, the admin password), so a cookie set by one relay opens the stream on another
behind a load balancer. With neither (only a JWT public key), it is random per process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping

from ..errors import AuthError, HttpError
from .policy import token_from
from .tokens import TokenVerifier

#: The page's cookie, and how long it admits (seconds).
COOKIE = "sserelay_admin"
COOKIE_TTL = 600


class OperatorAuth:
    """The checks of the operator's page for one relay process."""

    def __init__(
        self,
        user: str | None,
        password: str | None,
        verifier: TokenVerifier | None,
        shared_secret: str | None,
    ) -> None:
        self._user = None if user is None else user.encode()
        self._password = None if password is None else password.encode()
        self._verifier = verifier
        shared = [s for s in (shared_secret, password) if s is not None]
        if shared:
            material = "\0".join(["sserelay admin cookie", *shared]).encode()
            self._key = hashlib.sha256(material).digest()
        else:
            self._key = secrets.token_bytes(32)

    def check(self, headers: Mapping[str, str], query: Iterable[tuple[str, str]]) -> str:
        """How the request is admitted (``basic``, ``token`` or ``cookie``), else
        HttpError 401 with the challenges this relay accepts (403: a valid token without
        the admin grant)."""
        authorization = headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "basic" and self._user is not None:
            if self._basic(credentials.strip()):
                return "basic"
            raise self._refusal("wrong user or password")
        token = token_from({"authorization": authorization}, query, "")
        if token is not None and self._verifier is not None:
            try:
                access = self._verifier.verify(token)
            except AuthError as exc:
                raise self._refusal(exc.reason) from None
            if not access.admin:
                raise HttpError(403, "the token has no admin grant (sserelay token --admin)")
            return "token"
        if self.cookie_valid(headers.get("cookie", "")):
            return "cookie"
        raise self._refusal("the operator's page needs an admin token or the admin password")

    def _basic(self, credentials: str) -> bool:
        assert self._user is not None and self._password is not None
        try:
            decoded = base64.b64decode(credentials.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            return False
        user, sep, password = decoded.partition(b":")
        # Both compared, whatever the first gives: the time says nothing of either.
        same_user = hmac.compare_digest(user, self._user)
        same_password = hmac.compare_digest(password, self._password)
        return bool(sep) and same_user and same_password

    def _refusal(self, reason: str) -> HttpError:
        # One header with both challenges (RFC 9110 allows a list): every front, Django's
        # too, keeps one header of a name.
        challenges = []
        if self._user is not None:
            challenges.append('Basic realm="sserelay admin", charset="UTF-8"')
        if self._verifier is not None:
            challenges.append("Bearer")
        return HttpError(401, reason, (("WWW-Authenticate", ", ".join(challenges)),))

    def set_cookie(self, now: float | None = None, *, secure: bool = False) -> str:
        """The ``Set-Cookie`` value of a page just admitted (no ``Path``: it is sent to the
        page's own directory, where its stream is, under any mount point); ``secure``:
        the page came over HTTPS, the cookie goes back over HTTPS only."""
        expires = int(now if now is not None else time.time()) + COOKIE_TTL
        value = f"{expires}.{self._sign(expires)}"
        attributes = f"Max-Age={COOKIE_TTL}; HttpOnly; SameSite=Strict"
        return f"{COOKIE}={value}; {attributes}" + ("; Secure" if secure else "")

    def cookie_valid(self, cookie_header: str, now: float | None = None) -> bool:
        """The request's page cookie is ours and has not expired."""
        value = token_from({"cookie": cookie_header}, (), COOKIE)
        if not value:
            return False
        expires, _, signature = value.partition(".")
        if not expires.isdigit() or len(expires) > 12:
            return False
        if not hmac.compare_digest(signature.encode(), self._sign(int(expires)).encode()):
            return False
        return int(expires) > (now if now is not None else time.time())

    def _sign(self, expires: int) -> str:
        return hmac.new(self._key, str(expires).encode(), hashlib.sha256).hexdigest()
