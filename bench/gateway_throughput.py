"""Gateway throughput end to end, its CPU cost, and its memory through a long cloud outage.

Simulated devices (paho, client id = device id, QoS 1, in their own processes) publish telemetry
batches to a real mosquitto; the gateway (``edgefleet gateway run``, a separate process) spools
them and uploads to a local HTTP cloud (aiohttp, its own process) that deduplicates by record id.

1. Throughput: ``--records`` records as fast as the devices can publish them; the rate is records
   over the time from the first publish to the moment the cloud holds every one of them.
   Gateway CPU seconds (user + system, from /proc) per 10k records over the same span, and the
   same for mosquitto, the cloud and the publishers: their sum says how fast the whole pipeline
   could go on this machine's cores if nothing else ran on them (the ceiling in the table).
2. Backlog: with the gateway stopped, ``--backlog-records`` records queue at the broker (the
   gateway's persistent session); the gateway starts and the bench times the drain to the cloud:
   the gateway's own rate, with no publishers competing for the CPU.
3. Outage: the cloud answers 503 for ``--outage-seconds`` while the devices keep publishing at
   ``--outage-rate``; the gateway's RSS is sampled every second. Then the cloud recovers and the
   bench times the drain.
4. Zero loss: the cloud must hold every record published, and the gateway must have dropped none.

    python bench/gateway_throughput.py [--records 1000000] [--outage-seconds 600] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_sim.broker import BrokerConfig, Mosquitto, free_port
from protocol.telemetry import Inference, InputSummary, Record, RecordId, encode_batch
from protocol.topics import device_topic

PREFIX = "edgefleet/bench"
GATEWAY_USER = ("gateway", "bench-password")
RECORD_ID = re.compile(rb'\{"dev":"([^"]+)","boot":"([^"]+)","seq":(\d+),')
CLK_TCK = os.sysconf("SC_CLK_TCK")


def record_template(device: str, boot: str) -> bytes:
    """``Record.encode`` with seq and ts_ms left as ``%d``: the same bytes, made ~10x faster."""
    body = Inference(
        "kws",
        1,
        ((3, 0.91), (1, 0.05), (7, 0.02)),
        812,
        InputSummary(
            0.1,
            0.5,
            -1.0,
            1.0,
            (0.57876, 0.08632, 0.15236, 0.04911, 0.81856, 0.86839, 0.03523, 0.419),
        ),
    )
    sample = Record(RecordId(device, boot, 123456), 987654321, body).encode()
    template = sample.replace(b'"seq":123456,"ts_ms":987654321,', b'"seq":%d,"ts_ms":%d,')
    assert template % (7, 8) == Record(RecordId(device, boot, 7), 8, body).encode()
    return template


# -- cloud (own process) ---------------------------------------------------------------------------


def cloud_main(port: int, ready) -> None:
    from aiohttp import web

    seen: dict[tuple[bytes, bytes], bytearray] = {}
    stats = {"unique": 0, "received": 0, "batches": 0, "refused": 0, "mode": "ok"}

    def mark(dev: bytes, boot: bytes, seq: int) -> None:
        bits = seen.get((dev, boot))
        if bits is None:
            bits = seen[(dev, boot)] = bytearray()
        byte = seq >> 3
        if byte >= len(bits):
            bits.extend(b"\0" * (byte - len(bits) + 1 + 4096))
        mask = 1 << (seq & 7)
        if not bits[byte] & mask:
            bits[byte] |= mask
            stats["unique"] += 1

    async def ingest(request: web.Request) -> web.Response:
        if stats["mode"] != "ok":
            stats["refused"] += 1
            return web.Response(status=503)
        if not request.headers.get("Idempotency-Key"):
            return web.Response(status=400)
        body = await request.read()  # aiohttp has undone Content-Encoding: gzip
        count = 0
        for line in body.splitlines():
            match = RECORD_ID.match(line)
            if match is None:
                data = json.loads(line)
                mark(data["dev"].encode(), data["boot"].encode(), data["seq"])
            else:
                mark(match[1], match[2], int(match[3]))
            count += 1
        stats["received"] += count
        stats["batches"] += 1
        return web.json_response({"accepted": count})

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def set_mode(request: web.Request) -> web.Response:
        stats["mode"] = request.match_info["mode"]
        return web.json_response(stats)

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/ingest", ingest)
    app.router.add_get("/stats", get_stats)
    app.router.add_post("/mode/{mode}", set_mode)

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(serve())


def cloud_call(port: int, path: str, method: str = "GET") -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


# -- devices (own processes) -----------------------------------------------------------------------


def publisher_main(
    port: int, devices: dict[str, str], records: int, batch: int, rate: float | None, go, cpu
) -> None:
    """Each device publishes ``records`` records in batches; ``rate`` (records/s for all these
    devices together) or as fast as the broker acknowledges, at most 64 batches in flight."""
    import paho.mqtt.client as mqtt

    clients, windows, templates, boots = [], [], [], []
    for device in devices:
        window = threading.Semaphore(64)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
        client.username_pw_set(device, devices[device])
        client.on_publish = lambda c, u, mid, rc, p, w=window: w.release()
        client.connect("127.0.0.1", port, keepalive=60)
        client.loop_start()
        boot = os.urandom(8).hex()
        clients.append(client)
        windows.append(window)
        boots.append(boot)
        templates.append(record_template(device, boot))
    go.wait()
    started = time.monotonic()
    sent = 0
    for first in range(0, records, batch):
        count = min(batch, records - first)
        for device, client, window, template in zip(
            devices, clients, windows, templates, strict=True
        ):
            payload = encode_batch(
                device, [template % (s, 1_700_000_000_000 + s) for s in range(first, first + count)]
            )
            window.acquire()
            client.publish(device_topic(PREFIX, device, "telemetry"), payload, qos=1)
            sent += count
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    for window in windows:
        for _ in range(64):
            window.acquire()
    for client in clients:
        client.disconnect()
        client.loop_stop()
    user, system = os.times()[:2]
    with cpu.get_lock():
        cpu.value += user + system


class Devices:
    def __init__(self, broker: Mosquitto, processes: int, per_process: int, tag: str):
        self.port, self.tag = broker.config.port, tag
        self.names = [
            dict(broker.login(f"{tag}-{p}-{d}") for d in range(per_process))
            for p in range(processes)
        ]
        self.cpu = mp.Value("d", 0.0)  # CPU seconds of the publisher processes

    def run(self, records_per_device: int, batch: int, rate: float | None) -> list[mp.Process]:
        go = mp.Event()
        per_process_rate = rate / len(self.names) if rate else None
        procs = [
            mp.Process(
                target=publisher_main,
                args=(
                    self.port,
                    names,
                    records_per_device,
                    batch,
                    per_process_rate,
                    go,
                    self.cpu,
                ),
            )
            for names in self.names
        ]
        for proc in procs:
            proc.start()
        time.sleep(1.0)  # let every device connect before the clock starts
        go.set()
        return procs


# -- gateway process ------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def gateway_metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def start_gateway(work: Path, broker: Mosquitto, cloud_port: int, metrics_port: int):
    config = work / "gateway.toml"
    config.write_text(
        f"""[gateway]
