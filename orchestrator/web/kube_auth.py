"""Who may see the controller's dashboard: whoever the cluster says, per user, with their own Kubernetes token.

A request carries a Kubernetes bearer token (`kubectl create token SERVICEACCOUNT`, or an OIDC token the API server
accepts): in the `Authorization: Bearer` header (scripts), or once through the login page, which keeps it on the
server and gives the browser a session cookie (HttpOnly, SameSite=Strict; the token itself never reaches a cookie,
a URL or a log). The controller asks the API server:
- a TokenReview: is this token valid, and whose is it?
- a SubjectAccessReview: may that user `list` trainingjobs (shardctl.dev) in the namespace the controller watches
  (in every namespace for a cluster-wide one)? `list` returns every TrainingJob whole, so it is exactly what the
  pages show: someone who may run `kubectl get trainingjobs -o yaml` there may see this, nobody else.
Both answers are cached for REVIEW_TTL_S per token (a refusal for DENIED_TTL_S), so page views cost no request
but the first; a revoked token or a removed RoleBinding holds for at most that long, as the API server's own
webhook authenticator caches its answers (2 minutes by default). A cancel (only with actions on) asks a fresh
SubjectAccessReview for `delete` on that TrainingJob each time: the cancel is done with the controller's rights,
so it must be one the user has. The counts of reviews asked are kept (`counts`), for the request budget.

The logs page (web/kube_source.py user_logs) reads pod logs as the user, not as the controller: the gate hands
the request's token (from the session, or the header) to the pages as a `Credential` (request.state.credential),
whose repr hides it, for that request only. The token stays in this process's memory (the session); it is never
logged, never put in a cookie or a page, never written.

Why not one shared token from a Secret: it is one more credential to distribute and rotate, it says nothing of who
acted (every cancel would be "someone with the token"), and it grants everyone the same view whatever their RBAC.
Reviews reuse what the platform team already manages (identities, RoleBindings) and need only `create` on
tokenreviews and subjectaccessreviews (the chart's ClusterRole, with the dashboard only).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.spec.crd import GROUP, PLURAL
from orchestrator.web.app import environment, secured, small_form
from orchestrator.web.kube_source import Credential, split_id

log = logging.getLogger("shardctl.controller")
REVIEW_TTL_S = 60.0  # an allowed token is reviewed again after this (revocation and RBAC changes show by then)
DENIED_TTL_S = 10.0  # a refused one: a wrong token retried in a loop costs a review per 10 s, not per request
SESSION_MAX_S = 8 * 3600.0  # a browser session's longest life (its token is reviewed every REVIEW_TTL_S anyway)
MAX_SESSIONS = 4096
MAX_REVIEWS = 4096
MAX_FORM_BYTES = 16384  # a projected service account token is about 1 KiB; an OIDC token a few


class Verdict(StrEnum):
    ALLOWED = "allowed"
    UNAUTHENTICATED = "unauthenticated"  # the API server does not know the token (401)
    FORBIDDEN = "forbidden"  # a valid token whose user may not list trainingjobs here (403)
    UNAVAILABLE = "unavailable"  # the API server could not answer (503; never cached)


@dataclass(frozen=True)
class Review:
    verdict: Verdict
    user: str = ""
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict[str, list[str]] = field(default_factory=dict)
    why: str = ""
    at: float = 0.0


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Reviewer:
    """TokenReview and SubjectAccessReview on the controller's API client, cached per token (by its digest)."""

    def __init__(self, api_client: Any, namespace: str | None, *, ttl_s: float = REVIEW_TTL_S,
                 denied_ttl_s: float = DENIED_TTL_S) -> None:
        self.client = api_client
        self.namespace = namespace
        self.ttl_s, self.denied_ttl_s = ttl_s, denied_ttl_s
        self.counts: Counter[str] = Counter()  # "tokenreviews", "subjectaccessreviews": reviews asked
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Review] = OrderedDict()

    def cached(self, token: str) -> Review | None:
        with self._lock:
            found = self._cache.get(_digest(token))
        if found is None:
            return None
        ttl = self.ttl_s if found.verdict is Verdict.ALLOWED else self.denied_ttl_s
        return found if time.monotonic() - found.at < ttl else None

    def review(self, token: str) -> Review:
        """The cached answer, or a fresh one (a TokenReview, then a SubjectAccessReview); blocking."""
        found = self.cached(token)
        if found is not None:
            return found
        found = self._review(token)
        if found.verdict is not Verdict.UNAVAILABLE:
            with self._lock:
                self._cache[_digest(token)] = found
                self._cache.move_to_end(_digest(token))
                while len(self._cache) > MAX_REVIEWS:
                    self._cache.popitem(last=False)
        return found

    def _review(self, token: str) -> Review:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        now = time.monotonic()
        try:
            with self._lock:
                self.counts["tokenreviews"] += 1
            body: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
            answer = client.AuthenticationV1Api(self.client).create_token_review(body, _request_timeout=10)
        except ApiException as exc:
            log.warning("dashboard: TokenReview refused: %s %s", exc.status, exc.reason)
            return Review(Verdict.UNAVAILABLE, why=f"the API server refused the TokenReview ({exc.status})", at=now)
        except Exception as exc:  # noqa: BLE001 -- unreachable: a 503 for this request, nothing cached
            return Review(Verdict.UNAVAILABLE, why=f"the API server did not answer ({type(exc).__name__})", at=now)
        status = answer.status
        if status is None or not status.authenticated or status.user is None:
            return Review(Verdict.UNAUTHENTICATED, why="the API server does not accept this token", at=now)
        user = status.user
        review = Review(Verdict.ALLOWED, user=user.username or "", groups=tuple(user.groups or ()), uid=user.uid or "",
                        extra={k: list(v) for k, v in (user.extra or {}).items()}, at=now)
        allowed = self.may(review, "list", self.namespace)
        if allowed is None:
            return Review(Verdict.UNAVAILABLE, user=review.user, why="the API server did not answer the "
                          "SubjectAccessReview", at=now)
        if not allowed:
            where = f"in namespace {self.namespace}" if self.namespace else "in every namespace"
            return Review(Verdict.FORBIDDEN, user=review.user, why=f"{review.user} may not list trainingjobs "
                          f"({GROUP}) {where}", at=now)
        return review

    def may(self, review: Review, verb: str, namespace: str | None, name: str | None = None) -> bool | None:
        """A SubjectAccessReview: may the reviewed user do `verb` on trainingjobs (the one named)? None when the
        API server did not answer. Never cached here (a cancel asks afresh)."""
        from kubernetes import client

        attributes = {"group": GROUP, "resource": PLURAL, "verb": verb, "namespace": namespace or "",
                      **({"name": name} if name else {})}
        body: Any = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": review.user, "groups": list(review.groups), "uid": review.uid, "extra": review.extra,
                         "resourceAttributes": attributes}}
        try:
            with self._lock:
                self.counts["subjectaccessreviews"] += 1
            answer = client.AuthorizationV1Api(self.client).create_subject_access_review(body, _request_timeout=10)
        except Exception as exc:  # noqa: BLE001 -- refused or unreachable: not allowed, and said
            log.warning("dashboard: SubjectAccessReview failed: %s", type(exc).__name__)
            return None
        return bool(answer.status and answer.status.allowed)


