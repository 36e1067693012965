"""Admin routes for dead letters: list them, and send refused records again.

``GET /v1/dead-letters`` lists the newest letters with the totals. ``POST
/v1/dead-letters/resend`` (``{"ids": [...]}``, empty: every letter of refused records) moves
letters back into the uplink spool in one transaction, so each record is either still a dead
letter or waiting for the cloud again, never both or neither.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from aiohttp import web

from gateway.store import Store, transaction
from gateway.telemetry.dead_letters import DeadLetters
from gateway.telemetry.spool import SpoolRow, UplinkSpool

MAX_LISTED = 1000
MAX_IDS = 10_000


def routes(
    store: Store, dead_letters: DeadLetters, spool: UplinkSpool, wake: Callable[[], None]
) -> list[web.RouteDef]:
    async def listing(request: web.Request) -> web.Response:
        entries = await store.run(dead_letters.list_sync, MAX_LISTED)
        stats = dataclasses.asdict(dead_letters.stats)
        return web.json_response({"dead_letters": entries, "stats": stats})

    def resend_sync(conn, ids: list[int]) -> dict:
        def work() -> dict:
            taken = dead_letters.take_sync(conn, ids)
            rows = [SpoolRow(records, data) for records, data in taken]
            dropped = spool.append_sync(conn, rows) if rows else 0
            records = sum(row.records for row in rows)
            return {"resent": len(rows), "records": records, "spool_dropped": dropped}

        return transaction(conn, work)

    async def resend(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        ids = body.get("ids", []) if isinstance(body, dict) else None
        if (
            not isinstance(ids, list)
            or len(ids) > MAX_IDS
            or not all(type(i) is int and 0 < i < 2**63 for i in ids)
        ):
            return web.json_response({"error": "ids must be a list of letter ids"}, status=400)
        try:
            answer = await store.run(resend_sync, ids)
        except LookupError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        if answer["resent"]:
            wake()
        return web.json_response(answer)

    return [
        web.get("/v1/dead-letters", listing),
        web.post("/v1/dead-letters/resend", resend),
    ]
