"""The console on its own loopback TCP port (``[admin] console_listen``), for browsers: the
admin API may listen on a unix socket, which browsers cannot reach. This listener serves
``/ui/`` only; the JSON admin API stays on its own listener, behind the bearer token."""

from __future__ import annotations

import structlog
from aiohttp import web

from gateway.config import Listen
from gateway.console.app import Console, see_other

log = structlog.get_logger()


class ConsoleServer:
    def __init__(self, listen: Listen, console: Console):
        self.listen, self.console = listen, console
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> ConsoleServer:
        app = web.Application(client_max_size=64 * 1024)

        async def root(request: web.Request) -> web.Response:
            return see_other("/ui/")

        app.router.add_get("/", root)
        app.add_subapp("/ui/", self.console.app())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.listen.host, self.listen.port).start()
        log.info("console_listening", url=f"http://{self.listen}/ui/")
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()
