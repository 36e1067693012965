"""Run a scenario: bring the world up, play the timeline, let it settle, and report.

Steps run in order, each no earlier than its ``at`` (seconds after the fleet is up); a ``wait``
holds the timeline until its condition or its timeout. Faults that last heal from background
tasks; whatever has not healed when the timeline ends is healed then, so the report measures a
site that had every chance to deliver. With ``serve``, the site then runs on, agents started
again, until SIGINT or SIGTERM, so a person can look at it through the console.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from edgefleet.errors import UserError
from firmware_sim.fleet import faults, labeller
from firmware_sim.fleet.releases import QUICK
from firmware_sim.fleet.report import Outcome, collect
from firmware_sim.fleet.scenario import (
    CampaignStep,
    EvaluateStep,
    Fault,
    LabelStep,
    Release,
    Rollout,
    Scenario,
    Step,
    Wait,
)
from firmware_sim.fleet.site import ConsoleAccess
from firmware_sim.fleet.world import World
from gateway.admin_client import Unreachable

# Two cores start about one agent a second (Python, NumPy, LiteRT, the model).
ONLINE_TIMEOUT_S = 60.0
ONLINE_PER_DEVICE_S = 2.0
TERMINAL = ("completed", "paused", "aborted")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# For the agents to drain their spools to the broker, then killed. A Ctrl-C on a terminal
# stops the broker (same process group) too, and they wait for it in vain: kept short.
STOP_AGENTS_S = 5.0


class Runner:
    def __init__(
        self,
        scenario: Scenario,
        workdir: Path,
        broker_url: str | None = None,
        say: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.scenario, self.workdir, self.broker_url, self.say = (
            scenario,
            workdir,
            broker_url,
            say,
        )
        self.outcome = Outcome()
        self.rng = random.Random(scenario.seed)
        self.healing: list[tuple[asyncio.Task, Callable[[], Awaitable]]] = []
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def run(
        self,
        publish: Callable[[dict], None] = lambda report: None,
        serve: Callable[[ConsoleAccess], None] | None = None,
    ) -> dict:
        """Play the scenario and hand its report to ``publish``; with ``serve``, then keep the
        site running, tell ``serve`` how to reach the console, and stop at SIGINT or SIGTERM."""
        begun = time.monotonic()
        world = World(self.scenario, self.workdir, self.broker_url)  # checks, starts nothing
        self.say(
            f"starting {self.scenario.fleet.devices} devices, gateway, {world.broker.kind} broker, "
            "cloud"
        )
        async with world:
            timeout = ONLINE_TIMEOUT_S + ONLINE_PER_DEVICE_S * len(world.devices)
            await self._until(lambda: _online(world) == len(world.devices), timeout)
            if _online(world) < len(world.devices):
                raise UserError(f"only {_online(world)} of {len(world.devices)} devices came up")
            self.outcome.startup_s = time.monotonic() - begun
            self.started = time.monotonic()
            self.say(f"fleet up in {self.outcome.startup_s:.1f} s")
            try:
                async with asyncio.timeout(self.scenario.time_limit_s):
                    await self._timeline(world)
            except TimeoutError:
                self.outcome.violations.append(
                    f"time limit {self.scenario.time_limit_s:g} s reached before the last step"
                )
            await self._heal_all()
            self.outcome.duration_s = self.elapsed()
            self.say("timeline done; settling, stopping devices, draining telemetry")
            report = await collect(world, self.scenario, self.outcome)
            publish(report)
            if serve is not None:
                await self._serve(world, serve)
            return report

    async def _serve(self, world: World, serve: Callable[[ConsoleAccess], None]) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stopping() -> None:
            world.stop_supervising()
            stop.set()

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stopping)
        try:
            world.resume_devices()
            serve(world.gateway.console())
            await stop.wait()
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
        await world.stop_devices(STOP_AGENTS_S)

    async def _timeline(self, world: World) -> None:
        for step in sorted(self.scenario.steps, key=lambda s: (s.at_s, s.index)):
            delay = step.at_s - self.elapsed()
            if delay > 0:
                await asyncio.sleep(delay)
            self.say(f"[{self.elapsed():6.1f}s] step {step.index}: {step.describe()}")
            try:
                result = await self._do(world, step)
            except (UserError, faults.FaultError, ValueError) as exc:
                result = f"failed: {exc}"
                self.outcome.violations.append(f"step {step.index} ({step.describe()}): {exc}")
            self.outcome.steps.append(
                {"index": step.index, "at_s": round(self.elapsed(), 2), "do": step.describe(),
                 "result": result}
            )  # fmt: skip

    async def _do(self, world: World, step: Step) -> str:
        action = step.action
        if isinstance(action, Release):
            return await self._release(world, action)
        if isinstance(action, Rollout):
            body = {
                "stages": list(action.stages),
                "soak_s": action.soak_s,
                "max_failure_rate": action.max_failure_rate,
                "auto_rollback": action.auto_rollback,
            }
            name = world.mcu_image_name if action.mcu else world.fleet.name
            rollout = await world.start_rollout(name, action.version, body, action.mcu)
            return f"rollout {rollout} started"
        if isinstance(action, Fault):
            await faults.inject(world, action, self.rng, self.healing)
            return "injected"
        if isinstance(action, CampaignStep):
            body = {
                "name": action.name,
                "model": action.model,
                "trigger": action.trigger,
                "per_device": action.per_device,
                "total": action.total,
            }
            answer = await world.gateway.post("/v1/campaigns", body)
            return f"campaign {answer['name']} {answer['state']}"
        if isinstance(action, LabelStep):
            count = await asyncio.to_thread(
                labeller.label_samples, world.cloud.dataset_dir, world.labelled,
                action.fraction, self.rng, world.workdir / "labels",
            )  # fmt: skip
            return f"labelled {count} samples"
        if isinstance(action, EvaluateStep):
            return await self._evaluate(world, action, step.index)
        return await self._wait(world, action)

    async def _evaluate(self, world: World, action: EvaluateStep, index: int) -> str:
        result = await asyncio.to_thread(
            labeller.run_evaluation, world.cloud.dataset_dir, world.fleet.name, action.model,
            action.against,
        )  # fmt: skip
        result["step"] = index
        world.evaluations.append(result)
        candidate, incumbent = result["candidate"], result["incumbent"]
        said = (
            f"{action.model.name} {candidate['accuracy']:.3f} against "
            f"{incumbent['accuracy']:.3f} on {result['n']} labelled samples"
        )
        if action.min_accuracy is not None and candidate["accuracy"] < action.min_accuracy:
            raise ValueError(f"{said}: below the minimum {action.min_accuracy}")
        return said

    async def _release(self, world: World, release: Release) -> str:
        if release.model is None:
            await world.sign_mcu_image(release.version)
        else:
            options = replace(
                QUICK,
                probation_min_agreement=release.probation_min_agreement,
                probation_max_psi=release.probation_max_psi,
            )
            if release.eval_labelled:
                path = world.workdir / f"eval-v{release.version}.npz"
                count = await asyncio.to_thread(
                    labeller.evaluation_set, world.cloud.dataset_dir, world.labelled, path
                )
                if not count:
                    raise ValueError('eval_set = "labelled": no labelled samples yet')
                options = replace(options, eval_set=path, min_accuracy=release.min_accuracy)
            await world.sign(release.model.read_bytes(), release.version, release.gate, options)
        answer = await world.import_releases()
        return f"signed and imported ({answer['new_targets']} new targets)"

    async def _wait(self, world: World, wait: Wait) -> str:
        if wait.until.startswith("rollout:"):
            wanted = wait.until.removeprefix("rollout:")
            state = await self._until_rollout(world, wait.timeout_s)
            if state != wanted:
                raise ValueError(f"rollout is {state}, not {wanted}")
            return state
        if wait.until == "campaigns:ended":
            return await self._until_campaigns_end(world, wait.timeout_s)
        count, total = _on_target_counter(world, wait.until)
        await self._until(lambda: count() == total, wait.timeout_s)
        if count() != total:
            raise ValueError(f"{count()} of {total} on target after {wait.timeout_s:g} s")
        return f"{total} on target"

    # A wait in a scenario ends at its deadline with the last state seen, not an error.
    async def _until_rollout(self, world: World, timeout: float) -> str | None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            try:
                view = await world.rollout_view()
            except Unreachable:  # the gateway is restarting
                view = {"state": state}
            if view is None:
                raise ValueError("no rollout was started")
            state = view["state"]
            if state in TERMINAL:
                return state
            await asyncio.sleep(0.2)
        return state

    async def _until_campaigns_end(self, world: World, timeout: float) -> str:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while True:
            campaigns = (await world.gateway.get("/v1/campaigns"))["campaigns"]
            if not campaigns:
                raise ValueError("no campaign was started")
            running = [c for c in campaigns if c["state"] == "running"]
            if not running:
                return ", ".join(f"{c['name']} {c['reason']} ({c['received']})" for c in campaigns)
            if time.monotonic() >= deadline:
                raise ValueError(
                    ", ".join(f"{c['name']} has {c['received']}/{c['total']}" for c in running)
                    + f" after {timeout:g} s"
                )
            await asyncio.sleep(0.5)

    async def _until(self, condition: Callable[[], bool], timeout: float) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110 - other processes
            await asyncio.sleep(0.2)

    async def _heal_all(self) -> None:
        for task, heal in self.healing:
            if not task.done():
                task.cancel()
                await heal()


def _online(world: World) -> int:
    return sum(
        1
        for d in world.devices
        if (s := world.monitor.status(d.name)) is not None and s.state == "online" and s.model
    )


def _on_target_counter(world: World, until: str) -> tuple[Callable[[], int], int]:
    from firmware_sim.fleet.report import devices_on_target, mcus_on_target

    if until == "mcus_on_target:all":
        return (lambda: mcus_on_target(world)), len(world.mcus)
    return (lambda: devices_on_target(world)), len(world.devices)
