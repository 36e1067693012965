"""The site's CPU and memory as the simulator samples them from /proc: a process the run
replaced keeps the CPU it used, and the peak is the largest any reached."""

from __future__ import annotations

import subprocess
import sys
import time

from firmware_sim.fleet.usage import UsageSampler, cpu_seconds

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"


def test_cpu_of_a_replaced_process_is_kept_and_a_gone_one_reads_none():
    first = subprocess.Popen([sys.executable, "-c", BURN + "input()"], stdin=subprocess.PIPE)
    current = {"gateway": first.pid}
    sampler = UsageSampler(lambda: current)
    began = time.monotonic()
    try:
        while (cpu_seconds(first.pid) or 0) < 0.3:
            pass
        sampler.sample()
    finally:
        first.communicate(b"\n")
    assert cpu_seconds(first.pid) is None  # reaped
    second = subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE)
    current["gateway"] = second.pid
    try:
        figures = sampler.report()
    finally:
        second.communicate(b"\n")
    assert figures["gateway_cpu_s"] >= 0.3
    assert figures["gateway_cpu_percent"] >= 100 * figures["gateway_cpu_s"] / (
        time.monotonic() - began
    )
    assert 5 < figures["gateway_rss_mb_peak"] < 500
    current["gateway"] = None
    assert sampler.report()["gateway_cpu_s"] == figures["gateway_cpu_s"]
