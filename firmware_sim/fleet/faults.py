"""Faults a scenario injects into a running world. Each returns once the fault is in place; one
that lasts (``for``) heals itself from a background task so the timeline goes on meanwhile.
Attacks on updates (replayed, expired, corrupted files) happen on the way from the gateway's
repository server to the devices (``mitm.RepositoryRelay``)."""

from __future__ import annotations

import asyncio
import random

import structlog

from firmware_sim.fleet import impersonation, poison
from firmware_sim.fleet.devices import SimulatedDevice
from firmware_sim.fleet.mitm import TIMESTAMP, expired_timestamp
from firmware_sim.fleet.scenario import Fault
from firmware_sim.fleet.site import WITNESS_USER
from firmware_sim.fleet.world import World
from gateway.releases import keystore

log = structlog.get_logger()


class FaultError(Exception):
    """The fault cannot be injected in this world (the message says why)."""


async def inject(world: World, fault: Fault, rng: random.Random, healing: list) -> None:
    """Put ``fault`` in place; a lasting one adds ``(task, heal)`` to ``healing``."""
    heal = await HANDLERS[fault.kind](world, fault, rng)
    if heal is not None:
        task = asyncio.create_task(_after(fault.for_s, heal), name=f"heal {fault.kind}")
        healing.append((task, heal))


async def _after(delay: float, action) -> None:
    await asyncio.sleep(delay)
    await action()


def _chosen(world: World, fault: Fault, rng: random.Random, among=None) -> list[SimulatedDevice]:
    if isinstance(fault.devices, tuple):
        return [d for d in world.devices if d.name in fault.devices]
    candidates = [d for d in world.devices if among is None or d.name in among]
    return rng.sample(candidates, fault.devices or 1)


async def broker_restart(world: World, fault: Fault, rng: random.Random):
    broker = world.broker  # World refused the scenario if it cannot be stopped
    await asyncio.to_thread(broker.stop)
    broker.start()  # from the main thread: the broker dies with it (die_with_parent)


async def broker_down(world: World, fault: Fault, rng: random.Random):
    broker = world.broker
    await asyncio.to_thread(broker.stop)

    async def heal() -> None:
        broker.start()

    return heal


def _set_until_healed(target: object, attribute: str, value, healed):
    """Set ``target.attribute`` to ``value`` now; the returned heal sets it to ``healed``."""
    setattr(target, attribute, value)

    async def heal() -> None:
        setattr(target, attribute, healed)

    return heal


async def cloud_down(world: World, fault: Fault, rng: random.Random):
    return _set_until_healed(world.cloud, "down", True, False)


async def cloud_errors(world: World, fault: Fault, rng: random.Random):
    return _set_until_healed(world.cloud, "error_rate", fault.rate, 0.0)


async def partition(world: World, fault: Fault, rng: random.Random):
    chosen = _chosen(world, fault, rng, among=world.relays)
    for device in chosen:
        world.relays[device.name].set_cut(True)

    async def heal() -> None:
        for device in chosen:
            world.relays[device.name].set_cut(False)

    return heal


async def power_cut(world: World, fault: Fault, rng: random.Random):
    """Now, or (with ``state``) at the moment each chosen device has saved that update state;
    the agent is started again half a second after the cut, like a device whose power returns."""
    chosen = _chosen(world, fault, rng)
    if fault.state is None:
        await asyncio.gather(*(world.power_cut(device) for device in chosen))
        return None
    for device in chosen:
        device.arm_power_cut(fault.state)
    return None


async def mcu_power_cut(world: World, fault: Fault, rng: random.Random):
    if not world.mcus:
        raise FaultError("no MCUs in this fleet")
    for mcu in world.mcus:
        mcu.arm_power_cut(fault.op)


async def corrupt_delta(world: World, fault: Fault, rng: random.Random):
    return _set_until_healed(world.relay, "corrupt_deltas", True, False)


async def replay_metadata(world: World, fault: Fault, rng: random.Random):
    return _set_until_healed(world.relay, "replayed", world.old_timestamp, None)


async def expire_metadata(world: World, fault: Fault, rng: random.Random):
    current = await world.relay.fetch(TIMESTAMP)
    signer = keystore.load(world.operator.keys.path("timestamp"))
    return _set_until_healed(world.relay, "replayed", expired_timestamp(current, signer), None)


async def cloud_reject(world: World, fault: Fault, rng: random.Random):
    return _set_until_healed(world.cloud, "reject_rate", fault.rate, 0.0)


async def gateway_restart(world: World, fault: Fault, rng: random.Random):
    await world.gateway.kill()
    await world.gateway.start()


async def poison_fault(world: World, fault: Fault, rng: random.Random):
    """Each chosen device's credentials publish ``count`` rounds of malformed messages."""

    async def one(device: SimulatedDevice) -> None:
        login = world.broker.login(device.name)
        result = await asyncio.to_thread(
            poison.publish, world.broker.url, world.prefix, device.name, login, fault.count
        )
        world.counters.poisoned += result.published
        log.info("poisoned", device=device.name, published=result.published,
                 oversize_disconnected=result.oversize_disconnected)  # fmt: skip

    await asyncio.gather(*(one(device) for device in _chosen(world, fault, rng)))


async def impersonate(world: World, fault: Fault, rng: random.Random):
    """Each chosen device tries to pass for the next device of the fleet, then for the gateway;
    one after the other, so that each attempt's effect on the gateway is its own."""
    names = [device.name for device in world.devices]
    witness = world.broker.user(WITNESS_USER)
    for device in _chosen(world, fault, rng):
        victim = names[(names.index(device.name) + 1) % len(names)]
        for client_id in (victim, world.gateway.config.mqtt.client_id):
            attempts = await asyncio.to_thread(
                impersonation.attempt, world.broker.url, world.prefix, device.name,
                world.broker.login(device.name), victim, client_id, witness,
                world.gateway.log_path,
            )  # fmt: skip
            world.counters.impersonations += attempts


async def clock_jump(world: World, fault: Fault, rng: random.Random):
    world.clocks.jump(fault.by_s)  # World refused the scenario without libfaketime


async def clock_skew(world: World, fault: Fault, rng: random.Random):
    names = [device.name for device in _chosen(world, fault, rng)]
    world.clocks.skew(names, fault.by_s)

    async def heal() -> None:
        world.clocks.skew(names, 0.0)

    return heal


async def drift(world: World, fault: Fault, rng: random.Random):
    """The chosen devices' inputs move (their class bands dim or brighten by ``shift``), as a
    sensor that ages or a new environment moves them; with ``for`` they move back after."""
    chosen = _chosen(world, fault, rng)
    for device in chosen:
        device.shift_inputs(fault.shift)
    world.drifted.update(device.name for device in chosen)
    if fault.for_s is None:
        return None

    async def heal() -> None:
        for device in chosen:
            device.shift_inputs(0.0)

    return heal


HANDLERS = {
    "drift": drift,
    "broker-restart": broker_restart,
    "broker-down": broker_down,
    "cloud-down": cloud_down,
    "cloud-errors": cloud_errors,
    "partition": partition,
    "power-cut": power_cut,
    "mcu-power-cut": mcu_power_cut,
    "corrupt-delta": corrupt_delta,
    "replay-metadata": replay_metadata,
    "expire-metadata": expire_metadata,
    "gateway-restart": gateway_restart,
    "cloud-reject": cloud_reject,
    "clock-jump": clock_jump,
    "clock-skew": clock_skew,
    "poison": poison_fault,
    "impersonate": impersonate,
}