class Sessions:
    """Browser sessions: a random id (the cookie) -> the token given at login, kept in this process only. A
    restart logs everyone out; a stolen cookie is no Kubernetes credential."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._key = secrets.token_bytes(32)

    def new(self, token: str) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._by_id[sid] = (token, time.monotonic())
            while len(self._by_id) > MAX_SESSIONS:
                self._by_id.popitem(last=False)
        return sid

    def token(self, sid: str | None) -> str | None:
        if not sid:
            return None
        with self._lock:
            found = self._by_id.get(sid)
            if found is not None and time.monotonic() - found[1] > SESSION_MAX_S:
                del self._by_id[sid]
                found = None
        return found[0] if found else None

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)

    def csrf(self, sid: str) -> str:
        return hmac.new(self._key, f"csrf\0{sid}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, sid: str | None, given: str | None) -> bool:
        return sid is not None and given is not None and hmac.compare_digest(given.encode(), self.csrf(sid).encode())


def _safe_next(value: str | None) -> str:
    """Where to go after login: a path of this server only."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


class KubeGate:
    """In front of the pages (web/app.py make_app's `gate`): the login page, the reviews, the security headers.
    `actions`: whether a cancel may pass (after a `delete` review); without, the pages refuse it anyway."""

    def __init__(self, app: ASGIApp, reviewer: Reviewer, sessions: Sessions, *, cookie_name: str,
                 actions: bool) -> None:
        self.app, self.reviewer, self.sessions = app, reviewer, sessions
        self.cookie_name, self.actions = cookie_name, actions

    def _login_page(self, status: int, nonce: str, message: str = "", next_path: str = "/") -> HTMLResponse:
        where = f"namespace {self.reviewer.namespace}" if self.reviewer.namespace else "every namespace"
        body = environment().get_template("login.html").render(
            nonce=nonce, live=None, refresh_s=0, notes=[], where=f"TrainingJobs in {where}", message=message,
            next_path=next_path, namespace=self.reviewer.namespace or "NAMESPACE")
        return HTMLResponse(body, status_code=status,
                            headers={"WWW-Authenticate": 'Bearer realm="shardctl"'} if status == 401 else None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(16)
        send = secured(send, nonce)
        request = Request(scope, receive)
        path = request.url.path
        if path == "/login":
            response = await self._login(request, nonce)
            await response(scope, receive, send)
            return
        if path == "/logout" and request.method == "POST":
            self.sessions.end(request.cookies.get(self.cookie_name))
            response = RedirectResponse("/login", status_code=303)
            response.delete_cookie(self.cookie_name, path="/", httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        header = request.headers.get("authorization") or ""
        bearer = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
        sid = None if bearer else request.cookies.get(self.cookie_name)
        token = bearer or self.sessions.token(sid)
        here = path + (f"?{request.url.query}" if request.url.query else "")
        if not token:
            await self._login_page(401, nonce, next_path=here)(scope, receive, send)
            return
        review = self.reviewer.cached(token)
        if review is None:
            review = await run_in_threadpool(self.reviewer.review, token)
        refused = self._refusal(review, nonce, here, sid)
        if refused is None and request.method == "POST" and self.actions and path.endswith("/cancel"):
            refused = await self._may_cancel(review, path)
        if refused is not None:
            await refused(scope, receive, send)
            return
        scope.setdefault("state", {}).update(sid=sid if not bearer else None, bearer=bool(bearer), nonce=nonce,
                                             user=review.user, credential=Credential(token))
        await self.app(scope, receive, send)

    def _refusal(self, review: Review, nonce: str, here: str, sid: str | None) -> Response | None:
        if review.verdict is Verdict.ALLOWED:
            return None
        if review.verdict is Verdict.UNAUTHENTICATED:
            self.sessions.end(sid)  # an expired or revoked token: log in again
            return self._login_page(401, nonce, review.why, here)
        if review.verdict is Verdict.FORBIDDEN:
            return self._login_page(403, nonce, review.why, here)
        return PlainTextResponse(f"503: {review.why}; try again\n", status_code=503)

    async def _may_cancel(self, review: Review, path: str) -> Response | None:
        parts = path.split("/")  # /jobs/{id}/cancel
        key = split_id(parts[2]) if len(parts) == 4 and parts[1] == "jobs" else None
        if key is None:
            return PlainTextResponse("404: no such job\n", status_code=404)
        allowed = await run_in_threadpool(self.reviewer.may, review, "delete", key[0], key[1])
        if not allowed:
            return PlainTextResponse(f"403: {review.user} may not delete TrainingJob {key[0]}/{key[1]} (a cancel "
                                     "deletes it, as `shardctl cancel` does)\n", status_code=403)
        log.info("dashboard: %s cancels TrainingJob %s/%s", review.user, key[0], key[1])
        return None

    def _same_origin(self, request: Request) -> bool:
        """A login form posted from this server's own page (no other site may log a browser in as someone)."""
        site = request.headers.get("sec-fetch-site")  # a browser's word; its Origin is "null" under no-referrer
        if site is not None:
            return site in ("same-origin", "none")
        origin = request.headers.get("origin")
        return origin is None or origin == f"{request.url.scheme}://{request.headers.get('host', '')}"

    async def _login(self, request: Request, nonce: str) -> Response:
        if request.method == "GET":
            return self._login_page(200, nonce, next_path=_safe_next(request.query_params.get("next")))
        if request.method != "POST":
            return PlainTextResponse("405: GET or POST\n", status_code=405)
        if not self._same_origin(request):
            return PlainTextResponse("403: log in from this dashboard's own login page\n", status_code=403)
        form = await small_form(request, MAX_FORM_BYTES)
        if form is None:
            return PlainTextResponse("413: form too large\n", status_code=413)
        token = (form.get("token") or [""])[0].strip()
        next_path = _safe_next((form.get("next") or ["/"])[0])
        if not token or not token.isascii() or not token.isprintable():
            return self._login_page(401, nonce, "give a Kubernetes token", next_path)
        review = await run_in_threadpool(self.reviewer.review, token)
        refused = self._refusal(review, nonce, next_path, None)
        if refused is not None:
            return refused
        log.info("dashboard: %s logged in", review.user)
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(self.cookie_name, self.sessions.new(token), httponly=True, samesite="strict", path="/",
                            max_age=12 * 3600)  # a working day: the cookie does not outlive its use
        return response


__all__ = ["DENIED_TTL_S", "REVIEW_TTL_S", "KubeGate", "Review", "Reviewer", "Sessions", "Verdict"]
