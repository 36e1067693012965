"""The simulator's clock faults run real processes under libfaketime: an offset written to a
process's clock file must move ``datetime.now()`` inside it while it runs, TUF's expiry checks
must see the moved clock, and sleeping and monotonic timers must stay on real time."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from firmware_sim.fleet.clock import (
    ClockError,
    ClockFile,
    SiteClocks,
    find_libfaketime,
    offset_text,
)

try:
    LIBRARY = find_libfaketime()
except ClockError:
    LIBRARY = None

needs_faketime = pytest.mark.skipif(LIBRARY is None, reason="libfaketime is not installed")

# Reads a line from stdin, answers with its wall clock, its monotonic clock, how long a 0.2 s
# sleep took, and whether metadata expiring in 30 real days is expired by its clock.
CHILD = """
import json, sys, time
from datetime import UTC, datetime, timedelta
from tuf.api.metadata import Metadata, Timestamp
expires = datetime.fromisoformat(sys.argv[1])
md = Metadata(Timestamp(expires=expires))
for line in sys.stdin:
    begun = time.monotonic()
    time.sleep(0.2)
    slept = time.monotonic() - begun
    print(json.dumps({"now": datetime.now(UTC).isoformat(), "slept": slept,
                      "expired": md.signed.is_expired()}), flush=True)
"""


def ask(proc: subprocess.Popen) -> dict:
    proc.stdin.write("?\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def ask_until(proc: subprocess.Popen, expired: bool, timeout: float = 5.0) -> dict:
    """libfaketime reads the clock file at most once a (whole) second: up to 2 s late."""
    deadline = time.monotonic() + timeout
    while (answer := ask(proc))["expired"] is not expired and time.monotonic() < deadline:
        pass
    return answer


@needs_faketime
def test_an_offset_moves_a_running_process_and_tuf_sees_it(tmp_path):
    clock = ClockFile(tmp_path / "clock", LIBRARY)
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, expires.isoformat()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=clock.env(),
    )  # fmt: skip
    try:
        before = ask(proc)
        assert abs(datetime.fromisoformat(before["now"]) - datetime.now(UTC)) < timedelta(seconds=5)
        assert before["expired"] is False
        assert 0.19 <= before["slept"] < 1.0  # time.sleep works, on real time

        clock.set(45 * 86400)
        after = ask_until(proc, expired=True)
        moved = datetime.fromisoformat(after["now"]) - datetime.now(UTC)
        assert timedelta(days=45) - timedelta(seconds=5) < moved < timedelta(days=45, seconds=5)
        assert after["expired"] is True
        assert 0.19 <= after["slept"] < 1.0  # the monotonic clock did not jump

        clock.set(0)
        assert ask_until(proc, expired=False)["expired"] is False
    finally:
        proc.stdin.close()
        proc.wait(10)
        assert proc.returncode == 0, proc.stderr.read()


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "+0"), (45 * 86400, "+3888000"), (-7200, "-7200"), (0.4, "+0")]
)
def test_offsets_in_libfaketime_form(seconds, text):
    assert offset_text(seconds) == text


@needs_faketime
def test_site_clock_and_device_skews_compose(tmp_path):
    clocks = SiteClocks(tmp_path)
    dev = clocks.device("dev000")
    other = clocks.device("dev001")
    clocks.skew(["dev000"], 400 * 86400)
    clocks.jump(45 * 86400)
    read = lambda c: c.path.read_text().strip()  # noqa: E731
    assert read(clocks.gateway) == "+3888000"
    assert read(dev) == f"+{445 * 86400}" and read(other) == "+3888000"
    clocks.skew(["dev000"], 0)
    assert read(dev) == "+3888000"
    env = dev.env({"PYTHONPATH": "/x"})
    assert env["LD_PRELOAD"] == str(LIBRARY) and env["PYTHONPATH"].endswith(":/x")
    assert env["DONT_FAKE_MONOTONIC"] == "1"


def test_missing_library_is_one_line(monkeypatch):
    monkeypatch.setattr("firmware_sim.fleet.clock.LIBRARY_GLOBS", ("/nonexistent/*.so.1",))
    with pytest.raises(ClockError, match="apt-get install libfaketime"):
        find_libfaketime()
