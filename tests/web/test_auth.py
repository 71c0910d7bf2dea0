"""The dashboard's token, session cookie and CSRF token (orchestrator/web/auth.py)."""

from __future__ import annotations

import pytest

from orchestrator.web.auth import TOKEN_ENV, Auth, new_token, token_from_env


@pytest.mark.timeout(30)
def test_a_session_cookie_is_valid_only_as_this_server_signed_it() -> None:
    auth = Auth(new_token())
    cookie = auth.new_session()
    sid = auth.session(cookie)
    assert sid and auth.token not in cookie
    assert auth.session(cookie[:-1] + ("0" if cookie[-1] != "0" else "1")) is None
    assert auth.session(sid + "." + "0" * 64) is None and auth.session(None) is None and auth.session("a.b.c") is None
    assert Auth(auth.token).session(cookie) is None  # a restart (a new server key) signs anew


@pytest.mark.timeout(30)
def test_the_csrf_token_belongs_to_one_session() -> None:
    auth = Auth(new_token())
    one, two = auth.session(auth.new_session()), auth.session(auth.new_session())
    assert one and two and auth.csrf_ok(one, auth.csrf(one))
    assert not auth.csrf_ok(two, auth.csrf(one)) and not auth.csrf_ok(None, auth.csrf(one))
    assert not auth.csrf_ok(one, None) and not auth.csrf_ok(one, "")


@pytest.mark.timeout(30)
def test_bearer_and_query_tokens_compare_exactly() -> None:
    auth = Auth("a-token-of-enough-length")
    assert auth.bearer("Bearer a-token-of-enough-length") and not auth.bearer("Bearer a-token-of-enough-lengt")
    assert not auth.bearer("bearer a-token-of-enough-length") and not auth.bearer(None)
    assert auth.is_token("a-token-of-enough-length") and not auth.is_token("A-token-of-enough-length")
    assert "a-token" not in repr(auth)


@pytest.mark.timeout(30)
def test_a_token_from_the_environment_must_be_long_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(ValueError, match=TOKEN_ENV):
        token_from_env()
    monkeypatch.setenv(TOKEN_ENV, "x" * 16)
    assert token_from_env() == "x" * 16
    monkeypatch.delenv(TOKEN_ENV)
    assert token_from_env() is None and len(new_token()) >= 40 and new_token() != new_token()


def _asgi(app, scope: dict) -> list[dict]:  # noqa: ANN001 - any ASGI app
    """Run one ASGI call to its end; what the app sent."""
    import asyncio

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False} if scope["type"] == "http" else \
            {"type": "websocket.connect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


@pytest.mark.timeout(30)
def test_a_websocket_is_refused_without_reaching_the_app_and_the_session_cookie_expires() -> None:
    """No page uses a websocket: the gate closes one (1008) before any route sees it, so a route added later is
    not open by default; the session cookie the token buys lasts a working day, not for ever."""
    from orchestrator.web.app import SESSION_MAX_AGE_S, Gate

    reached: list[str] = []

    async def app(scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        reached.append(scope["type"])

    auth = Auth(new_token())
    gate = Gate(app, auth)
    assert _asgi(gate, {"type": "websocket", "path": "/", "headers": [], "query_string": b""}) == \
        [{"type": "websocket.close", "code": 1008}]
    assert reached == []
    sent = _asgi(gate, {"type": "http", "method": "GET", "path": "/", "headers": [], "scheme": "http",
                        "query_string": f"token={auth.token}".encode(), "server": ("127.0.0.1", 8765)})
    cookie = next(v.decode() for k, v in sent[0]["headers"] if k == b"set-cookie")
    assert sent[0]["status"] == 303 and f"Max-Age={SESSION_MAX_AGE_S}" in cookie and "HttpOnly" in cookie
    assert reached == []  # the redirect is the gate's own answer
