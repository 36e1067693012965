"""``edgefleet sim --serve``: after its report the site runs on with the gateway's console on
loopback; a viewer signs in over HTTP with the token the command printed, and SIGTERM stops the
site, leaving no agent or gateway process behind."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

REPO = Path(__file__).resolve().parents[2]
SCENARIO = """name = "serve"
time_limit = "60s"
[fleet]
devices = 2
model = "fixture:vision_f32_v1"
rate_hz = 5
[[step]]
at = "1s"
do = "wait"
until = "devices_on_target:all"
"""

pytestmark = pytest.mark.slow


def processes_under(workdir: Path) -> dict[int, str]:
    """Live processes whose command line names a file of this run (agents, gateway, broker)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = next(
                line for line in (entry / "status").read_text().splitlines()
                if line.startswith("State:")
            )  # fmt: skip
        except (OSError, StopIteration):
            continue
        if str(workdir) in cmdline and "zombie" not in state:
            found[int(entry.name)] = cmdline
    return found


def lines_of(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)  # the command ended

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_line(lines: queue.Queue, pattern: str, timeout: float, seen: list[str]) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if found := re.match(pattern, line):
            return found
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


async def sign_in(url: str, token: str) -> dict[str, str]:
    """The console as a browser uses it: the sign-in form, a wrong token, the viewer token,
    then the devices page with the session cookie. Bodies by what was fetched."""
    jar = aiohttp.CookieJar(unsafe=True)  # the console is on an IP address, not a host name
    timeout = aiohttp.ClientTimeout(total=20)
    bodies = {}
    async with aiohttp.ClientSession(cookie_jar=jar, timeout=timeout) as http:
        async with http.get(url + "login") as answer:
            assert answer.status == 200
            bodies["login"] = await answer.text()
        async with http.post(url + "login", data={"token": "x" * 43}) as answer:
            assert answer.status == 401
        async with http.get(url + "devices", allow_redirects=False) as answer:
            assert answer.status == 303  # not signed in
        form = {"token": token}
        async with http.post(url + "login", data=form, allow_redirects=False) as answer:
            assert answer.status == 303 and answer.headers["Location"] == "/ui/"
        deadline = time.monotonic() + 60
        while True:  # the agents the report stopped come back online
            async with http.get(url + "devices", allow_redirects=False) as answer:
                assert answer.status == 200
                bodies["devices"] = await answer.text()
            if bodies["devices"].count(">online<") >= 2 or time.monotonic() > deadline:
                return bodies
            await asyncio.sleep(1)


def test_sim_serves_the_console_after_its_report_until_sigterm(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text(SCENARIO)
    workdir = tmp_path / "run"
    with (tmp_path / "sim.err").open("w") as errors:
        sim = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "sim", str(path), "--serve",
             "--workdir", str(workdir)],
            stdout=subprocess.PIPE, stderr=errors, text=True, cwd=REPO,
        )  # fmt: skip
    try:
        lines, seen = lines_of(sim.stdout), []
        wait_line(lines, r"scenario serve: PASSED", 300, seen)
        url = wait_line(lines, r"console: (http://127\.0\.0\.1:\d+/ui/)$", 60, seen)[1]
        token = wait_line(lines, r"viewer token: (\S+)$", 10, seen)[1]
        bodies = asyncio.run(sign_in(url, token))
        assert 'name="token"' in bodies["login"]
        assert "dev000" in bodies["devices"] and "dev001" in bodies["devices"]
        assert bodies["devices"].count(">online<") >= 2, bodies["devices"]
        running = processes_under(workdir)
        assert sum("agent run" in c for c in running.values()) == 2, running
        assert sum("gateway run" in c for c in running.values()) == 1, running

        sim.send_signal(signal.SIGTERM)
        assert sim.wait(60) == 0, (tmp_path / "sim.err").read_text()[-3000:]
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
    left = {pid: c for pid, c in processes_under(workdir).items() if pid != os.getpid()}
    assert left == {}
