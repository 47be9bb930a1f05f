"""The dashboard, served by the HTTP API at `/`: pages and assets from producer/static/, its
sign-in (the API token, once, for a signed session cookie), CSRF checks, and its JSON under
/dashboard/api/, which accepts the session cookie only (the /v1/ API the bearer token only).

Session: ``{sid}.{expires}.{mac}`` in an HttpOnly, SameSite=Strict cookie, the MAC an HMAC
with a key derived from SMSQ_API_TOKEN, so every API process behind a load balancer accepts
it and changing the token ends every session. CSRF: an HMAC of the session id, in the page,
required in the X-CSRF-Token header (or a `csrf` form field) of every request that changes
something; the sign-in form carries one made from a nonce cookie the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, PackageLoader, StrictUndefined
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from ledger import keys
from ledger.drafts import Draft, get_draft, put_draft
from ledger.errors import InputError
from ledger.states import ALL_STATES
from producer import dashboard_data as data
from producer import http_campaigns as campaigns
from producer import http_control as control
from producer import report as reports
from producer.http_common import (
    MAX_BODY_BYTES,
    Api,
    ApiError,
    Handler,
    answer,
    campaign_id,
    log,
    stream,
)
from producer.recipients import read_recipients
from web import BodyTooLarge, ClientGone, read_limited

SESSION_COOKIE = "smsq_session"
LOGIN_COOKIE = "smsq_login"
CSRF_HEADER = "x-csrf-token"
# A working day: a session outlives a lunch break, not a lost laptop for long.
SESSION_TTL_S = 12 * 3600
# Time to fill in the sign-in form once shown.
LOGIN_TTL_S = 3600
# A wrong token waits this long for its answer, so guessing one is slow.
LOGIN_FAILURE_DELAY_S = 0.5
# A sign-in or sign-out form is a token and a CSRF value: a few hundred bytes.
MAX_FORM_BYTES = 4096
# Separates this key's uses of the API token from any other.
KEY_LABEL = b"smsq dashboard session key v1"
REFUSED = "Sign-in failed: that token is not accepted."
EXPIRED = "The sign-in form had expired; please sign in again."
# Files under producer/static/ served at /dashboard/static/{name}, with their media types;
# nothing else is (the page templates are rendered, not served).
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# Every dashboard answer: nothing from elsewhere, never framed (the buttons cannot be
# clicked through another site's page), nothing cached, no Referer leaves.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
# The order of a campaign's counts, as producer/static/dashboard.js lists them.
STATES = (
    "queued", "sending", "accepted", "sent", "failed", "rejected", "expired", "unknown",
    "unconfirmed", "cancelled", "suppressed",
)  # fmt: skip
# A new campaign's upload: at most what the API takes in one request.
MAX_UPLOAD_BYTES = MAX_BODY_BYTES
# The text fields of the new campaign form (source, text, name, csrf), each at most this.
MAX_FIELD_BYTES = 64 * 1024
# Retry-After of a 503, as the /v1/ API answers it.
RETRY_AFTER_S = 5


@cache
def _static(name: str) -> str:
    return resources.files("producer").joinpath("static", name).read_text(encoding="utf-8")


def _when(ts: float | None) -> str:
    """A Unix time as the pages show it without JavaScript (UTC, to the second)."""
    if not ts:
        return "\u2013"  # an en dash, as the script shows "no value"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# The page templates under producer/static/ (Jinja2, every value escaped): rendered with the
# data the JSON endpoints give, so the pages show campaigns and counts without JavaScript.
_PAGES = Environment(
    loader=PackageLoader("producer", "static"), autoescape=True, undefined=StrictUndefined
)
def _duration(seconds: float) -> str:
    """A time to send as the preview shows it: `45 s`, `12 min`, `3 h 20 min`."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


_PAGES.filters.update(
    when=_when,
    number=lambda n: f"{int(n):,}",
    per_s=lambda n: f"{float(n):.1f}/s",
    duration=_duration,
)


