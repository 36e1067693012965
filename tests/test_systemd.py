"""The systemd services: what ``install-service`` writes, checked by systemd's own tools
(``systemd-analyze verify`` and ``security``, ``systemd-sysusers``, ``systemd-tmpfiles``, each
confined to a temporary root), the example configurations against the real loaders, the
command's refusals, and the gateway's notify protocol."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from agent import config as agent_config
from agent.daemon import STOP_TIMEOUT_S
from edgefleet import cli, service
from gateway import config as gateway_config
from tests.gateway import support as gateway_support

EDGEFLEET = Path(sys.executable).parent / "edgefleet"
SHIPPED = Path(__file__).resolve().parents[1] / "edgefleet" / "systemd"
ROLES = ("agent", "gateway")
# systemd's tools print warnings at this level whatever the caller's environment says.
SYSTEMD_ENV = {**os.environ, "SYSTEMD_LOG_LEVEL": "notice", "SYSTEMD_LOG_COLOR": "0"}


def needs(tool: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} is not installed")


def install(capsys, role: str, root: Path, *options: str) -> tuple[int, str, str]:
    code = cli.main([role, "install-service", "--root", str(root), *options])
    out, err = capsys.readouterr()
    return code, out, err


def unit_path(root: Path, role: str) -> Path:
    return root / "etc" / "systemd" / "system" / f"edgefleet-{role}.service"


def unit_section(path: Path, name: str = "[Unit]") -> dict[str, list[str]]:
    """``Key=value`` lines of one section of a unit; repeated keys keep every value."""
    section, values = "", {}
    for line in path.read_text().splitlines():
        if line.startswith("["):
            section = line
        elif section == name and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def service_section(path: Path) -> dict[str, list[str]]:
    return unit_section(path, "[Service]")


@pytest.fixture
def root(tmp_path: Path, capsys) -> Path:
    """Both services installed under a temporary root."""
    staged = tmp_path / "root"
    staged.mkdir()
    for role in ROLES:
        assert install(capsys, role, staged)[0] == 0
    return staged


@needs("systemd-analyze")
def test_units_pass_systemd_analyze_verify(root: Path):
    units = [str(unit_path(root, role)) for role in ROLES]
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        env=SYSTEMD_ENV,
        timeout=60,
    )
    about_ours = [line for line in result.stderr.splitlines() if "edgefleet" in line]
    assert result.returncode == 0 and not about_ours, result.stderr


@needs("systemd-analyze")
def test_verify_as_run_here_reports_a_broken_unit(root: Path):
    """The check above can fail: the same call names an unknown key and a bad value."""
    unit = unit_path(root, "agent")
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes\nBogus=1"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        env=SYSTEMD_ENV,
        timeout=60,
    )
    assert "Unknown key 'Bogus'" in result.stderr and "sometimes" in result.stderr


HARDENING = {
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateMounts",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectHostname",
    "ProtectProc",
    "RestrictSUIDSGID",
    "RestrictRealtime",
    "RestrictNamespaces_user",
    "RestrictAddressFamilies_AF_PACKET",
    "RestrictAddressFamilies_AF_NETLINK",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "SystemCallArchitectures",
    "SystemCallFilter_privileged",
    "CapabilityBoundingSet_CAP_SYS_ADMIN",
    "CapabilityBoundingSet_CAP_SET_UID_GID_PCAP",
    "UserOrDynamicUser",
    "RemoveIPC",
}


@needs("systemd-analyze")
@pytest.mark.parametrize("role", ROLES)
def test_systemd_analyze_security_sees_the_hardening(root: Path, role: str):
    unit = str(unit_path(root, role))
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--json=short", unit],
        capture_output=True,
        text=True,
        env=SYSTEMD_ENV,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    checks = {entry["json_field"]: entry["set"] for entry in json.loads(result.stdout)}
    assert {name for name in HARDENING if not checks[name]} == set()
    # The agent keeps /dev (serial ports come and go); the gateway needs no device at all.
    assert checks["PrivateDevices"] is (role == "gateway")
    assert checks["ProtectClock"] is (role == "gateway")
    overall = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", unit],
        capture_output=True,
        env=SYSTEMD_ENV,
        timeout=60,
    )
    assert overall.returncode == 0, "exposure level above 2.0"


@pytest.mark.parametrize("role", ROLES)
def test_service_directives(root: Path, role: str):
    service = service_section(unit_path(root, role))
    one = {key: values[-1] for key, values in service.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert int(one["WatchdogSec"]) >= 10
    assert one["Restart"] == "on-failure" and one["RestartPreventExitStatus"] == "2"
    assert one["User"] == one["Group"] == one["StateDirectory"] == f"edgefleet-{role}"
    assert one["ConfigurationDirectory"] == "edgefleet"
    assert one["ExecStart"] == f"{EDGEFLEET} {role} run --config /etc/edgefleet/{role}.toml"
    assert one["CapabilityBoundingSet"] == ""
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged"]
    if role == "agent":
        unit = unit_section(unit_path(root, role))
        # a device without a real-time clock refreshes update metadata with a synchronized clock
        assert "time-sync.target" in unit["After"][-1].split()
        assert one["SupplementaryGroups"] == "dialout"
        example = tomllib.loads((SHIPPED / "agent.toml").read_text())
        drain_s = example["telemetry"]["drain_s"]
        assert int(one["TimeoutStopSec"]) > drain_s + STOP_TIMEOUT_S + 10


def test_installed_unit_is_the_shipped_one_naming_this_executable(tmp_path: Path):
    """Run as the real script: ExecStart names it, and nothing else differs from the shipped
    unit."""
    result = subprocess.run(
        [str(EDGEFLEET), "agent", "install-service", "--root", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["executable"] == str(EDGEFLEET)
    assert report["commands"][-1] == "systemctl enable --now edgefleet-agent.service"
    shipped = (SHIPPED / "edgefleet-agent.service").read_text()
    installed = unit_path(tmp_path, "agent").read_text()
    assert installed == shipped.replace("ExecStart=/usr/bin/edgefleet ", f"ExecStart={EDGEFLEET} ")
    assert installed != shipped
    for kind in ("sysusers", "tmpfiles"):
        copied = tmp_path / "etc" / f"{kind}.d" / "edgefleet-agent.conf"
        assert copied.read_bytes() == (SHIPPED / f"edgefleet-agent.{kind}.conf").read_bytes()


def test_example_configurations_fit_the_units_and_load(root: Path, tmp_path: Path):
    agent_unit = service_section(unit_path(root, "agent"))
    gateway_unit = service_section(unit_path(root, "gateway"))
    agent_toml = tomllib.loads((root / "etc/edgefleet/agent.toml").read_text())
    gateway_toml = tomllib.loads((root / "etc/edgefleet/gateway.toml").read_text())
    assert agent_toml["state"]["dir"] == f"/var/lib/{agent_unit['StateDirectory'][0]}"
    assert gateway_toml["gateway"]["data_dir"] == f"/var/lib/{gateway_unit['StateDirectory'][0]}"
    runtime = f"unix:/run/{gateway_unit['RuntimeDirectory'][0]}/"
    assert gateway_toml["admin"]["listen"].startswith(runtime)

    # Load them with the daemons' own loaders, their absolute paths moved under tmp_path.
    host = tmp_path / "host"
    for name in ("agent-mqtt-password", "gateway-mqtt-password"):
        (host / "etc/edgefleet").mkdir(parents=True, exist_ok=True)
        (host / "etc/edgefleet" / name).write_text("secret\n")
    (host / "etc/edgefleet/root.json").write_text("{}")
    keys = host / "etc/edgefleet/online-keys"
    keys.mkdir()
    for name in gateway_config.ONLINE_KEY_FILES:
        (keys / name).write_text("key")
    for role, loader in (("agent", agent_config.load), ("gateway", gateway_config.load)):
        text = (root / f"etc/edgefleet/{role}.toml").read_text()
        for top in ("/etc/", "/var/", "/run/"):
            text = text.replace(f'"{top}', f'"{host}{top}').replace(f":{top}", f":{host}{top}")
        moved = host / f"{role}.toml"
        moved.write_text(text)
        loaded = loader(moved)
        assert str(host) in str(loaded.state_dir if role == "agent" else loaded.data_dir)


@needs("systemd-sysusers")
@needs("systemd-tmpfiles")
@pytest.mark.skipif(os.geteuid() != 0, reason="making directories owned by other users needs root")
def test_sysusers_and_tmpfiles_make_the_users_and_state_directories(root: Path):
    users = subprocess.run(
        ["systemd-sysusers", f"--root={root}"],
        capture_output=True,
        text=True,
        env=SYSTEMD_ENV,
        timeout=60,
    )
    assert users.returncode == 0, users.stderr
    assert all(line.startswith("Creating ") for line in users.stderr.splitlines()), users.stderr
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    assert set(passwd) == {"edgefleet-agent", "edgefleet-gateway"}
    dirs = subprocess.run(
        ["systemd-tmpfiles", f"--root={root}", "--create"],
        capture_output=True,
        text=True,
        env=SYSTEMD_ENV,
        timeout=60,
    )
    assert dirs.returncode == 0 and dirs.stderr == "", dirs.stderr
    for role, mode in (("agent", 0o700), ("gateway", 0o750)):
        state = (root / "var/lib" / f"edgefleet-{role}").stat()
        assert state.st_mode & 0o7777 == mode
        assert state.st_uid == int(passwd[f"edgefleet-{role}"][2])


def test_an_existing_configuration_is_never_overwritten(tmp_path: Path, capsys):
    config = tmp_path / "etc/edgefleet/agent.toml"
    config.parent.mkdir(parents=True)
    config.write_text("# the operator's own\n")
    code, out, _ = install(capsys, "agent", tmp_path)
    assert code == 0 and f"kept {config} (exists; never overwritten)" in out
    assert "edit " not in out
    assert config.read_text() == "# the operator's own\n"
    assert unit_path(tmp_path, "agent").is_file()


def test_dry_run_writes_nothing(tmp_path: Path, capsys):
    code, out, _ = install(capsys, "gateway", tmp_path, "--dry-run")
    assert code == 0 and list(tmp_path.iterdir()) == []
    assert f"would write {unit_path(tmp_path, 'gateway')}" in out
    assert f"ExecStart={EDGEFLEET} gateway run" in out
    code, out, _ = install(capsys, "gateway", tmp_path, "--dry-run", "--json")
    files = json.loads(out)["files"]
    assert code == 0 and list(tmp_path.iterdir()) == []
    assert [f["kind"] for f in files] == ["sysusers", "tmpfiles", "config", "unit"]
    assert "Type=notify" in files[-1]["content"]


def a_file(tmp: Path) -> Path:
    (tmp / "file").write_text("")
    return tmp / "file"


def etc_is_a_file(tmp: Path) -> Path:
    (tmp / "etc").write_text("")
    return tmp


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing", "not a folder"),
        (a_file, "not a folder"),
        (etc_is_a_file, "is not a folder"),
        (lambda tmp: Path("/sys"), "cannot write /sys/etc/"),  # sysfs: nothing can be created
    ],
    ids=["missing", "a-file", "etc-is-a-file", "unwritable"],
)
def test_a_bad_root_is_one_line_and_exit_2(tmp_path: Path, capsys, make, message):
    bad = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    code, out, err = install(capsys, "agent", bad)
    assert code == 2 and out == ""
    assert err.startswith("edgefleet: error: ") and err.count("\n") == 1 and message in err
    assert sorted(tmp_path.rglob("*")) == before


def test_enable_starts_nothing_outside_the_real_root(tmp_path: Path, capsys):
    code, out, err = install(capsys, "agent", tmp_path, "--enable")
    assert code == 2 and out == "" and err.count("\n") == 1 and "needs --root /" in err
    assert list(tmp_path.iterdir()) == []


class NotifySocket:
    """What systemd listens on for ``sd_notify`` datagrams."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.messages: list[dict[str, str]] = []

    def count(self, key: str, value: str) -> int:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        return sum(1 for m in self.messages if m.get(key) == value)


def test_the_gateway_tells_systemd_ready_watchdog_and_stopping(tmp_path: Path, broker, monkeypatch):
    notify = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    workdir = tmp_path / "gw"
    config = gateway_support.gateway_config(workdir, broker, None)
    gateway = gateway_support.Gateway(workdir, config).start()
    deadline = time.monotonic() + 10
    while notify.count("WATCHDOG", "1") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert notify.count("READY", "1") == 1 and notify.count("WATCHDOG", "1") >= 3
    assert "devices online" in next(m["STATUS"] for m in notify.messages if "READY" in m)
    assert gateway.stop() == 0
    assert notify.count("STOPPING", "1") == 1


def test_an_interpreter_the_service_cannot_see_is_named(tmp_path: Path):
    script = tmp_path / "edgefleet"
    script.write_text("#!/home/op/venv/bin/python3\n")
    assert service.hidden_from_services(str(script)) == ["/home/op/venv/bin/python3"]
    script.write_text("#!/usr/bin/python3\n")
    assert service.hidden_from_services(str(script)) == []
