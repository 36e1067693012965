"""Simulated devices: each is the real agent, with a state folder provisioned with the fleet's
first signed model as a real device would be. ``SimDevice`` runs it as its own process
(``edgefleet agent run``), in its own process group so that a power cut (SIGKILL to the group)
takes its update worker too; ``LightDevice`` runs it as one of many agents in a light host
process (``[fleet] mode = "light"``, ``light_hosts.py``)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.updater.faults import CUT_FILE_ENV, HOOK_ENV
from edgefleet import tomlconfig
from edgefleet.fsio import atomic_write_bytes
from edgefleet.processes import start_edgefleet
from firmware_sim.fleet.clock import ClockFile
from firmware_sim.fleet.light_hosts import HostProcess, LightHosts

# Devices are other machines than the site's: on a shared CPU they yield to the broker, the
# gateway and the simulator, so a large fleet slows its own devices rather than the site that
# judges them (whose view of the fleet would otherwise lag minutes behind a loaded machine).
DEVICE_NICE = 10
# Probation limits for simulated devices. A retrained head agrees with its incumbent on ~90 % of
# the synthetic inputs and a one-class model on ~10 %, so the limits sit between the two and no
# verdict hangs on sampling noise. Latency is not judged: dozens of agents on two cores make a
# p95 over a few inputs meaningless.
PROBATION = {
    "min_samples": 40,
    "window_s": 3.0,
    "shadow_every": 1,
    "min_agreement": 0.5,
    "max_psi": 2.0,
    "latency_floor_ms": 10_000.0,
}


@dataclass(frozen=True)
class SpoolCounts:
    produced: int
    dropped: int
    left: int


def read_spool(path: Path) -> SpoolCounts:
    """Produced and dropped counters and records still waiting, from an agent's spool file."""
    if not path.exists():
        return SpoolCounts(0, 0, 0)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta"))
        left = db.execute("SELECT count(*) FROM records").fetchone()[0]
    finally:
        db.close()
    return SpoolCounts(int(meta.get("produced", 0)), int(meta.get("dropped", 0)), left)


class DeviceFiles:
    """What every simulated device has under ``home``, however it runs: its agent.toml, its
    state folder (spools, update state), its power-cut file and its drift shift file."""

    def __init__(self, name: str, home: Path, tables: dict) -> None:
        self.name, self.home = name, home
        self.state_dir = home / "state"
        self.config_path = home / "agent.toml"
        self.cut_file = home / "power-cut"
        self.config_path.write_text(tomlconfig.dumps(tables))
        self.starts = 0
        self.expected_exit = False

    @property
    def log_path(self) -> Path:
        """Where this device's agent logs."""
        return self.home / "agent.log"

    def _starting(self) -> None:
        self.starts += 1
        self.expected_exit = False
        self.cut_file.unlink(missing_ok=True)

    def arm_power_cut(self, state: str) -> None:
        """Cut power (from inside the agent's update work) right after it saved ``state``."""
        self.cut_file.write_text(f"state.{state}.renamed")

    def spool(self) -> SpoolCounts:
        return read_spool(self.state_dir / "spool.db")

    def samples(self) -> SpoolCounts:
        """The sample spool's counters: captured, dropped by its cap, still waiting."""
        return read_spool(self.state_dir / "samples.db")

    def shift_inputs(self, shift: float) -> None:
        """Move this device's input bands (the agent re-reads the file when it changes)."""
        atomic_write_bytes(shift_file(self.home), f"{shift}\n".encode())


