"""The dashboard's routes: pages rendered on the server from a `JobSource`, usable without any script.

    GET  /                       jobs (filters: ?state=, ?group=, ?limit=)
    GET  /jobs/{id}              a job: attempts as a timeline, loss and throughput curves, the log's tail
    GET  /jobs/{id}/plan         the memory plan of its spec (plan/html.py), shown in a frame of the job page
    GET  /jobs/{id}/logs         logs and curves read as the signed-in user (?attempt= for the tail), only for a
                                 source whose job page has none (the controller's: web/kube_source.py user_logs)
    POST /jobs/{id}/cancel       cancel it (with the session's CSRF token)
    GET  /groups/{group}         a sweep's points side by side
    GET  /fragments/...          the live parts of those pages, which a small inline script fetches every few
                                 seconds (without script, a meta refresh reloads the page)

Handlers are plain functions (Starlette runs them in its thread pool): the store is files, read synchronously;
cancel alone is async, to read its form, and runs the cancel in the pool too.
A page about a damaged or hostile job is still a page: what cannot be read is left out and said, never a 500.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.sweep import settings_of
from orchestrator.errors import ShardctlError
from orchestrator.spec.states import JobState
from orchestrator.views.history import History
from orchestrator.views.progress import duration
from orchestrator.views.report import describe_config, fmt_bytes
from orchestrator.web.auth import Auth
from orchestrator.web.charts import Chart, colour, line_chart
from orchestrator.web.source import JobEntry, JobSource, age_s
from orchestrator.web.text import as_terminal_lines, inert, strip_sequences

TEMPLATES = Path(__file__).parent / "templates"
REFRESH_S = 5  # how often the live parts are fetched again (the meta refresh without script: twice that)
DEFAULT_LIMIT = 200  # rows of the jobs page; ?limit= up to MAX_LIMIT
MAX_LIMIT = 5000
MAX_FORM_BYTES = 4096
SESSION_MAX_AGE_S = 12 * 3600  # the session cookie lasts a working day (it is sent to every port of the host)
CSP = ("default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; connect-src 'self'; "
       "frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'self'")


@dataclass(frozen=True)
class AttemptLog:
    """One attempt's log as a logs page read it (a source's `user_logs`, read with the signed-in user's own
    credentials): its tail as written (escape sequences included), its progress history, and what the page must
    say of it (why it could not be read, or what of it was left out)."""

    number: int
    pod: str | None  # the pod read (rank 0's), None when there is none
    tail: str | None  # None: not read
    history: History
    note: str | None


def _finalize(value: Any) -> Any:
    """Every value a template prints: a string from anywhere is made inert (web/text.py) before autoescape. Markup
    is what the templates' own macros return (a chart), already escaped: no job text is ever marked safe."""
    return inert(value) if isinstance(value, str) and not isinstance(value, Markup) else value


@lru_cache(maxsize=1)
def environment() -> Environment:
    """Jinja2 with autoescape on for every template, whatever its name, and no undefined name passing silently."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      finalize=_finalize, trim_blocks=True, lstrip_blocks=True)
    return env


def _config_line(attempt: dict[str, Any]) -> str:
    try:
        return describe_config(attempt)
    except (KeyError, TypeError):
        return "?"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and \
        math.isfinite(value) else None


# --- what the templates are given ---------------------------------------------------------------------------


def progress_row(view: dict[str, Any]) -> dict[str, Any] | None:
    """The last attempt's progress as the list shows it: step of total, percent, ETA, loss."""
    if not view["attempts"]:
        return None
    p = view["attempts"][-1].get("progress") or {}
    step, total = p.get("step"), p.get("total")
    if not isinstance(step, int):
        return None
    pct = max(0.0, min(100.0, 100 * step / total)) if isinstance(total, int) and total > 0 else None
    eta = _number(p.get("eta_s"))
    loss = _number(p.get("loss"))
    return {"step": step, "total": total if isinstance(total, int) else None, "pct": pct,
            "eta": duration(eta) if eta is not None else None, "loss": f"{loss:.4g}" if loss is not None else None}