def _render(name: str, **values: Any) -> str:
    """A page template from producer/static/ with these values."""
    return _PAGES.get_template(name).render(**values)


def _secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _error(status: int, message: str, **extra: Any) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    body = {"error": message, **extra}
    return _secured(JSONResponse(body, status_code=status, headers=headers))


class Sessions:
    """Signed session values and CSRF tokens, with a key derived from the API token."""

    def __init__(
        self, token: bytes, ttl_s: float = SESSION_TTL_S, clock: Callable[[], float] = time.time
    ) -> None:
        self._token = token
        self._key = hmac.new(token, KEY_LABEL, hashlib.sha256).digest()
        self.ttl_s = ttl_s
        self._clock = clock

    def _mac(self, *parts: str) -> str:
        return hmac.new(self._key, "|".join(parts).encode(), hashlib.sha256).hexdigest()

    def token_ok(self, given: str) -> bool:
        # compare_digest takes the same time wherever the first difference is.
        return hmac.compare_digest(given.strip().encode(), self._token)

    def new(self) -> str:
        sid = secrets.token_hex(16)
        expires = str(int(self._clock() + self.ttl_s))
        return f"{sid}.{expires}.{self._mac('session', sid, expires)}"

    def session_id(self, value: str | None) -> str | None:
        """The session id of a valid, unexpired cookie value; None otherwise."""
        parts = (value or "").split(".")
        if len(parts) != 3:
            return None
        sid, expires, mac = parts
        if not (sid and expires.isdigit() and mac):
            return None
        if not hmac.compare_digest(mac, self._mac("session", sid, expires)):
            return None
        return sid if int(expires) > self._clock() else None

    def csrf(self, sid: str) -> str:
        return self._mac("csrf", sid)

    def login_csrf(self, nonce: str) -> str:
        return self._mac("login", nonce)

    @staticmethod
    def same(given: str | None, expected: str) -> bool:
        return hmac.compare_digest((given or "").encode(), expected.encode())


def _set_cookie(
    response: Response, request: Request, name: str, value: str, max_age: int, path: str
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        httponly=True,
        samesite="strict",
        # Behind a TLS proxy uvicorn takes the scheme from X-Forwarded-Proto.
        secure=request.url.scheme == "https",
    )


async def _form(request: Request) -> dict[str, str]:
    """A small urlencoded form's fields (first value of each); empty for anything else."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        return {}
    try:
        body = await read_limited(request, MAX_FORM_BYTES)
    except (BodyTooLarge, ClientGone):
        return {}
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


CSRF_REFUSED = "The form's CSRF token is missing or wrong: reload the page and try again."


def _field(form: Any, name: str) -> str:
    """A text field of a multipart form ('' when absent or a file)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


