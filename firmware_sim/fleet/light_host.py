"""Many simulated devices in one process: ``python -m firmware_sim.fleet.light_host``.

Each device is the agent's own ``Agent`` (its MQTT session, spool, status, events, capture,
update driver and updater), N of them on one event loop; update work runs in a thread
(``agent.updater.runners.in_thread``) instead of a child process. The simulator drives the host
with one JSON object per line on stdin and reads one per line on stdout:

    {"op": "start", "device": "dev0001", "config": "/…/agent.toml", "cut_file": "/…/power-cut"}
    {"op": "stop", "device": "dev0001"}     drain and exit, as SIGTERM makes an agent do
    {"op": "cut", "device": "dev0001"}      a power cut (see ``Host.cut``)
    -> {"device": "dev0001", "exit": 0}     each run's end: its exit code, -9 for a power cut
    -> {"error": "…"}                       a control line that could not be carried out

End of input cuts every device and ends the host. Every task a device's code creates is its
task (a task factory keeps the set, by the device's context variable), so a cut reaches all of
them, and its fault settings (``agent.updater.faults.DEVICE_FAULTS``) follow its work into
threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import sys
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent import config as agent_config
from agent import threads
from agent.daemon import Agent
from agent.updater.faults import DEVICE_FAULTS, DeviceFaults, Interrupted
from agent.updater.runners import in_thread
from edgefleet import logs
from edgefleet.errors import UserError
from edgefleet.open_files import raise_open_files_limit
from protocol.topics import DEVICE_ID_PATTERN

MAX_LINE_BYTES = 16 * 1024
CUT_EXIT = -9  # what a SIGKILLed agent process reports
CRASH_EXIT = 1
CONFIG_EXIT = 2  # as ``edgefleet`` exits on a UserError
# Update work, model loads and the updater's file steps of every device share a pool of this
# many threads; their spools and pipelines' records stages another (``agent.threads.share``).
THREADS = 32
RECANCEL_S = 1.0

OPS = {"start": ("config", "cut_file"), "stop": (), "cut": ()}
DEVICE: contextvars.ContextVar[Device | None] = contextvars.ContextVar("light_device", default=None)
log = structlog.get_logger()


class ControlError(ValueError):
    """A control line the host cannot carry out; its text is the one line to answer."""


@dataclass(frozen=True)
class Command:
    op: str
    device: str
    config: Path | None = None
    cut_file: Path | None = None


def parse_command(raw: bytes) -> Command:
    """One control line, or ``ControlError`` naming what is wrong with it."""
    if len(raw) > MAX_LINE_BYTES:
        raise ControlError(f"control line longer than {MAX_LINE_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ControlError("control line is not JSON") from None
    if not isinstance(data, dict):
        raise ControlError("control line is not a JSON object")
    op = data.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ControlError(f"unknown op {op!r} (expected one of {', '.join(OPS)})")
    device = data.get("device")
    if not isinstance(device, str) or not DEVICE_ID_PATTERN.fullmatch(device):
        raise ControlError(f"{op}: 'device' must be a device id, got {device!r}")
    paths = {}
    for key in OPS[op]:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise ControlError(f"{op} {device}: {key!r} must be a path")
        paths[key] = Path(value)
    return Command(op, device, **paths)


@dataclass
class Device:
    name: str
    config: Path
    faults: DeviceFaults
    agent: Agent | None = None
    tasks: set[asyncio.Task] = field(default_factory=set)
    cut: bool = False


class Host:
    """The devices of this process, by name; ``write`` sends one line to the simulator."""

    def __init__(self, write: Callable[[dict[str, Any]], None]) -> None:
        self.write = write
        self.devices: dict[str, Device] = {}
        self._ends: set[asyncio.Task] = set()

    def task_factory(
        self, loop: asyncio.AbstractEventLoop, coro: Coroutine, **kwargs: Any
    ) -> asyncio.Task:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        context = kwargs.get("context")
        device = context.get(DEVICE) if context is not None else DEVICE.get()
        if device is not None:
            device.tasks.add(task)
            task.add_done_callback(device.tasks.discard)
        return task

    def handle(self, raw: bytes) -> None:
        """Carry out one control line; a bad one is answered with one error line."""
        try:
            command = parse_command(raw)
            getattr(self, command.op)(command)
        except ControlError as exc:
            self.write({"error": str(exc)})

    def start(self, command: Command) -> None:
        if command.device in self.devices:
            raise ControlError(f"start {command.device}: already running")
        loop = asyncio.get_running_loop()
        name = command.device
        faults = DeviceFaults(
            str(command.cut_file), lambda: loop.call_soon_threadsafe(self._cut_by_name, name)
        )
        device = Device(name, command.config, faults)
        self.devices[name] = device
        context = contextvars.copy_context()
        context.run(DEVICE.set, device)
        context.run(DEVICE_FAULTS.set, faults)
        context.run(structlog.contextvars.bind_contextvars, device=name)
        main = loop.create_task(self._run(device), name=f"agent {name}", context=context)
        end = loop.create_task(self._end(device, main), context=contextvars.Context())
        self._ends.add(end)
        end.add_done_callback(self._ends.discard)

    def stop(self, command: Command) -> None:
        device = self._running(command)
        if device.agent is None:  # still loading its configuration: nothing to drain yet
            self.cut(command)
        else:
            device.agent.request_stop()

    def cut(self, command: Command) -> None:
        """A power cut: no more hooks passed by its update work, its MQTT connection dropped
        without DISCONNECT, its spools closed without another write, every task cancelled."""
        device = self._running(command)
        device.cut = True
        device.faults.off.set()
        if device.agent is not None:
            device.agent.abort()
        for task in list(device.tasks):
            task.cancel()

    def _cut_by_name(self, name: str) -> None:
        if (device := self.devices.get(name)) is not None and not device.cut:
            self.cut(Command("cut", name))

    def _running(self, command: Command) -> Device:
        device = self.devices.get(command.device)
        if device is None:
            raise ControlError(f"{command.op} {command.device}: not running")
        return device

    async def _run(self, device: Device) -> int:
        try:
            device.agent = Agent(agent_config.load(device.config), update_runner=in_thread)
            return await device.agent.run()
        except UserError as exc:
            log.error("agent_config_refused", error=str(exc))
            return CONFIG_EXIT

    async def _end(self, device: Device, main: asyncio.Task) -> None:
        """Wait until every task of the device ended (a cut one may hold a network read for a
        while), then report its exit: only then may it start again."""
        await asyncio.wait({main})
        while device.tasks:
            if device.cut or main.done():
                for task in list(device.tasks):
                    task.cancel()
            await asyncio.wait(set(device.tasks), timeout=RECANCEL_S)
        code = exit_code(main, device.cut)
        del self.devices[device.name]
        self.write({"device": device.name, "exit": code})

    async def cut_all(self) -> None:
        for name in list(self.devices):
            self._cut_by_name(name)
        if self._ends:
            await asyncio.wait(set(self._ends))


def exit_code(main: asyncio.Task, cut: bool) -> int:
    """The run's exit code, as the agent process would have reported it."""
    if cut:
        return CUT_EXIT
    if main.cancelled():
        return CRASH_EXIT
    exc = main.exception()
    if isinstance(exc, Interrupted):
        return CUT_EXIT
    if exc is not None:
        log.error("agent_crashed", exc_info=exc)
        return CRASH_EXIT
    return main.result()


async def serve(reader: asyncio.StreamReader, write: Callable[[dict[str, Any]], None]) -> None:
    """Carry out control lines until the end of input, then cut whatever still runs."""
    host = Host(write)
    loop = asyncio.get_running_loop()
    loop.set_task_factory(host.task_factory)
    loop.set_default_executor(ThreadPoolExecutor(THREADS, thread_name_prefix="device"))
    threads.share(THREADS)  # the devices' spools and records stages take turns on one pool
    while True:
        try:
            raw = await reader.readline()
        except ValueError:  # far longer than a control line; the reader dropped it
            write({"error": f"control line longer than {MAX_LINE_BYTES} bytes"})
            continue
        if not raw:
            break
        if raw.strip():
            host.handle(raw)
    await host.cut_all()


def write_line(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


async def main() -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=4 * MAX_LINE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await serve(reader, write_line)
    return 0


if __name__ == "__main__":
    logs.configure("info", lean=True, fmt="json")
    raise_open_files_limit()  # each device holds a socket and its spools' files
    sys.exit(asyncio.run(main()))
