"""The site around a simulated fleet: the broker, the gateway daemon as its own process (so it
can be killed with SIGKILL and started again), and the operator's offline signing repository."""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import time
from pathlib import Path

from edgefleet import tomlconfig
from edgefleet.errors import UserError
from edgefleet.processes import start_edgefleet
from gateway import admin_client
from gateway import config as gateway_config
from gateway.broker import BrokerConfig, BrokerError, Mosquitto, find_mosquitto, free_port

GATEWAY_USER = "gateway"
MONITOR_USER = "monitor"


class SiteBroker:
    """mosquitto on a free loopback port, or a broker the user runs (``--broker URL``), which
    the simulator cannot restart."""

    def __init__(self, workdir: Path, external_url: str | None) -> None:
        self.external_url = external_url
        self.users: dict[str, str] = {}
        self.mosquitto: Mosquitto | None = None
        if external_url is None:
            try:
                find_mosquitto()
            except BrokerError as exc:
                raise UserError(f"{exc}; or pass --broker mqtt://127.0.0.1:PORT") from None
            self.users = {user: secrets.token_urlsafe(16) for user in (GATEWAY_USER, MONITOR_USER)}
            workdir.mkdir(parents=True, exist_ok=True)
            self.mosquitto = Mosquitto(
                BrokerConfig(workdir=workdir, port=free_port(), users=self.users)
            )

    @property
    def url(self) -> str:
        return self.external_url or self.mosquitto.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].rstrip("/"))

    def user(self, name: str) -> tuple[str, str] | None:
        return (name, self.users[name]) if name in self.users else None

    def controllable(self) -> bool:
        return self.mosquitto is not None

    def start(self) -> None:
        if self.mosquitto:
            self.mosquitto.start()

    def stop(self) -> None:
        if self.mosquitto:
            self.mosquitto.stop()

    def close(self) -> None:
        if self.mosquitto and self.mosquitto.running:
            self.mosquitto.stop()


class GatewayProcess:
    """``edgefleet gateway run`` with a generated config; the admin API is how it is driven."""

    def __init__(self, workdir: Path, tables: dict) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "gateway.toml"
        self.config_path.write_text(tomlconfig.dumps(tables))
        self.config = gateway_config.load(self.config_path)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    async def start(self, timeout: float = 30.0) -> None:
        self.starts += 1
        self.proc = start_edgefleet(
            ["gateway", "run", "--config", str(self.config_path)], self.workdir / "gateway.log"
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise UserError(f"the gateway exited at start; see {self.workdir / 'gateway.log'}")
            try:
                await self.get("/v1/status")
                return
            except UserError:  # no admin token yet, or not answering yet
                if time.monotonic() > deadline:
                    raise UserError("the gateway did not answer within 30 s") from None
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    async def get(self, path: str) -> dict:
        return await admin_client.get(self.config.admin, path)

    async def post(self, path: str, body: dict, timeout_s: float = 120.0) -> dict:
        return await admin_client.post(self.config.admin, path, body, timeout_s)


def gateway_tables(
    workdir: Path, broker: SiteBroker, site: str, cloud_url: str, keys: Path, repo: tuple[int, str]
) -> dict:
    """``repo``: the port the repository server listens on, and the URL devices use for it."""
    user = broker.user(GATEWAY_USER)
    mqtt = {"url": broker.url, "client_id": f"gateway-{site}", "reconnect_max_s": 1.0}
    if user:
        mqtt |= {"username": user[0], "password": user[1]}
    return {
        "gateway": {"site": site, "data_dir": workdir / "data"},
        "mqtt": mqtt,
        "uplink": {
            "sink": "http",
            "url": cloud_url,
            "timeout_s": 10.0,
            "backoff_base_s": 0.05,
            "backoff_cap_s": 1.0,
            "batch_age_s": 0.2,
        },
        "admin": {"listen": f"unix:{workdir / 'admin.sock'}"},
        "metrics": {"listen": ""},
        "repository": {
            "dir": workdir / "served",
            "keys": keys,
            "listen": f"127.0.0.1:{repo[0]}",
            "public_url": repo[1],
            "timestamp_check_s": 1.0,
        },
        "rollouts": {"tick_s": 0.2, "reoffer_s": 15.0},
    }
