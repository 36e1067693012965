"""The site around a simulated fleet: the broker, the gateway daemon as its own process (so it
can be killed with SIGKILL and started again), and the operator's offline signing repository."""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from edgefleet import tomlconfig
from edgefleet.errors import UserError
from edgefleet.processes import start_edgefleet, terminate
from firmware_sim.broker import BrokerConfig, BrokerError, Mosquitto, find_mosquitto, free_port
from firmware_sim.fleet.clock import ClockFile
from firmware_sim.fleet.embedded_broker import EMBEDDED, EmbeddedBroker
from gateway import admin_client
from gateway import config as gateway_config
from protocol.broker_auth import command_user

GATEWAY_USER = "gateway"
MONITOR_USER = "monitor"
WITNESS_USER = "witness"  # a site user who watches what impersonators manage to publish
MALFORMED_METRIC = "edgefleet_gateway_ingest_malformed"


class SiteBroker:
    """The site's broker, by ``--broker``: a URL (the user's broker, which the simulator cannot
    restart), ``embedded`` (amqtt, MQTT 3.1.1, see ``embedded_broker``), or nothing: mosquitto on
    a free loopback port with persistence and the device ACLs, or amqtt when mosquitto is not
    installed."""

    def __init__(self, workdir: Path, choice: str | None) -> None:
        choice = broker_choice(choice)
        self.external_url = None if choice in (None, EMBEDDED) else choice
        self.users: dict[str, str] = {}
        self.process: Mosquitto | EmbeddedBroker | None = None
        if self.external_url is not None:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        # amqtt ignores passwords, but keeps the sessions of named clients only
        users = (GATEWAY_USER, MONITOR_USER, WITNESS_USER)
        self.users = {user: secrets.token_urlsafe(16) for user in users}
        # the gateway's command connection is a session of its own, hence a user of its own
        self.users[command_user(GATEWAY_USER)] = self.users[GATEWAY_USER]
        if choice is None:
            config = BrokerConfig(workdir=workdir, port=free_port(), users=self.users)
            self.process = Mosquitto(config)
        elif importlib.util.find_spec("amqtt") is None:
            raise UserError(
                "no broker: install mosquitto, or amqtt for the built-in one "
                "(pip install 'edgefleet[sim]'), or pass --broker mqtt://HOST:PORT"
            )
        else:
            self.process = EmbeddedBroker(workdir, free_port())

    @property
    def kind(self) -> str:
        if isinstance(self.process, Mosquitto):
            return "mosquitto"
        return "embedded" if self.process else "external"

    @property
    def url(self) -> str:
        return self.external_url or self.process.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].rstrip("/"))

    @property
    def protocol(self) -> str:
        """What the gateway speaks: amqtt has no MQTT 5."""
        return "3.1.1" if self.kind == "embedded" else "5"

    def user(self, name: str) -> tuple[str, str] | None:
        return (name, self.users[name]) if name in self.users else None

    def device_login(self, device: str) -> dict:
        """``[mqtt]`` keys for a device: mosquitto's password-file login (the user name is the
        device id); amqtt ignores passwords but forgets the sessions of clients without a name."""
        if isinstance(self.process, Mosquitto):
            user, password = self.process.login(device)
            return {"username": user, "password": password}
        return {"username": device} if self.kind == "embedded" else {}

    def login(self, device: str) -> tuple[str, str]:
        """The device's own user name and password, as its agent logs in."""
        keys = self.device_login(device)
        return keys.get("username", device), keys.get("password", "")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def why_not_controllable(self) -> str | None:
        """Why broker faults cannot be injected, or None when they can."""
        if self.kind == "external":
            return "the broker was given with --broker; the simulator cannot stop it"
        if self.kind == "embedded":
            return "the built-in broker keeps no state across a restart; install mosquitto"
        return None

    def start(self) -> None:
        if self.process:
            try:
                self.process.start()
            except BrokerError as exc:
                raise UserError(str(exc)) from None

    def stop(self) -> None:
        if self.process:
            self.process.stop()

    def close(self) -> None:
        if self.process and self.process.running:
            self.process.stop()


def broker_choice(given: str | None) -> str | None:
    """``--broker`` as it will be used: nothing (the simulator's mosquitto) becomes ``embedded``
    when mosquitto is not installed."""
    if given is not None:
        return given
    try:
        find_mosquitto()
    except BrokerError:
        return EMBEDDED
    return None