site = "bench"
data_dir = "{work / "gw"}"

[mqtt]
url = "{broker.url}"
username = "{GATEWAY_USER[0]}"
password = "{GATEWAY_USER[1]}"

[uplink]
sink = "http"
url = "http://127.0.0.1:{cloud_port}/ingest"
backoff_cap_s = 5.0

[admin]
listen = "unix:{work / "admin.sock"}"

[metrics]
listen = "127.0.0.1:{metrics_port}"
"""
    )
    exe = Path(sys.executable).with_name("edgefleet")
    log = open(work / "gateway.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(exe), "gateway", "run", "--config", str(config)], stderr=log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if gateway_metrics(metrics_port).get("edgefleet_gateway_mqtt_connected") == 1:
                return proc
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gateway did not start; see {work / 'gateway.log'}")


def wait_cloud(port: int, expected: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cloud_call(port, "/stats")["unique"] >= expected:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"cloud has {cloud_call(port, '/stats')['unique']} of {expected} records")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="throughput phase total")
    parser.add_argument("--processes", type=int, default=2, help="publisher processes")
    parser.add_argument("--devices", type=int, default=10, help="devices per publisher process")
    parser.add_argument("--batch", type=int, default=100, help="records per MQTT message")
    parser.add_argument(
        "--backlog-records", type=int, default=500_000, help="queued at the broker, then drained"
    )
    parser.add_argument("--outage-seconds", type=float, default=600.0)
    parser.add_argument("--outage-rate", type=float, default=2000.0, help="records/s in outage")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    mp.set_start_method("spawn")

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    broker = Mosquitto(
        BrokerConfig(workdir=work / "broker", port=free_port(), users=dict([GATEWAY_USER]))
    )
    (work / "broker").mkdir()
    cloud_port, metrics_port = free_port(), free_port()
    ready = mp.Event()
    cloud = mp.Process(target=cloud_main, args=(cloud_port, ready), daemon=True)
    cloud.start()
    ready.wait(20)
    broker.start()
    gateway = start_gateway(work, broker, cloud_port, metrics_port)
    results: dict[str, float | int | str] = {}
    try:
        devices = args.processes * args.devices
        per_device = args.records // devices
        total = per_device * devices
        fast = Devices(broker, args.processes, args.devices, "fast")
        others = {"mosquitto": broker._proc.pid, "cloud": cloud.pid}
        cpu0 = proc_cpu(gateway.pid)
        others0 = {name: proc_cpu(pid) for name, pid in others.items()}
        procs = fast.run(per_device, args.batch, None)
        t0 = time.monotonic()
        for proc in procs:
            proc.join()
        t_published = time.monotonic()
        t_done = wait_cloud(cloud_port, total, 600)
        cpu = proc_cpu(gateway.pid) - cpu0
        per_10k = {
            name: (proc_cpu(pid) - others0[name]) / total * 10_000 for name, pid in others.items()
        }
        per_10k |= {"gateway": cpu / total * 10_000, "publishers": fast.cpu.value / total * 10_000}
        cores = os.cpu_count() or 1
        results |= {
            "records": total,
            "message_records": args.batch,
            "devices": devices,
            "publish_records_per_s": round(total / (t_published - t0)),
            "end_to_end_records_per_s": round(total / (t_done - t0)),
            "gateway_rss_mb_after_throughput": round(proc_rss_mb(gateway.pid), 1),
            **{f"cpu_s_per_10k_{name}": round(value, 3) for name, value in per_10k.items()},
            "cpu_bound_ceiling_records_per_s": round(cores * 10_000 / sum(per_10k.values())),
        }
        print(f"throughput: {results['end_to_end_records_per_s']} records/s end to end", flush=True)

        if args.backlog_records > 0:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(30)
            per_device = args.backlog_records // devices
            for proc in Devices(broker, args.processes, args.devices, "queued").run(
                per_device, args.batch, None
            ):
                proc.join()
            backlog = per_device * devices
            t0 = time.monotonic()
            gateway = start_gateway(work, broker, cloud_port, metrics_port)
            cpu0 = proc_cpu(gateway.pid)
            total += backlog
            t_done = wait_cloud(cloud_port, total, 600)
            cpu = proc_cpu(gateway.pid) - cpu0
            results |= {
                "backlog_records": backlog,
                "backlog_drain_records_per_s": round(backlog / (t_done - t0)),
                "backlog_gateway_cpu_s_per_10k_records": round(cpu / backlog * 10_000, 3),
            }
            print(f"backlog: {results['backlog_drain_records_per_s']} records/s", flush=True)

        if args.outage_seconds > 0:
            cloud_call(cloud_port, "/mode/down", "POST")
            slow = Devices(broker, 1, 10, "slow")
            per_device = max(1, int(args.outage_rate * args.outage_seconds / 10))
            rss: list[float] = []
            procs = slow.run(per_device, args.batch, args.outage_rate)
            t_outage = time.monotonic()
            while any(p.is_alive() for p in procs):
                rss.append(proc_rss_mb(gateway.pid))
                time.sleep(1.0)
            outage_s = time.monotonic() - t_outage
            spool = gateway_metrics(metrics_port)
            cloud_call(cloud_port, "/mode/ok", "POST")
            t_recover = time.monotonic()
            outage_total = per_device * 10
            t_drained = wait_cloud(cloud_port, total + outage_total, 3600)
            results |= {
                "outage_s": round(outage_s, 1),
                "outage_records": outage_total,
                "outage_spool_mb": round(spool["edgefleet_gateway_spool_bytes"] / 2**20, 1),
                "outage_rss_mb_first": round(rss[0], 1) if rss else 0,
                "outage_rss_mb_max": round(max(rss), 1) if rss else 0,
                "outage_rss_mb_last": round(rss[-1], 1) if rss else 0,
                "drain_s": round(t_drained - t_recover, 1),
            }
            total += outage_total
        stats = cloud_call(cloud_port, "/stats")
        metrics = gateway_metrics(metrics_port)
        dropped = int(metrics["edgefleet_gateway_spool_dropped_records_total"])
        results |= {
            "cloud_unique_records": stats["unique"],
            "cloud_duplicates": stats["received"] - stats["unique"],
            "gateway_dropped": dropped,
            "lost": total - stats["unique"],
        }
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        broker.kill()
        cloud.kill()
    width = max(len(k) for k in results)
    print(f"\ngateway throughput ({os.cpu_count()} CPUs)")
    for key, value in results.items():
        print(f"  {key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if results.get("lost") == 0 and results.get("gateway_dropped") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
