"""Who may see the dashboard: the holder of its access token, as with Jupyter, whatever the host it listens on.

A request is let in with either
- `Authorization: Bearer TOKEN` (scripts, curl), or
- the session cookie, which a browser gets by opening the printed URL once: `/?token=TOKEN` sets it (HttpOnly,
  SameSite=Strict, the path `/`) and redirects to the same URL without the token, so the token leaves the address
  bar and the history, and is never sent again.
Anything else is 401. The cookie is a random session id signed with a key derived from the token and a secret of
this server's start (HMAC-SHA256): nothing is stored per session, a restart signs anew, and the cookie reveals
nothing of the token. A POST made with the cookie must carry the session's CSRF token (`csrf` form field), which
is the session id signed under another purpose; a page from another site can neither read it nor send the
cookie (SameSite=Strict), and a request carrying the bearer header cannot be made by another site's page at all.
Every comparison is constant-time. The token is never logged: the server runs without an access log.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field

TOKEN_ENV = "SHARDCTL_UI_TOKEN"  # a fixed token (a bookmark that survives restarts); else a new one per start
MIN_TOKEN_CHARS = 16


def token_from_env() -> str | None:
    """The token given in SHARDCTL_UI_TOKEN; ValueError when it is too short to guess-proof."""
    value = os.environ.get(TOKEN_ENV)
    if value is None or value == "":
        return None
    if len(value) < MIN_TOKEN_CHARS or not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError(f"{TOKEN_ENV} must be at least {MIN_TOKEN_CHARS} printable ASCII characters without spaces")
    return value


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Auth:
    token: str
    cookie_name: str = "shardctl_ui"  # a port is added by the server: cookies are shared across a host's ports
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def __repr__(self) -> str:  # never the token, whatever prints this
        return f"Auth(cookie_name={self.cookie_name!r})"

    def _sign(self, purpose: str, value: str) -> str:
        key = hmac.new(self._key, self.token.encode(), hashlib.sha256).digest()
        return hmac.new(key, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()

    def is_token(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def bearer(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return self.is_token(header.removeprefix("Bearer ").strip())

    def new_session(self) -> str:
        """A cookie value: a random session id and its signature."""
        sid = secrets.token_urlsafe(18)
        return f"{sid}.{self._sign('session', sid)}"

    def session(self, cookie: str | None) -> str | None:
        """The session id of a cookie this server signed; None for anything else."""
        if not cookie or cookie.count(".") != 1:
            return None
        sid, mac = cookie.split(".")
        return sid if hmac.compare_digest(mac.encode(), self._sign("session", sid).encode()) else None

    def csrf(self, sid: str) -> str:
        return self._sign("csrf", sid)

    def csrf_ok(self, sid: str | None, given: str | None) -> bool:
        return sid is not None and given is not None and hmac.compare_digest(given.encode(), self.csrf(sid).encode())


__all__ = ["MIN_TOKEN_CHARS", "TOKEN_ENV", "Auth", "new_token", "token_from_env"]