class SimDevice(DeviceFiles):
    """One agent process and its files under ``home``."""

    def __init__(self, name: str, home: Path, tables: dict, clock: ClockFile | None = None) -> None:
        super().__init__(name, home, tables)
        self.clock = clock
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self._starting()
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", CUT_FILE_ENV: str(self.cut_file)}
        env.pop(HOOK_ENV, None)
        if self.clock is not None:
            env = self.clock.env(env)
        self.proc = start_edgefleet(
            ["agent", "run", "--config", str(self.config_path)],
            self.log_path,
            env=env,
            own_group=True,
            nice=DEVICE_NICE,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        """How the last run ended (-9: power cut); None while it runs or before the first."""
        return None if self.proc is None or self.running else self.proc.returncode

    def terminate(self) -> None:
        """SIGTERM without waiting: the agent drains its spool, then exits."""
        self.expected_exit = True
        if self.running:
            self.proc.terminate()

    def power_cut(self) -> None:
        self.expected_exit = True
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float) -> int | None:
        """SIGTERM (the agent drains its spool first), SIGKILL after ``timeout``."""
        self.expected_exit = True
        if not self.running:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.power_cut()
            return None


class LightDevice(DeviceFiles):
    """One agent among many in a light host process, with its files under ``home``: the same
    life as ``SimDevice`` (start, power cut, stop), carried out by the host."""

    def __init__(self, name: str, home: Path, tables: dict, hosts: LightHosts, index: int) -> None:
        super().__init__(name, home, tables)
        self._hosts, self._index = hosts, index
        self._host: HostProcess | None = None
        self._running = False
        self._exit: int | None = None

    @property
    def log_path(self) -> Path:
        """Its host's log (each line names the device)."""
        return self._hosts.host_log(self._index)

    def start(self) -> None:
        self._starting()
        self._host = self._hosts.host(self._index)
        self._exit, self._running = None, True
        self._host.start(self.name, self.config_path, self.cut_file)

    @property
    def running(self) -> bool:
        if self._running:
            code = self._host.take_exit(self.name)
            if code is not None:
                self._exit, self._running = code, False
        return self._running

    @property
    def exit_code(self) -> int | None:
        return None if self.running else self._exit

    def terminate(self) -> None:
        self.expected_exit = True
        if self.running:
            self._host.send("stop", self.name)

    def power_cut(self) -> None:
        self.expected_exit = True
        if self.running:
            self._host.send("cut", self.name)
            self._wait(None)

    def stop(self, timeout: float) -> int | None:
        """Drain and exit (as on SIGTERM); a power cut after ``timeout``."""
        self.expected_exit = True
        if not self.running:
            return self._exit
        self._host.send("stop", self.name)
        if self._wait(timeout):
            return self._exit
        self.power_cut()
        return None

    def _wait(self, timeout: float | None) -> bool:
        code = self._host.wait_exit(self.name, timeout)
        if code is None:
            return False
        self._exit, self._running = code, False
        return True


SimulatedDevice = SimDevice | LightDevice


def agent_tables(
    name: str,
    home: Path,
    *,
    broker_url: str,
    site: str,
    model: Path,
    rate_hz: float,
    trusted_root: Path,
    mcus: list[dict],
    seed: int,
    source: str = "noise",
    capture: bool = False,
    probation: dict | None = None,
) -> dict:
    """An agent.toml for a simulated device; with ``source = "bands"`` its inputs move when
    the simulator writes a shift into ``home/shift`` (a drift fault)."""
    tables: dict = {
        "device": {"id": name, "site": site},
        "mqtt": {
            "url": broker_url,
            "connect_timeout_s": 10.0,
            "reconnect_base_s": 0.1,
            "reconnect_max_s": 2.0,
        },
        "state": {"dir": home / "state"},
        "model": {"path": model},
        "source": {"kind": "synthetic", "seed": seed, "pattern": source},
        "inference": {"rate_hz": rate_hz},
        "telemetry": {
            "batch_records": 50,
            "batch_age_s": 0.5,
            "status_interval_s": 2.0,
            "drain_s": 20.0,
        },
        "drift": {"window": 200},
        "update": {"trusted_root": trusted_root, "probation": probation or PROBATION},
    }
    if source == "bands":
        tables["source"]["shift_file"] = shift_file(home)
    if capture:
        tables["capture"] = {"enabled": True}
    if mcus:
        tables["mcu"] = mcus
    return tables


def shift_file(home: Path) -> Path:
    return home / "shift"
