"""The admin API: HTTP on a unix socket or a loopback port, every request with a bearer token.

Parts contribute routes (``web.RouteDef``) when the daemon composes them, so a new part adds its
commands without this module knowing it. The token lives in a file readable only by the
gateway's user (``admin_token``); the daemon creates it on first start and the CLI reads it.

The operator console is mounted at ``/ui/`` as a sub-application with its own session-cookie
authentication. The bearer check is skipped only for requests the router resolved into that
sub-application, decided by the route matched, not by the path's text, so no path spelling
reaches a ``/v1/`` handler without the token.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from edgefleet import __version__
from gateway import admin_token
from gateway.config import AdminConfig
from gateway.console.app import Console
from gateway.devices.inventory import Inventory
from gateway.telemetry.spool import SpoolStats

if TYPE_CHECKING:
    from gateway.serving.renewal import Expiry

log = structlog.get_logger()


def status_source(
    site: str,
    inventory: Inventory,
    stats: SpoolStats,
    metadata_expiry: Callable[[], Expiry | None],
    traffic: Callable[[], Awaitable[dict]],
) -> Callable[[], Awaitable[dict]]:
    """What ``GET /v1/status`` answers (the console's fleet page shows the same);
    ``traffic`` gives record bytes in from devices and out to the cloud."""

    async def status() -> dict:
        expiry = metadata_expiry()
        return {
            "metadata": expiry.to_json() if expiry else None,
            "site": site,
            "version": __version__,
            "devices": len(inventory.devices),
            "devices_online": inventory.online(),
            "spool": {
                "records": stats.records,
                "bytes": stats.bytes,
                "rows": stats.rows,
                "dropped": stats.dropped,
            },
            "traffic": await traffic(),
        }

    return status


def core_routes(inventory: Inventory, status: Callable[[], Awaitable[dict]]) -> list[web.RouteDef]:
    """Devices and status."""

    async def devices(request: web.Request) -> web.Response:
        return web.json_response({"devices": [d.to_json() for d in inventory.snapshot()]})

    async def status_route(request: web.Request) -> web.Response:
        return web.json_response(await status())

    return [web.get("/v1/devices", devices), web.get("/v1/status", status_route)]


class AdminServer:
    def __init__(
        self,
        config: AdminConfig,
        token: bytes,
        routes: Iterable[web.RouteDef],
        console: Console | None = None,
    ):
        self.config, self.token, self.console = config, token, console
        self.routes = list(routes)
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> AdminServer:
        token = self.token
        console_app = self.console.app() if self.console is not None else None

        @web.middleware
        async def auth(request: web.Request, handler):
            if console_app is not None and request.match_info.apps[-1] is console_app:
                return await handler(request)  # the console checks its own session cookie
            if not admin_token.authorized(request.headers.get("Authorization"), token):
                return web.json_response({"error": "unauthorized"}, status=401)
            return await handler(request)

        app = web.Application(middlewares=[auth], client_max_size=1024 * 1024)
        app.add_routes(self.routes)
        if console_app is not None:
            app.add_subapp("/ui/", console_app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        listen = self.config.listen
        if listen.path is not None:
            listen.path.parent.mkdir(parents=True, exist_ok=True)
            listen.path.unlink(missing_ok=True)
            site = web.UnixSite(self._runner, str(listen.path))
            await site.start()
            os.chmod(listen.path, 0o660)
        else:
            site = web.TCPSite(self._runner, listen.host, listen.port)
            await site.start()
        log.info("admin_api_listening", listen=str(listen))
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()
