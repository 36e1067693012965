"""Everything a scenario runs against, brought up in order and taken down in reverse: the
operator's signing repository, the cloud ingest, the broker, the gateway, the devices (and the
MCUs hanging off some of them), and the monitor that watches them all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent.updater.cycle import Cycle, CycleConfig
from agent.updater.device import UpdaterDevice
from agent.updater.store import Offer
from edgefleet.errors import UserError
from firmware_sim.broker import free_port
from firmware_sim.fleet.clock import ClockError, SiteClocks
from firmware_sim.fleet.cloud import Cloud
from firmware_sim.fleet.devices import (
    DEVICE_NICE,
    LightDevice,
    SimDevice,
    SimulatedDevice,
    agent_tables,
)
from firmware_sim.fleet.impersonation import Attempt
from firmware_sim.fleet.light_hosts import LightHosts
from firmware_sim.fleet.mcus import BAUD, ImageSigner, SimMcu, protocol_of
from firmware_sim.fleet.mitm import TIMESTAMP, RepositoryRelay
from firmware_sim.fleet.monitor import Monitor
from firmware_sim.fleet.partition import Relay
from firmware_sim.fleet.releases import QUICK, sign_scenario_release
from firmware_sim.fleet.scenario import BROKER_FAULTS, Scenario, device_name
from firmware_sim.fleet.site import MONITOR_USER, GatewayProcess, SiteBroker, gateway_tables
from firmware_sim.fleet.usage import UsageSampler
from gateway.releases.model_inspect import ReleaseOptions
from gateway.releases.repository import Repository
from protocol.topics import default_prefix

SITE = "sim"
log = structlog.get_logger()


@dataclass
class RolloutRecord:
    id: str
    name: str
    version: int
    mcu: bool


@dataclass
class Counters:
    agent_restarts: int = 0
    crashes: list[str] = field(default_factory=list)
    poisoned: int = 0  # malformed messages the broker took from poisoning clients
    impersonations: list[Attempt] = field(default_factory=list)


class World:
    def __init__(self, scenario: Scenario, workdir: Path, broker_url: str | None) -> None:
        self.scenario, self.workdir = scenario, workdir
        self.fleet = scenario.fleet
        self.prefix = default_prefix(SITE)
        self.broker = SiteBroker(workdir / "broker", broker_url)
        broker_faults = scenario.faults_of(BROKER_FAULTS)
        if broker_faults and (reason := self.broker.why_not_controllable()):
            step = broker_faults[0]
            raise UserError(f"step {step.index} ({step.describe()}) cannot run: {reason}")
        self.clocks: SiteClocks | None = None
        if clock_faults := scenario.clock_faults():
            try:
                self.clocks = SiteClocks(workdir / "clocks")
            except ClockError as exc:
                step = clock_faults[0]
                raise UserError(
                    f"step {step.index} ({step.describe()}) cannot run: {exc}"
                ) from None
        self.drifted: set[str] = set()  # devices a drift fault moved
        self.labelled: dict[str, int] = {}  # sample id -> the label the simulator gave it
        self.evaluations: list[dict] = []
        self.cloud = Cloud(scenario.seed, workdir / "cloud" / "dataset")
        self.operator: Repository | None = None
        self.gateway: GatewayProcess | None = None
        self.devices: list[SimulatedDevice] = []
        self.light: LightHosts | None = None
        if self.fleet.mode == "light":  # one host process per core
            self.light = LightHosts(workdir / "light", os.cpu_count() or 1, DEVICE_NICE)
        self.relays: dict[str, Relay] = {}
        self.partitionable = scenario.partitionable()
        self.monitor: Monitor | None = None
        self.rollouts: list[RolloutRecord] = []
        self.counters = Counters()
        self.old_timestamp: bytes | None = None
        self.relay: RepositoryRelay | None = None
        self.mcus: list[SimMcu] = []
        self.mcu_image_name = f"{self.fleet.name}-mcu"
        self.image_signer: ImageSigner | None = None
        self._supervisor: asyncio.Task | None = None
        self.usage = UsageSampler(self._site_pids)
        self.fleet_window: list[float] = []  # monotonic: first agent started, agents stopped
        self._stack = contextlib.AsyncExitStack()

    # -- bring-up ---------------------------------------------------------------------------

    async def __aenter__(self) -> World:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        fleet = self.fleet
        self.operator = await asyncio.to_thread(Repository.init, self.workdir / "operator")
        await self.sign(fleet.model.read_bytes(), fleet.version, None)
        if fleet.mcus:
            self.image_signer = await asyncio.to_thread(ImageSigner, self.workdir / "mcu-images")
            factory = await self.sign_mcu_image(fleet.mcu_version)
        await self._stack.enter_async_context(self.cloud)
        self._stack.callback(self.broker.close)
        self.broker.start()
        repo_port = free_port()
        self.relay = RepositoryRelay(f"http://127.0.0.1:{repo_port}")
        await self._stack.enter_async_context(self.relay)
        tables = gateway_tables(
            self.workdir / "gateway",
            self.broker,
            SITE,
            (self.cloud.url, self.cloud.token_file),
            self.operator.keys.online,
            (repo_port, self.relay.url),
        )
        tables["campaigns"] = {"tick_s": 0.5}
        if self.scenario.curation:
            tables["curation"] = self.scenario.curation
        clock = self.clocks.gateway if self.clocks else None
        self.gateway = GatewayProcess(self.workdir / "gateway", tables, clock)
        self._stack.callback(self.gateway.stop)
        await self.gateway.start()
        sampler = asyncio.create_task(self.usage.run(), name="usage")
        self._stack.callback(sampler.cancel)
        await self.import_releases()
        self.old_timestamp = await self.relay.fetch(TIMESTAMP)
        template = self.workdir / "template"
        root = self.operator.metadata_dir / "1.root.json"
        if fleet.provision == "update":
            await asyncio.to_thread(self._provision, template, root)
        self.relay.served = dict.fromkeys(self.relay.served, 0)  # count what devices fetch
        monitor_user = self.broker.user(MONITOR_USER)
        self.monitor = Monitor(self.broker.url, default_prefix(SITE), monitor_user)
        self._stack.callback(self.monitor.close)
        if self.light is not None:
            self._stack.callback(self.light.close)
        self._stack.push_async_callback(self._stop_devices_now)
        for index in range(fleet.mcus):
            name, protocol = f"mcu{index:03d}", protocol_of(index, fleet.mcu_protocol)
            mcu = SimMcu(name, self.workdir / "mcus" / name, self.image_signer, factory, protocol)
            self._stack.callback(mcu.stop)
            self.mcus.append(mcu)
        for index in range(fleet.devices):
            await self._add_device(index, template, root)
        self._supervisor = asyncio.create_task(self._supervise(), name="supervisor")
        self._stack.callback(self._supervisor.cancel)

    def _site_pids(self) -> dict[str, int | None]:
        return {"gateway": self.gateway.pid if self.gateway else None, "broker": self.broker.pid}

    def _provision(self, template: Path, root: Path) -> None:
        """What a factory does once per device: install the first signed model."""
        offer = Offer(self.repository_url, f"{self.fleet.name}/{self.fleet.version}.tflite")
        saved = Cycle(UpdaterDevice(template / "update"), CycleConfig(root)).start(offer)
        if saved.state.value != "COMMITTED":
            raise UserError(f"cannot provision the fleet's first model: {saved.reason}")

    async def _add_device(self, index: int, template: Path, root: Path) -> None:
        name = device_name(index)
        home = self.workdir / "devices" / name
        if self.fleet.provision == "update":  # off the loop: the site's cloud answers on it
            await asyncio.to_thread(shutil.copytree, template, home / "state")
        else:  # the README's way: agent.toml names the model file; no update installed it
            (home / "state").mkdir(parents=True)
        url = self.broker.url
        mcus = []
        if index < len(self.mcus):
            self.mcus[index].attached_to = name
            mcu = self.mcus[index]
            mcus = [{"name": self.mcu_image_name, "port": mcu.port, "baud": BAUD,
                     "protocol": mcu.protocol}]  # fmt: skip
        if name in self.partitionable:
            relay = await Relay(self.broker.port).start()
            self.relays[name] = relay
            self._stack.push_async_callback(relay.close)
            url = f"mqtt://127.0.0.1:{relay.port}"
        tables = agent_tables(
            name,
            home,
            broker_url=url,
            site=SITE,
            model=self.fleet.model,
            rate_hz=self.fleet.rate_hz,
            trusted_root=root,
            mcus=mcus,
            seed=self.scenario.seed * 100_003 + index,
            source=self.fleet.source,
            capture=self.fleet.capture,
            probation=self.fleet.probation,
        )
        tables["mqtt"] |= self.broker.device_login(name)
        if self.fleet.provision == "config":  # what the model is, as the README's agent.toml says
            tables["model"] |= {"name": self.fleet.name, "version": self.fleet.version}
        if self.light is not None:
            device = LightDevice(name, home, tables, self.light, index)
        else:
            clock = self.clocks.device(name) if self.clocks else None
            device = SimDevice(name, home, tables, clock)
        if not self.fleet_window:
            self.fleet_window.append(time.monotonic())
        device.start()
        self.devices.append(device)

    @property
    def repository_url(self) -> str:
        return self.gateway.config.repository.public_url

    # -- operator actions -------------------------------------------------------------------

    async def sign(
        self, data: bytes, version: int, gate: str | None, options: ReleaseOptions = QUICK
    ) -> None:
        await asyncio.to_thread(
            sign_scenario_release, self.operator, data, self.fleet.name, version, gate, options
        )

    async def sign_mcu_image(self, version: int) -> Path:
        path = await asyncio.to_thread(self.image_signer.image, version)
        await asyncio.to_thread(
            self.operator.add_image, self.mcu_image_name, version, path.read_bytes()
        )
        return path

    async def import_releases(self) -> dict:
        return await self.gateway.post("/v1/repository/import", {"source": str(self.operator.dir)})

    async def start_rollout(self, name: str, version: int, body: dict, mcu: bool) -> str:
        answer = await self.gateway.post("/v1/rollouts", {"model": name, "version": version} | body)
        self.rollouts.append(RolloutRecord(answer["id"], name, version, mcu))
        return answer["id"]

    async def rollout_view(self) -> dict | None:
        if not self.rollouts:
            return None
        return await self.gateway.get(f"/v1/rollouts/{self.rollouts[-1].id}")

    # -- devices ----------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Start again every agent and the gateway when they stopped, as systemd would; a stop
        nobody caused (not a power cut, not a fault step) is a crash: a violation for an agent,
        ``gateway_unplanned_exits`` for the gateway."""
        while True:
            await asyncio.sleep(0.25)
            if self.gateway.exited_unplanned():
                log.warning("gateway_exited", reason=self.gateway.unplanned_exits[-1])
                try:
                    await self.gateway.start()
                except UserError as exc:
                    self.gateway.unplanned_exits.append(str(exc))
            for device in self.devices:
                code = device.exit_code
                if code is None:
                    continue
                if not device.expected_exit and code != -9:
                    self.counters.crashes.append(
                        f"{device.name} exited with code {code} (see {device.log_path})"
                    )
                self.counters.agent_restarts += 1
                device.start()

    async def power_cut(self, device: SimulatedDevice, off_s: float = 0.5) -> None:
        device.power_cut()
        await asyncio.sleep(off_s)
        if not device.running:
            self.counters.agent_restarts += 1
            device.start()

    async def _stop_devices_now(self) -> None:
        if self._supervisor:
            self._supervisor.cancel()
        for device in self.devices:
            device.power_cut()

    # Each agent gets what is left of the deadline, in a thread that waits on its process.
    async def stop_devices(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """SIGTERM every agent at once (each drains its spool to the broker), then wait."""
        if self._supervisor:
            self._supervisor.cancel()
        self.fleet_window.append(time.monotonic())
        for device in self.devices:
            device.terminate()
        deadline = time.monotonic() + timeout
        for device in self.devices:
            await asyncio.to_thread(device.stop, max(deadline - time.monotonic(), 0.1))

    def resume_devices(self) -> None:
        """Start again the agents the report stopped, supervised as before: the site runs on
        after its report (``--serve``)."""
        for device in self.devices:
            if not device.running:
                device.start()
        self._supervisor = asyncio.create_task(self._supervise(), name="supervisor")

    def stop_supervising(self) -> None:
        """Nothing is started again from now on: the site is being stopped (a Ctrl-C on a
        terminal reaches the gateway too, and its exit is then no crash)."""
        if self._supervisor:
            self._supervisor.cancel()
        self.gateway.expected_exit = True

    # At the deadline the report takes the status as it is: no error.
    async def gateway_drained(self, timeout: float = 60.0) -> dict:  # noqa: ASYNC109
        """Wait until the gateway's spool is empty (all handed to the cloud); its status."""
        deadline = time.monotonic() + timeout
        while True:
            status = await self.gateway.get("/v1/status")
            if status["spool"]["records"] == 0 or time.monotonic() > deadline:
                return status
            await asyncio.sleep(0.2)