def row(entry: JobEntry, now: float) -> dict[str, Any]:
    v = entry.view
    return {"id": entry.id, "name": v["name"], "state": v["state"], "target": v["target"], "group": entry.group,
            "attempts": len(v["attempts"]), "progress": progress_row(v), "age": _age(age_s(entry, now)),
            "created": v.get("created_at") or ""}


def _nodes(attempt: dict[str, Any], spec: dict[str, Any]) -> str:
    """What the record says of an attempt's nodes: what it asked for, and the node its failure names."""
    try:
        resources = (spec.get("spec") or {}).get("resources") or {}
        nodes, gpus = resources.get("nodes", 1), resources.get("gpus_per_node", 1)
        text = f"{nodes} node{'s' if nodes != 1 else ''} x {gpus} GPU{'s' if gpus != 1 else ''}"
    except AttributeError:  # a record edited by hand: what cannot be read is not shown
        text = "?"
    failure = attempt.get("failure") or {}
    if failure.get("node"):
        text += f"; failure on node {failure['node']}"
    return text


def timeline(entry: JobEntry, source: JobSource,
             histories: dict[int, History] | None = None) -> list[dict[str, Any]]:
    """The attempts for a page; `histories`: those attempts only, with these histories (a logs page's)."""
    out = []
    for a in entry.view["attempts"]:
        if histories is not None and a["number"] not in histories:
            continue
        history = histories[a["number"]] if histories is not None else source.history(entry.id, a["number"])
        out.append({**a, "config": _config_line(a), "nodes": _nodes(a, entry.spec),
                    "took": duration(a["duration_s"]) if a.get("duration_s") is not None else None,
                    "peak": fmt_bytes(a["peak_memory_bytes"]) if a.get("peak_memory_bytes") else None,
                    "colour": colour(a["number"] - 1), "points": len(history.points),
                    "history": history})
    return out


def curves(attempts: list[dict[str, Any]]) -> tuple[Chart, Chart]:
    """Loss and steps per second against the step, one colour per attempt."""
    loss = [(f"attempt {a['number']}", a["colour"], [(p.step, p.loss) for p in a["history"].points
                                                      if p.loss is not None]) for a in attempts]
    rate = [(f"attempt {a['number']}", a["colour"], [(p.step, p.rate) for p in a["history"].points
                                                      if p.rate is not None]) for a in attempts]
    return (line_chart("loss", "step", "loss", loss, "no loss printed yet"),
            line_chart("throughput", "step", "steps/s", rate, "no step times printed (a tqdm bar's rate, or "
                       "`time 0.4s` on a step line)"))


# --- middleware: the token, the headers -----------------------------------------------------------------------


def _unauthorized() -> Response:
    return PlainTextResponse("401: open the URL that `shardctl ui` printed (it carries the access token), or send "
                             "`Authorization: Bearer TOKEN`.\n", status_code=401,
                             headers={"WWW-Authenticate": 'Bearer realm="shardctl"'})


