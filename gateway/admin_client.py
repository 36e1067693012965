"""The CLI's side of the admin API: one authenticated request to the running gateway."""

from __future__ import annotations

import aiohttp

from edgefleet.errors import UserError
from gateway import admin_token
from gateway.config import AdminConfig

TIMEOUT_S = 10.0


class Unreachable(UserError):
    """No gateway answered (not running, restarting, or too slow)."""


async def get(config: AdminConfig, path: str) -> dict:
    """``GET path`` -> the JSON answer, or ``UserError`` saying why the gateway did not answer."""
    return await request(config, "GET", path)


async def post(config: AdminConfig, path: str, body: dict, timeout_s: float = TIMEOUT_S) -> dict:
    """``POST path`` with a JSON body; a refusal by the gateway is a ``UserError`` with its
    reason (an import or a rollout start signs files, hence the longer timeouts callers pass)."""
    return await request(config, "POST", path, body, timeout_s)


async def request(
    config: AdminConfig,
    method: str,
    path: str,
    body: dict | None = None,
    timeout_s: float = TIMEOUT_S,
) -> dict:
    token = admin_token.read(config.token_file).decode("ascii")
    listen = config.listen
    if listen.path is not None:
        connector = aiohttp.UnixConnector(path=str(listen.path))
        url = f"http://localhost{path}"
    else:
        connector = aiohttp.TCPConnector()
        url = f"http://{listen.host}:{listen.port}{path}"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.request(method, url, headers=headers, json=body) as response,
        ):
            if response.status == 401:
                raise UserError(f"the gateway at {listen} refused the admin token")
            if 400 <= response.status < 500 and response.content_type == "application/json":
                answer = await response.json()
                raise UserError(str(answer.get("error", f"HTTP {response.status}")))
            if response.status == 404:
                raise UserError(f"the gateway at {listen} has no {path} (no [repository]?)")
            if response.status not in (200, 201):
                raise UserError(f"the gateway at {listen} answered HTTP {response.status}")
            return await response.json()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise Unreachable(f"no gateway answering at {listen} (is it running?): {exc}") from None