class Dashboard:
    """The dashboard's endpoints, sharing the session keys and the failure counts."""

    def __init__(self, token: bytes) -> None:
        self.sessions = Sessions(token)
        self.failures = data.FailureCounts()

    def _sid(self, request: Request) -> str | None:
        return self.sessions.session_id(request.cookies.get(SESSION_COOKIE))

    def _login_page(self, request: Request, message: str = "", status: int = 200) -> Response:
        nonce = secrets.token_hex(16)
        page = _render(
            "login.html",
            csrf=self.sessions.login_csrf(nonce),
            message=message,
            hidden="" if message else "hidden",
        )
        response = _secured(HTMLResponse(page, status_code=status))
        _set_cookie(response, request, LOGIN_COOKIE, nonce, LOGIN_TTL_S, "/login")
        return response

    async def page(self, request: Request) -> Response:
        """GET /: the dashboard when signed in, else the sign-in form. The campaigns and the
        trunks are in the page as sent (the script keeps them up to date)."""
        sid = self._sid(request)
        if sid is None:
            return self._login_page(request)
        ledger = request.app.state.api.ledger
        try:
            campaigns = (await data.campaigns(ledger))["campaigns"]
            trunks = (await data.trunks(ledger))["trunks"]
        except RedisError as exc:
            # The page still loads; its script says Redis is unavailable as it polls.
            log.error("dashboard_page_redis_unavailable", error=str(exc))
            campaigns = trunks = None
        return self._dashboard(sid, "overview", "Campaigns", campaigns=campaigns, trunks=trunks)

    async def campaign_page(self, request: Request) -> Response:
        """GET /campaigns/{cid}: a campaign's page, its figures and counts in it as sent."""
        sid = self._sid(request)
        if sid is None:
            return _secured(RedirectResponse("/", status_code=303))
        cid = str(request.path_params["cid"])
        ledger = request.app.state.api.ledger
        try:
            known = keys.CAMPAIGN_ID.fullmatch(cid)
            found = await data.campaign(ledger, cid, self.failures) if known else None
        except RedisError as exc:
            log.error("dashboard_page_redis_unavailable", error=str(exc))
            return self._dashboard(sid, "campaign", "Campaign", status=503)
        if found is None:
            return self._dashboard(sid, "overview", "Campaigns", status=404)
        title = found["status"]["name"] or "(no name)"
        return self._dashboard(sid, "campaign", title, campaign=found)

    # --- a new campaign: upload, preview, confirm --------------------------------------------

    async def new_campaign(self, request: Request) -> Response:
        """GET /campaigns/new: the form (a CSV upload, the source, the text, a name)."""
        sid = self._sid(request)
        if sid is None:
            return _secured(RedirectResponse("/", status_code=303))
        return self._new_page(sid)

    async def preview_campaign(self, request: Request) -> Response:
        """POST /campaigns/new: check the upload as a dry run and show its preview; what was
        uploaded is kept as a draft for the confirmation (ledger/drafts.py)."""
        sid = self._sid(request)
        if sid is None:
            return _secured(RedirectResponse("/", status_code=303))
        length = request.headers.get("content-length", "")
        if not length.isdigit() or int(length) > MAX_UPLOAD_BYTES:
            limit = MAX_UPLOAD_BYTES // (1024 * 1024)
            return self._new_page(sid, error=f"The upload is over {limit} MiB.", status=413)
        try:
            async with request.form(
                max_files=1, max_fields=8, max_part_size=MAX_FIELD_BYTES
            ) as form:
                csrf = _field(form, "csrf")
                values = {name: _field(form, name).strip() for name in ("source", "text", "name")}
                upload = form.get("recipients")
                named = isinstance(upload, UploadFile) and bool(upload.filename)
                data = await upload.read() if named else b""  # type: ignore[union-attr]
                file_name = str(upload.filename) if named else ""  # type: ignore[union-attr]
        except (MultiPartException, ClientGone, ValueError) as exc:
            return self._new_page(sid, error=f"The form could not be read: {exc}", status=400)
        if not Sessions.same(csrf, self.sessions.csrf(sid)):
            log.warning("dashboard_csrf_refused", path=request.url.path)
            return self._new_page(sid, error=CSRF_REFUSED, status=403)
        if not named:
            return self._new_page(sid, error="Choose a CSV file.", values=values, status=422)
        draft = Draft(values["source"], values["text"], values["name"], file_name, data)
        api: Api = request.app.state.api
        try:
            outcome = await self._enqueue(api, draft, dry_run=True)
        except ApiError as exc:
            error = exc.problem.detail
            return self._new_page(sid, error=error, values=values, status=exc.problem.status)
        token = await put_draft(api.ledger.redis, draft)
        page = _render(
            "new.html",
            csrf=self.sessions.csrf(sid),
            preview=True,
            draft=draft,
            summary=outcome.body,
            token=token,
        )
        return _secured(HTMLResponse(page))

    async def send_campaign(self, request: Request) -> Response:
        """POST /campaigns/new/send: send the previewed draft, once (its token is the
        idempotency key: a second click or a resent form finds the same campaign)."""
        sid = self._sid(request)
        if sid is None:
            return _secured(RedirectResponse("/", status_code=303))
        form = await _form(request)
        if not Sessions.same(form.get("csrf"), self.sessions.csrf(sid)):
            log.warning("dashboard_csrf_refused", path=request.url.path)
            return self._new_page(sid, error=CSRF_REFUSED, status=403)
        api: Api = request.app.state.api
        token = form.get("draft", "")
        draft = await get_draft(api.ledger.redis, token)
        if draft is None:
            error = "That preview is over an hour old (or unknown): upload the file again."
            return self._new_page(sid, error=error, status=410)
        try:
            outcome = await self._enqueue(api, draft, dry_run=False, key=f"dashboard-{token}")
        except ApiError as exc:
            values = {"source": draft.source, "text": draft.text, "name": draft.name}
            error = exc.problem.detail
            return self._new_page(sid, error=error, values=values, status=exc.problem.status)
        cid = outcome.body["campaign_id"]
        log.info("dashboard_campaign_sent", campaign_id=cid, messages=outcome.body["queued"])
        return _secured(RedirectResponse(f"/campaigns/{cid}", status_code=303))

    @staticmethod
    async def _enqueue(
        api: Api, draft: Draft, *, dry_run: bool, key: str | None = None
    ) -> campaigns.Outcome:
        """The draft's recipients read as `smsq send --recipients` reads a file, then planned
        (and written unless dry_run) as POST /v1/campaigns does; ApiError for bad input."""
        upload = io.BytesIO(draft.data)
        upload.name = draft.file_name
        try:
            numbers = await run_in_threadpool(read_recipients, upload)
        except InputError as exc:
            raise ApiError(422, str(exc)) from None
        options = {"name": draft.name or None}
        return await run_in_threadpool(
            campaigns.enqueue, api.producer, draft.source, draft.text, numbers, options, key,
            dry_run,
        )  # fmt: skip

    def _new_page(
        self,
        sid: str,
        *,
        error: str = "",
        values: dict[str, str] | None = None,
        status: int = 200,
    ) -> Response:
        page = _render(
            "new.html",
            csrf=self.sessions.csrf(sid),
            preview=False,
            error=error,
            values=values or {"source": "", "text": "", "name": ""},
        )
        return _secured(HTMLResponse(page, status_code=status))

    def _dashboard(
        self,
        sid: str,
        view: str,
        title: str,
        *,
        status: int = 200,
        campaigns: list[dict[str, Any]] | None = None,
        trunks: list[dict[str, Any]] | None = None,
        campaign: dict[str, Any] | None = None,
    ) -> Response:
        page = _render(
            "dashboard.html",
            csrf=self.sessions.csrf(sid),
            view=view,
            title=title,
            at=time.time(),
            campaigns=campaigns,
            trunks=trunks,
            campaign=campaign,
            states=STATES,
        )
        return _secured(HTMLResponse(page, status_code=status))

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not Sessions.same(form.get("csrf"), self.sessions.login_csrf(nonce)):
            log.warning("dashboard_login_refused", why="form")
            return self._login_page(request, EXPIRED, 403)
        if not self.sessions.token_ok(form.get("token", "")):
            log.warning("dashboard_login_refused", why="token")
            await asyncio.sleep(LOGIN_FAILURE_DELAY_S)
            return self._login_page(request, REFUSED, 401)
        log.info("dashboard_login")
        response = _secured(RedirectResponse("/", status_code=303))
        _set_cookie(response, request, SESSION_COOKIE, self.sessions.new(), SESSION_TTL_S, "/")
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(self, request: Request) -> Response:
        sid = self._sid(request)
        if sid is not None:
            given = request.headers.get(CSRF_HEADER) or (await _form(request)).get("csrf")
            if not Sessions.same(given, self.sessions.csrf(sid)):
                log.warning("dashboard_csrf_refused", path=request.url.path)
                return _error(403, "missing or wrong CSRF token; reload the page")
            log.info("dashboard_logout")
        response = _secured(RedirectResponse("/", status_code=303))
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def asset(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        if name not in ASSETS:
            return _error(404, "Not Found")
        response = Response(_static(name), media_type=ASSETS[name])
        _secured(response).headers["cache-control"] = "no-cache"
        return response

    def api(
        self, handler: Handler, *, changes: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """A JSON endpoint for a signed-in browser: the session cookie (never the bearer
        token), the CSRF token when it changes something, and every failure as one answer."""

        async def endpoint(request: Request) -> Response:
            sid = self._sid(request)
            if sid is None:
                return _error(401, "not signed in")
            if changes and not Sessions.same(
                request.headers.get(CSRF_HEADER), self.sessions.csrf(sid)
            ):
                log.warning("dashboard_csrf_refused", path=request.url.path)
                return _error(403, "missing or wrong CSRF token; reload the page")
            return _secured(await answer(handler, request, _error))

        return endpoint

    async def campaigns(self, request: Request, api: Api) -> Response:
        return JSONResponse(await data.campaigns(api.ledger))

    async def campaign(self, request: Request, api: Api) -> Response:
        cid = campaign_id(request)
        found = await data.campaign(api.ledger, cid, self.failures)
        if found is None:
            raise ApiError(404, f"no campaign {cid!r}")
        return JSONResponse(found)

    async def trunks(self, request: Request, api: Api) -> Response:
        return JSONResponse(await data.trunks(api.ledger))

    async def rates(self, request: Request, api: Api) -> Response:
        """A trunk's claims and callbacks per second over the last hour, from the server's
        ring, so the chart is full on first view; `since` (Unix s): only the seconds after."""
        name = str(request.path_params["name"])
        if name not in api.ledger.settings.trunks():
            raise ApiError(404, f"no trunk {name!r}")
        since = request.query_params.get("since", "0")
        if not since.isdigit():
            raise ApiError(400, "since must be a Unix time in whole seconds")
        found = await api.ledger.trunk_rates(name, int(since))
        return JSONResponse(
            {
                "trunk": name,
                "start": found.start,
                "end": found.end,
                "claimed": found.claimed,
                "callbacks": found.callbacks,
            }
        )

    async def report(self, request: Request, api: Api) -> Response:
        """The per-recipient report as a CSV download, every message: what
        GET /v1/campaigns/{id}/messages?format=csv streams."""
        cid = campaign_id(request)
        c = await api.ledger.campaign(cid)
        if c is None:
            raise ApiError(404, f"no campaign {cid!r}")
        chunks = reports.render(api.ledger.redis, c, reports.Filter(frozenset(ALL_STATES)), "csv")
        return StreamingResponse(
            stream(chunks, "dashboard_report"),
            media_type="text/csv",
            headers={"content-disposition": f'attachment; filename="smsq-{cid}.csv"'},
        )


def routes(token: bytes) -> list[Route]:
    """The dashboard's routes, for producer.http's app; token is SMSQ_API_TOKEN's bytes."""
    d = Dashboard(token)
    api = "/dashboard/api/campaigns/{cid}"
    found: list[tuple[str, str, Callable[[Request], Awaitable[Response]]]] = [
        ("/", "GET", d.page),
        ("/campaigns/new", "GET", d.new_campaign),
        ("/campaigns/new", "POST", d.preview_campaign),
        ("/campaigns/new/send", "POST", d.send_campaign),
        ("/campaigns/{cid}", "GET", d.campaign_page),
        ("/login", "POST", d.login),
        ("/logout", "POST", d.logout),
        ("/dashboard/static/{name}", "GET", d.asset),
        ("/dashboard/api/campaigns", "GET", d.api(d.campaigns)),
        (api, "GET", d.api(d.campaign)),
        (f"{api}/report.csv", "GET", d.api(d.report)),
        (f"{api}/pause", "POST", d.api(control.pause_campaign, changes=True)),
        (f"{api}/resume", "POST", d.api(control.resume_campaign, changes=True)),
        (f"{api}/cancel", "POST", d.api(control.cancel_campaign, changes=True)),
        ("/dashboard/api/trunks", "GET", d.api(d.trunks)),
        ("/dashboard/api/trunks/{name}/rates", "GET", d.api(d.rates)),
    ]
    return [Route(path, endpoint, methods=[method]) for path, method, endpoint in found]