def secured(send: Send, nonce: str) -> Send:
    """`send` with the security headers added to the response's start (every response, errors included)."""

    async def with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers += [(b"content-security-policy", CSP.format(nonce=nonce).encode()),
                        (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                        (b"cache-control", b"no-store")]
            message = {**message, "headers": headers}
        await send(message)

    return with_headers


class Guard(Protocol):
    """What the pages ask of the authentication in front of them: the session's CSRF token (web/auth.py's Auth for
    `shardctl ui`, web/kube_auth.py's for the controller)."""

    def csrf(self, sid: str) -> str: ...

    def csrf_ok(self, sid: str | None, given: str | None) -> bool: ...


class Gate:
    """Lets in the token's holders only (web/auth.py) and adds the security headers to every response."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # no page uses one: refused, so that none added later is open by default
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(16)
        with_headers = secured(send, nonce)
        request = Request(scope)
        given = request.query_params.get("token")
        if given is not None:
            if not self.auth.is_token(given):
                await _unauthorized()(scope, receive, with_headers)
                return
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            path = request.url.path if request.url.path.startswith("/") and \
                not request.url.path.startswith("//") else "/"
            response = RedirectResponse(path + (f"?{urlencode(rest)}" if rest else ""), status_code=303)
            response.set_cookie(self.auth.cookie_name, self.auth.new_session(), httponly=True, samesite="strict",
                                path="/", max_age=SESSION_MAX_AGE_S)
            await response(scope, receive, with_headers)
            return
        sid = self.auth.session(request.cookies.get(self.auth.cookie_name))
        bearer = self.auth.bearer(request.headers.get("authorization"))
        if sid is None and not bearer:
            await _unauthorized()(scope, receive, with_headers)
            return
        state = scope.setdefault("state", {})
        state.update(sid=sid, bearer=bearer, nonce=nonce)
        await self.app(scope, receive, with_headers)


async def small_form(request: Request, limit: int) -> dict[str, list[str]] | None:
    """A posted form of a few fields, parsed with bounds (None when its body is over `limit` bytes; {} when it has
    more fields than any form of ours)."""
    body = await request.body()
    if len(body) > limit:
        return None
    try:
        return parse_qs(body.decode("latin-1"), max_num_fields=10)
    except ValueError:
        return {}


# --- the application ------------------------------------------------------------------------------------------


def make_app(source: JobSource, auth: Guard, *, actions: bool = True,
             gate: Callable[[ASGIApp], ASGIApp] | None = None) -> ASGIApp:
    """The pages of `source` behind `gate` (default: the token Gate of `auth`, which must then be an Auth).
    `actions=False`: read-only, no cancel button, and a cancel is refused (403)."""
    env = environment()
    # a source whose job page shows no log, whose logs are read with the user's own credentials on a page of their
    # own (web/kube_source.py): user_logs(job_id, chosen attempt, the gate's credential) -> {number: AttemptLog}
    reader: Callable[[str, int, Any], dict[int, AttemptLog]] | None = getattr(source, "user_logs", None)

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        sid = request.state.sid
        body = env.get_template(template).render(
            nonce=request.state.nonce, csrf=auth.csrf(sid) if sid else "", where=source.where,
            refresh_s=REFRESH_S, notes=source.notes(), actions=actions, **context)
        return HTMLResponse(body, status_code=status)

    def not_found(request: Request, what: str) -> HTMLResponse:
        return page(request, "missing.html", 404, what=what, live=None)

    def jobs_context(request: Request) -> dict[str, Any]:
        wanted_state = request.query_params.get("state") or ""
        wanted_group = request.query_params.get("group") or ""
        try:
            limit = max(1, min(MAX_LIMIT, int(request.query_params.get("limit") or DEFAULT_LIMIT)))
        except ValueError:
            limit = DEFAULT_LIMIT
        known = wanted_state in {s.value for s in JobState}
        listed = source.jobs(JobState(wanted_state) if known else None, wanted_group or None, limit)
        now = time.time()
        query = urlencode({k: v for k, v in (("state", wanted_state), ("group", wanted_group),
                                             ("limit", request.query_params.get("limit") or "")) if v})
        matches = known or not wanted_state  # a state that does not exist matches nothing
        return {"rows": [row(e, now) for e in listed.entries] if matches else [],
                "matching": listed.matching if matches else 0, "total": listed.total,
                "states": [s.value for s in JobState], "groups": listed.groups, "state": wanted_state,
                "group": wanted_group, "query": query}

    def jobs_page(request: Request) -> Response:
        context = jobs_context(request)
        return page(request, "jobs.html", live=f"/fragments/jobs?{context['query']}", **context)

    def jobs_fragment(request: Request) -> Response:
        return page(request, "_jobs_rows.html", **jobs_context(request))

    def chosen_attempt(request: Request, numbers: list[int]) -> int:
        try:
            return int(request.query_params.get("attempt") or (numbers[-1] if numbers else 0))
        except ValueError:
            return numbers[-1] if numbers else 0

    def job_context(entry: JobEntry, request: Request) -> dict[str, Any]:
        attempts = timeline(entry, source)
        loss, rate = curves(attempts)
        numbers = [a["number"] for a in attempts]
        chosen = chosen_attempt(request, numbers)
        tail = source.log_tail(entry.id, chosen) if chosen in numbers else None
        tail = as_terminal_lines(strip_sequences(tail)) if tail is not None else None
        hint = getattr(source, "log_command", None)  # a source whose logs are elsewhere says how to read them
        command = hint(entry.id, chosen) if callable(hint) else f"shardctl logs {entry.id} --attempt {chosen}"
        return {"log_command": command, "job": entry.view, "entry": entry, "attempts": attempts, "loss": loss,
                "rate": rate, "log_attempt": chosen, "log": tail, "terminal": entry.state.terminal,
                "has_plan": _plan_of(entry) is not None, "user_logs": reader is not None}

    def job_page(request: Request) -> Response:
        entry = source.job(request.path_params["job_id"])
        if entry is None:
            return not_found(request, "job")
        context = job_context(entry, request)
        live = None if entry.state.terminal else f"/fragments/jobs/{entry.id}?{request.url.query}"
        return page(request, "job.html", live=live, **context)

    def job_fragment(request: Request) -> Response:
        entry = source.job(request.path_params["job_id"])
        if entry is None:
            return not_found(request, "job")
        return page(request, "_job_body.html", **job_context(entry, request))

    def logs_page(request: Request) -> Response:
        """Logs and curves read as the signed-in user: the source's requests (one per attempt shown), made only
        here, never for the job page or its live part. Not live: each view is requests, so a reload reads again."""
        entry = source.job(request.path_params["job_id"])
        if entry is None or reader is None:
            return not_found(request, "job")
        numbers = [a["number"] for a in entry.view["attempts"]]
        chosen = chosen_attempt(request, numbers)
        logs = reader(entry.id, chosen, getattr(request.state, "credential", None))
        attempts = timeline(entry, source, {n: log.history for n, log in logs.items()})
        loss, rate = curves(attempts)
        shown = logs.get(chosen)
        tail = shown.tail if shown is not None else None
        tail = as_terminal_lines(strip_sequences(tail)) if tail is not None else None
        hint = getattr(source, "log_command", None)
        command = hint(entry.id, chosen) if callable(hint) else f"shardctl logs {entry.id} --attempt {chosen}"
        return page(request, "logs.html", live=None, job=entry.view, entry=entry, attempts=attempts, loss=loss,
                    rate=rate, log_attempt=chosen, log=tail, log_command=command,
                    pod=shown.pod if shown is not None else None,
                    log_notes=[log.note for log in logs.values() if log.note],
                    user=getattr(request.state, "user", None) or "you")

    def plan_page(request: Request) -> Response:
        entry = source.job(request.path_params["job_id"])
        html = _plan_of(entry) if entry is not None else None
        if html is None:
            return PlainTextResponse("no plan for this job\n", status_code=404)
        return HTMLResponse(html)

    async def cancel(request: Request) -> Response:
        if not actions:
            return PlainTextResponse("403: this dashboard is read-only (its actions are off)\n", status_code=403)
        form = await small_form(request, MAX_FORM_BYTES)
        if form is None:
            return PlainTextResponse("413: form too large\n", status_code=413)
        given = form["csrf"][0] if form.get("csrf") else None
        if not request.state.bearer and not auth.csrf_ok(request.state.sid, given):
            return PlainTextResponse("403: this form is missing its CSRF token (reload the job's page)\n",
                                     status_code=403)
        job_id = request.path_params["job_id"]
        entry = await run_in_threadpool(source.job, job_id)
        if entry is None:
            return PlainTextResponse("404: no such job\n", status_code=404)
        try:
            await run_in_threadpool(source.cancel, entry.id)
        except ShardctlError as exc:
            return PlainTextResponse(f"409: cannot cancel: {inert(str(exc))}\n", status_code=409)
        return RedirectResponse(f"/jobs/{entry.id}", status_code=303)

    def group_context(request: Request) -> dict[str, Any] | None:
        group = request.path_params["group"]
        entries = sorted(source.jobs(group=group).entries,
                         key=lambda e: (e.point if e.point is not None else 1 << 30, e.created_at))
        if not entries:
            return None
        try:
            settings = settings_of([e.spec for e in entries])
        except (TypeError, ValueError, AttributeError):
            settings = [{} for _ in entries]
        points, series = [], []
        for i, (e, values) in enumerate(zip(entries, settings, strict=True)):
            full = source.job(e.id) or e
            progress = progress_row(full.view) or {}
            path: dict[int, float] = {}
            for a in full.view["attempts"]:  # a later attempt's reading of a step replaces an earlier one's
                path.update({p.step: p.loss for p in source.history(e.id, a["number"]).points if p.loss is not None})
            label = f"point {e.point if e.point is not None else i}"
            series.append((label, colour(i), sorted(path.items())))
            points.append({**row(full, time.time()), "label": label, "colour": colour(i), "point": e.point,
                           "set": ", ".join(f"{k.removeprefix('spec.')}={v}" for k, v in values.items()) or "-",
                           "loss": progress.get("loss"), "step": progress.get("step"),
                           "config": _config_line(full.view["attempts"][-1]) if full.view["attempts"] else "-"})
        chart = line_chart("loss by point", "step", "loss", series, "no loss printed yet")
        return {"group": group, "points": points, "compare": chart,
                "terminal": all(e.state.terminal for e in entries)}

    def group_page(request: Request) -> Response:
        context = group_context(request)
        if context is None:
            return not_found(request, "sweep group")
        live = None if context["terminal"] else f"/fragments/groups/{context['group']}"
        return page(request, "group.html", live=live, **context)

    def group_fragment(request: Request) -> Response:
        context = group_context(request)
        if context is None:
            return not_found(request, "sweep group")
        return page(request, "_group_body.html", **context)

    routes = [
        Route("/", jobs_page),
        Route("/fragments/jobs", jobs_fragment),
        Route("/jobs/{job_id}", job_page),
        Route("/fragments/jobs/{job_id}", job_fragment),
        Route("/jobs/{job_id}/plan", plan_page),
        *([Route("/jobs/{job_id}/logs", logs_page)] if reader is not None else []),
        Route("/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/groups/{group}", group_page),
        Route("/fragments/groups/{group}", group_fragment),
    ]
    if gate is not None:
        return gate(Starlette(routes=routes))
    assert isinstance(auth, Auth), "the token Gate needs an Auth"
    return Gate(Starlette(routes=routes), auth)


_PLANS: dict[str, str | None] = {}


def _plan_of(entry: JobEntry) -> str | None:
    """The memory plan of the job's spec as a page (plan/html.py), when the planner can make one without the
    network (a model it can size, a GPU memory to fit in); made once per job (a job's spec never changes)."""
    if entry.id in _PLANS:
        return _PLANS[entry.id]
    html: str | None = None
    try:
        from orchestrator.plan.html import plan_html
        from orchestrator.plan.planner import plan
        from orchestrator.spec.models import TrainingJob

        job = TrainingJob.model_validate(entry.spec)
        result = plan(job, hub=False)
        html = plan_html(result, model=job.spec.model.name_or_path, job=job.metadata.name)
    except (ShardctlError, ValueError, TypeError, KeyError, AttributeError, OSError, ArithmeticError):
        html = None
    if len(_PLANS) > 1024:
        _PLANS.clear()
    _PLANS[entry.id] = html
    return html


__all__ = ["CSP", "AttemptLog", "Gate", "Guard", "environment", "make_app", "progress_row", "row", "secured"]
