"""``edgefleet cloud serve``'s life: the receiver on a TCP site until SIGTERM or SIGINT, then
the requests in progress finish (aiohttp's graceful shutdown) and the process exits 0."""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
from pathlib import Path

import structlog
from aiohttp import web

from cloud.receiver import Receiver, ReceiverConfig

log = structlog.get_logger()


async def serve(
    config: ReceiverConfig,
    host: str,
    port: int,
    cert: Path | None = None,
    key: Path | None = None,
) -> None:
    context = None
    if cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    runner = web.AppRunner(Receiver(config).app(), access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port, ssl_context=context)
        await site.start()
        bound = runner.addresses[0][1]
        scheme = "https" if context else "http"
        shown = f"[{host}]" if ":" in host else host
        url = f"{scheme}://{shown}:{bound}/ingest"
        print(url, flush=True)
        log.info("cloud_serving", url=url, dataset=config.dataset)
        await stop.wait()
    finally:
        await runner.cleanup()
        log.info("cloud_stopped")
    sys.stdout.flush()
