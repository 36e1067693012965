"""The console's routes under ``/ui/``: sign-in, pages, their live fragments, static files.

Order of checks for every request (the ``guard`` middleware): static files and the sign-in form
need no session; everything else needs a live session (pages redirect to the sign-in form, the
JSON endpoints answer 401); every POST needs the session's CSRF token (form field ``csrf`` or
header ``X-CSRF-Token``) and a POST that changes the fleet needs the operator role, else 403.
Every answer carries a Content Security Policy that allows only the console's own script and
style sheet, and ``no-store``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import resources
from urllib.parse import quote

import structlog
from aiohttp import web

from gateway.console import pages
from gateway.console.backend import AdminCallError, ConsoleData
from gateway.console.queries import QueryError, device_query, rollout_body, select
from gateway.console.sessions import COOKIE, Role, Session, SessionLimits, SessionStore, role_for

log = structlog.get_logger()

SESSION_KEY = web.RequestKey("console_session", Session)
MAX_FORM_BYTES = 64 * 1024
STATIC = {"console.js": "application/javascript", "console.css": "text/css"}
OPEN_PATHS = ("/ui/login", "/ui/static/")
OPERATOR_POSTS = ("/ui/rollouts",)  # and everything below it
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Fragment = Callable[[web.Request], Awaitable[tuple[str, str]]]  # -> (title, html)


class Console:
    """The console's state (sessions) and its aiohttp application, one per listener."""

    def __init__(
        self,
        site: str,
        data: ConsoleData,
        admin_token: bytes,
        viewer_token: bytes | None,
        limits: SessionLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.site, self.data = site, data
        self.admin_token, self.viewer_token = admin_token, viewer_token
        self.sessions = SessionStore(limits or SessionLimits())
        self.clock = clock

    # -- the application ---------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_FORM_BYTES)
        fragments: dict[str, Fragment] = {
            "overview": self._overview,
            "devices": self._devices,
            "device/{id}": self._device,
            "releases": self._releases,
            "rollouts": self._rollouts,
            "rollout/{id}": self._rollout,
            "data": self._data,
        }
        app.add_routes(
            [
                web.get("/", self._page("overview", "/ui/")),
                web.get("/login", self._login_form),
                web.post("/login", self._login),
                web.post("/logout", self._logout),
                web.get("/devices", self._page("devices", "/ui/devices")),
                web.get("/devices/{id}", self._page("device/{id}", "/ui/devices")),
                web.get("/releases", self._page("releases", "/ui/releases")),
                web.get("/rollouts", self._page("rollouts", "/ui/rollouts")),
                web.post("/rollouts", self._start),
                web.get("/rollouts/{id}", self._page("rollout/{id}", "/ui/rollouts")),
                web.post("/rollouts/{id}/{action:pause|resume|abort}", self._act),
                web.get("/data", self._page("data", "/ui/data")),
                web.get("/static/{name}", self._static),
            ]
            + [web.get(f"/api/live/{name}", self._live(fn)) for name, fn in fragments.items()]
        )
        self._fragments = fragments
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            response = await self._checked(request, handler)
        except web.HTTPException as exc:
            exc.headers.update(HEADERS)
            raise
        response.headers.update(HEADERS)
        return response

    async def _checked(self, request: web.Request, handler) -> web.StreamResponse:
        path = request.path
        if path.startswith(OPEN_PATHS):
            return await handler(request)
        session = self.sessions.get(request.cookies.get(COOKIE), self.clock())
        if session is None:
            if path.startswith("/ui/api/"):
                return web.json_response({"error": "not signed in"}, status=401)
            return see_other("/ui/login")
        request[SESSION_KEY] = session
        if request.method == "POST":
            form = await request.post()
            given = request.headers.get("X-CSRF-Token") or form.get("csrf")
            if not isinstance(given, str) or not session.csrf_ok(given):
                log.warning("console_csrf_refused", path=path)
                return self._refused(request, "The form is stale or forged (CSRF token).")
            if path.startswith(OPERATOR_POSTS) and session.role is not Role.OPERATOR:
                log.warning("console_viewer_refused", path=path)
                return self._refused(request, "A viewer may not change the fleet.")
        return await handler(request)

    def _refused(self, request: web.Request, message: str) -> web.Response:
        return self._html(request, "Refused", pages.notice(message), status=403)

    # -- rendering ---------------------------------------------------------------------------

    def _html(self, request: web.Request, title: str, body: str, current="", status=200):
        session = request.get(SESSION_KEY)
        text = pages.layout(
            title,
            self.site,
            body,
            role=session.role.value if session else None,
            csrf=session.csrf if session else None,
            current=current,
        )
        return web.Response(text=text, content_type="text/html", status=status)

    def _page(self, name: str, current: str):
        async def handler(request: web.Request) -> web.Response:
            try:
                title, fragment = await self._fragments[name](request)
            except QueryError as exc:
                return self._html(request, "Bad request", pages.notice(str(exc)), current, 400)
            except web.HTTPNotFound:
                return self._html(request, "Not found", pages.notice("No such page."), current, 404)
            except AdminCallError as exc:
                return self._html(request, "Error", pages.notice(str(exc)), current, exc.status)
            source = f"/ui/api/live/{name.split('/')[0]}"
            if "id" in request.match_info:
                source += "/" + quote(request.match_info["id"], safe="")
            if request.query_string:
                source += "?" + request.query_string
            before, after = await self._frame(request, name)
            body = before + pages.live(source, fragment) + after
            return self._html(request, title, body, current)

        return handler

    async def _frame(self, request: web.Request, name: str) -> tuple[str, str]:
        """What a page shows around its live part: filters, forms and buttons."""
        session = request[SESSION_KEY]
        operator = session.role is Role.OPERATOR
        if name == "devices":
            models = sorted({d.model for d in self.data.inventory.devices.values() if d.model})
            return pages.device_filters(device_query(request.query), models), ""
        if name == "rollouts" and operator:
            releases = await self.data.releases() if self.data.releases else None
            return "", pages.start_form(session.csrf, releases)
        if name == "rollout/{id}" and operator:
            return pages.rollout_actions(request.match_info["id"], session.csrf), ""
        return "", ""

    def _live(self, fragment: Fragment):
        async def handler(request: web.Request) -> web.Response:
            try:
                _, html = await fragment(request)
            except QueryError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            except AdminCallError as exc:
                return web.json_response({"error": str(exc)}, status=exc.status)
            return web.json_response({"html": html})

        return handler

    # -- fragments ---------------------------------------------------------------------------

    async def _overview(self, request: web.Request) -> tuple[str, str]:
        status = await self.data.status()
        devices = list(self.data.inventory.devices.values())
        return "Fleet", pages.overview(status, devices, self.data.dead_letter_stats())

    async def _devices(self, request: web.Request) -> tuple[str, str]:
        query = device_query(request.query)
        rows, total = select(list(self.data.inventory.devices.values()), query)
        return "Devices", pages.devices(rows, total, query)

    async def _device(self, request: web.Request) -> tuple[str, str]:
        device = self.data.inventory.devices.get(request.match_info["id"])
        if device is None:
            raise web.HTTPNotFound()
        return f"Device {device.device}", pages.device(device)

    async def _releases(self, request: web.Request) -> tuple[str, str]:
        rows = await self.data.releases() if self.data.releases else None
        return "Releases", pages.releases(rows)

    async def _rollouts(self, request: web.Request) -> tuple[str, str]:
        if self.data.releases is None:
            return "Rollouts", pages.releases(None)
        listing = await self.data.admin.call("GET", "/v1/rollouts")
        return "Rollouts", pages.rollouts(listing.get("rollouts", []))

    async def _rollout(self, request: web.Request) -> tuple[str, str]:
        rollout_id = request.match_info["id"]
        try:
            view = await self.data.admin.call("GET", "/v1/rollouts/" + quote(rollout_id, safe=""))
        except AdminCallError as exc:
            if exc.status == 404:
                raise web.HTTPNotFound() from None
            raise
        return f"Rollout {rollout_id}", pages.rollout(view)

    async def _data(self, request: web.Request) -> tuple[str, str]:
        campaigns = await self.data.admin.call("GET", "/v1/campaigns")
        traffic = (await self.data.status()).get("traffic", {})
        return "Data", pages.data(campaigns.get("campaigns", []), traffic)

    # -- sign-in -----------------------------------------------------------------------------

    async def _login_form(self, request: web.Request) -> web.Response:
        return web.Response(text=pages.login(self.site), content_type="text/html")

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        given = form.get("token")
        role = None
        if isinstance(given, str):
            role = role_for(given, self.admin_token, self.viewer_token)
        if role is None:
            log.warning("console_sign_in_refused", peer=request.remote)
            text = pages.login(self.site, "That token is not accepted.")
            return web.Response(text=text, content_type="text/html", status=401)
        self.sessions.end(request.cookies.get(COOKIE))  # a fresh id at every sign-in
        sid, _ = self.sessions.create(role, self.clock())
        log.info("console_signed_in", role=role.value, peer=request.remote)
        response = see_other("/ui/")
        response.set_cookie(COOKIE, sid, path="/ui/", httponly=True, samesite="Strict")
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        self.sessions.end(request.cookies.get(COOKIE))
        response = see_other("/ui/login")
        response.del_cookie(COOKIE, path="/ui/")
        return response

    # -- actions -----------------------------------------------------------------------------

    async def _start(self, request: web.Request) -> web.StreamResponse:
        try:
            body = rollout_body(await request.post())
            started = await self.data.admin.call("POST", "/v1/rollouts", body)
        except QueryError as exc:
            return await self._action_refused(request, str(exc), 400)
        except AdminCallError as exc:
            return await self._action_refused(request, str(exc), exc.status)
        log.info("console_rollout_started", rollout=started.get("id"))
        return see_other("/ui/rollouts/" + quote(str(started.get("id")), safe=""))

    async def _act(self, request: web.Request) -> web.StreamResponse:
        rollout_id, action = request.match_info["id"], request.match_info["action"]
        target = "/ui/rollouts/" + quote(rollout_id, safe="")
        try:
            await self.data.admin.call("POST", f"/v1{target.removeprefix('/ui')}/{action}")
        except AdminCallError as exc:
            return await self._action_refused(request, str(exc), exc.status)
        return see_other(target)

    async def _action_refused(self, request: web.Request, message: str, status: int):
        body = pages.notice(message) + '<p><a href="/ui/rollouts">Back to the rollouts</a></p>'
        return self._html(request, "Not done", body, "/ui/rollouts", status)

    # -- static files ------------------------------------------------------------------------

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        data = resources.files("gateway.console").joinpath("static", name).read_bytes()
        return web.Response(body=data, content_type=STATIC[name])


def see_other(location: str) -> web.Response:
    """303: after a POST the browser loads the page with GET (a reload does not repeat it)."""
    return web.Response(status=303, headers={"Location": location})
