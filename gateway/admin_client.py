"""The CLI's side of the admin API: one authenticated request to the running gateway."""

from __future__ import annotations

import aiohttp

from edgefleet.errors import UserError
from gateway.config import AdminConfig

TIMEOUT_S = 10.0


async def get(config: AdminConfig, path: str) -> dict:
    """``GET path`` -> the JSON answer, or ``UserError`` saying why the gateway did not answer."""
    try:
        token = config.token_file.read_text().strip()
    except OSError as exc:
        raise UserError(
            f"cannot read the admin token {config.token_file}: {exc.strerror}"
        ) from None
    listen = config.listen
    if listen.path is not None:
        connector = aiohttp.UnixConnector(path=str(listen.path))
        url = f"http://localhost{path}"
    else:
        connector = aiohttp.TCPConnector()
        url = f"http://{listen.host}:{listen.port}{path}"
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get(url, headers={"Authorization": f"Bearer {token}"}) as response,
        ):
            if response.status == 401:
                raise UserError(f"the gateway at {listen} refused the admin token")
            if response.status != 200:
                raise UserError(f"the gateway at {listen} answered HTTP {response.status}")
            return await response.json()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise UserError(f"no gateway answering at {listen} (is it running?): {exc}") from None