@dataclass(frozen=True)
class ConsoleAccess:
    url: str
    viewer_token: str
    admin_token_file: Path


class GatewayProcess:
    """``edgefleet gateway run`` with a generated config; the admin API is how it is driven.
    ``clock``: the process runs on that moveable clock. Every exit the simulator did not cause
    is counted in ``unplanned_exits``; ``malformed`` keeps the ingest's malformed-message
    counter across restarts (scraped just before each kill)."""

    def __init__(self, workdir: Path, tables: dict, clock: ClockFile | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "gateway.toml"
        self.config_path.write_text(tomlconfig.dumps(tables))
        self.config = gateway_config.load(self.config_path)
        self.clock = clock
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.expected_exit = False
        self.unplanned_exits: list[str] = []
        self.malformed_before = 0.0  # counted by gateway processes that are gone

    @property
    def log_path(self) -> Path:
        return self.workdir / "gateway.log"

    # The deadline ends in a UserError naming the gateway's log, not a bare TimeoutError.
    async def start(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        self.starts += 1
        self.expected_exit = False
        self.proc = start_edgefleet(
            ["gateway", "run", "--config", str(self.config_path)],
            self.log_path,
            env=self.clock.env() if self.clock else None,
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

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running else None

    def exited_unplanned(self) -> bool:
        """True once per exit nobody asked for (the caller starts it again)."""
        if self.proc is None or self.running or self.expected_exit:
            return False
        self.unplanned_exits.append(
            f"the gateway exited with code {self.proc.returncode} (see {self.log_path})"
        )
        self.expected_exit = True
        return True

    async def kill(self) -> None:
        if self.running:
            self.malformed_before += await self.scrape_malformed()
            self.expected_exit = True
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None:
            self.expected_exit = True
            terminate(self.proc, timeout)

    async def scrape_malformed(self) -> float:
        """``edgefleet_gateway_ingest_malformed_total``, summed over its labels, as Prometheus
        would scrape it from the running gateway (0 when it does not answer)."""
        listen = self.config.metrics
        url = f"http://{listen.host}:{listen.port}/metrics"
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as answer:
                text = await answer.text()
        except (aiohttp.ClientError, TimeoutError):
            return 0.0
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == MALFORMED_METRIC
            for sample in family.samples
            if sample.name == f"{MALFORMED_METRIC}_total"
        )

    async def malformed_total(self) -> float:
        return self.malformed_before + await self.scrape_malformed()

    def console(self) -> ConsoleAccess:
        """Where the console answers and how to sign in to it (the gateway made the tokens at
        its first start)."""
        admin = self.config.admin
        return ConsoleAccess(
            f"http://{admin.console_listen}/ui/",
            admin.viewer_token_file.read_text().strip(),
            admin.token_file,
        )

    async def get(self, path: str) -> dict:
        return await admin_client.get(self.config.admin, path)

    async def post(self, path: str, body: dict, timeout_s: float = 120.0) -> dict:
        return await admin_client.post(self.config.admin, path, body, timeout_s)


def gateway_tables(
    workdir: Path,
    broker: SiteBroker,
    site: str,
    cloud: tuple[str, Path],
    keys: Path,
    repo: tuple[int, str],
) -> dict:
    """``cloud``: the ingest URL and the file of its token; ``repo``: the port the repository
    server listens on, and the URL devices use for it."""
    user = broker.user(GATEWAY_USER)
    mqtt = {
        "url": broker.url,
        "client_id": GATEWAY_USER if user else f"gateway-{site}",
        "reconnect_max_s": 1.0,
        "protocol": broker.protocol,
    }
    if user:
        mqtt |= {"username": user[0], "password": user[1]}
    return {
        "gateway": {"site": site, "data_dir": workdir / "data"},
        "mqtt": mqtt,
        "uplink": {
            "sink": "http",
            "url": cloud[0],
            "token_file": cloud[1],
            "timeout_s": 10.0,
            "backoff_base_s": 0.05,
            "backoff_cap_s": 1.0,
            "batch_age_s": 0.2,
        },
        "admin": {
            "listen": f"unix:{workdir / 'admin.sock'}",
            "console_listen": f"127.0.0.1:{free_port()}",
        },
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "repository": {
            "dir": workdir / "served",
            "keys": keys,
            "listen": f"127.0.0.1:{repo[0]}",
            "public_url": repo[1],
            "timestamp_check_s": 1.0,
        },
        "rollouts": {"tick_s": 0.2, "reoffer_s": 15.0},
    }
