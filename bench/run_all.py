"""Every headline figure in one run: ``make bench`` writes bench/REPORT.md and bench/report.json.

Each part's benchmark runs as its own process (so one part's memory and threads do not colour
another's) with a size that keeps the whole run under about ten minutes on two cores, and writes
its rows as JSON; each reports medians and its ratio against a baseline measured in the same run.
This script adds the machine, the date and the library versions, renders the tables and draws
the plots.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ("Deltas", "delta_codec.py", ["--runs", "5"]),
    ("Inference", "agent_inference.py", ["--seconds", "5", "--rounds", "10"]),
    ("Agent memory", "agent_memory.py", ["--seconds", "5"]),
    ("Telemetry", "gateway_throughput.py", ["--records", "200000", "--outage-seconds", "60"]),
    ("Serial", "serial_throughput.py", []),
    ("Updates", "update_rollout.py", ["--runs", "3"]),
    ("Update worker", "update_worker.py", []),
    ("Fleet", "fleet_scale.py", ["--sizes", "100,500,1000"]),
    ("Data loop", "data_loop.py", ["--devices", "10", "--drifting", "3", "--seconds", "100"]),
    ("Capture cost", "capture_cost.py", ["--rounds", "10", "--seconds", "2"]),
]
# Parts that take longer than the default per-part timeout: the fleet sweep brings up to a
# thousand devices up, through faults, and rolls out to a hundred agent processes.
TIMEOUTS_S = {"Fleet": 3600.0}
LIBRARIES = (
    "numpy",
    "ai-edge-litert",
    "tuf",
    "bsdiff4",
    "aiomqtt",
    "paho-mqtt",
    "aiohttp",
    "pyserial",
    "tflite-micro",
)


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(
        next(
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    )
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    mosquitto = subprocess.run(
        ["sh", "-c", "mosquitto -h 2>&1 | head -1 || true"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/sbin:/usr/bin"},
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": versions,
        "mosquitto": mosquitto.stdout.strip(),
    }


def run(script: str, args: list[str], timeout: float) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, str(HERE / script), *args, "--json", out.name],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        elapsed = round(time.monotonic() - started, 1)
        if result.returncode != 0:
            return {
                "error": (result.stderr or result.stdout).strip().splitlines()[-1:],
                "seconds": elapsed,
            }
        return {
            "results": json.loads(Path(out.name).read_text() or "null"),
            "seconds": elapsed,
        }


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def tables(value) -> list[tuple[str, list[dict]]]:
    """A part's results as titled tables: each list of rows its own table, the scalars (with
    nested objects spelled ``a.b``) one figure/value table."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [("", value)]
    found: list[tuple[str, list[dict]]] = []
    scalars: list[dict] = []

    def walk(item, name: str) -> None:
        if isinstance(item, dict):
            for key, sub in item.items():
                walk(sub, f"{name}.{key}" if name else key)
        elif isinstance(item, list) and item and all(isinstance(v, dict) for v in item):
            found.append((name, [{k: _cell(v) for k, v in row.items()} for row in item]))
        else:
            scalars.append({"figure": name or "value", "value": _cell(item)})

    walk(value, "")
    return ([("", scalars)] if scalars else []) + found


def _cell(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def plot_deltas(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["pair"] for r in rows]
    series = [
        ("model", "model_bytes"),
        ("bsdiff4 (raw)", "bsdiff4_raw_bytes"),
        ("container", "container_bytes"),
    ]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.27
    for i, (label, key) in enumerate(series):
        ax.bar(
            [x + i * width for x in range(len(names))],
            [r[key] / 1024 for r in rows],
            width,
            label=label,
        )
    ax.set_xticks([x + width for x in range(len(names))], names)
    ax.set_ylabel("KiB on the wire")
    ax.set_title("Model update size per version pair")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_serial(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bauds = [str(r["baud"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(bauds, [100 * r["efficiency"] for r in rows], color="tab:blue")
    ax.axhline(98, color="tab:red", linestyle="--", label="target at 115200: 98%")
    ax.set_xlabel("baud")
    ax.set_ylabel("payload / line rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Serial upload throughput")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_fleet(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["devices"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(sizes, [r["rollout_s"] or 0 for r in rows], "o-", color="tab:orange", label="rollout")
    ax.set_xlabel("devices (light mode, through a broker restart and a cloud outage)")
    ax.set_ylabel("staged rollout to all (s)", color="tab:orange")
    site = ax.twinx()
    cpu = [r.get("gateway_cpu_percent") or 0 for r in rows]
    site.plot(sizes, cpu, "s--", color="tab:blue", label="gateway CPU (% of a core)")
    rss = [r.get("gateway_rss_mb_peak") or 0 for r in rows]
    site.plot(sizes, rss, "^:", color="tab:green", label="gateway peak RSS (MB)")
    site.set_ylabel("gateway CPU % / RSS MB")
    site.legend(loc="upper left", fontsize=8)
    ax.set_title("One gateway and its fleet on this machine")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_plots(report: dict, out: Path) -> dict[str, str]:
    """Plot file per part, where a picture reads faster than the table."""
    plots = {}
    results = {t: p.get("results") for t, p in report["parts"].items()}
    deltas = (results.get("Deltas") or {}).get("pairs")
    if deltas:
        plot_deltas(deltas, out / "deltas.png")
        plots["Deltas"] = "deltas.png"
    serial = (results.get("Serial") or {}).get("serial_throughput")
    if serial:
        plot_serial(serial, out / "serial.png")
        plots["Serial"] = "serial.png"
    fleet = (results.get("Fleet") or {}).get("sizes")
    if fleet:
        plot_fleet(fleet, out / "fleet.png")
        plots["Fleet"] = "fleet.png"
    return plots


def render(report: dict, plots: dict[str, str]) -> str:
    m = report["machine"]
    lines = [
        "# edgefleet performance report",
        "",
        f"{m['date']} on {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB), "
        f"Python {m['python']}, {m['mosquitto']}.",
        "",
        "Libraries: " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v) + ".",
        "",
        "Timings are medians of several runs; each ratio is against a baseline measured in the "
        "same run.",
        "",
    ]
    lines += ["## Targets", ""]
    for title, part in report["parts"].items():
        found = (part.get("results") or {}) if "error" not in part else {}
        for verdict in found.get("verdicts", []) if isinstance(found, dict) else []:
            lines.append(f"- **{title}**: {verdict}")
    lines.append("")
    for title, part in report["parts"].items():
        lines += [f"## {title}", ""]
        if "error" in part:
            lines += [f"Not measured: {' '.join(part['error'])}", ""]
            continue
        results = part["results"]
        if isinstance(results, dict) and results.get("verdicts"):
            lines += [f"- {verdict}" for verdict in results["verdicts"]] + [""]
            results = {k: v for k, v in results.items() if k != "verdicts"}
        for name, rows in tables(results):
            lines += ([f"### {name}", ""] if name else []) + [markdown_table(rows), ""]
        when = part.get("date", "in an earlier run")
        lines += [f"({part['seconds']} s, measured {when})", ""]
        if title in plots:
            lines += [f"![{title}]({plots[title]})", ""]
    return "\n".join(lines)


def measure(only: list[str] | None, timeout: float) -> dict:
    report = {"machine": machine(), "parts": {}}
    for title, script, extra in BENCHES:
        if only and title not in only:
            continue
        if not (HERE / script).exists():
            report["parts"][title] = {"error": [f"{script} is missing"]}
            continue
        print(f"running {title} ({script}) ...", flush=True)
        try:
            part = run(script, extra, TIMEOUTS_S.get(title, timeout))
        except subprocess.TimeoutExpired:
            part = {"error": [f"timed out after {timeout:g} s"]}
        report["parts"][title] = part | {"date": datetime.now(UTC).isoformat(timespec="seconds")}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument(
        "--only",
        nargs="*",
        help="run only these parts (e.g. Deltas Serial); the others keep their figures from "
        "the report.json already in --out",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per part")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="REPORT.json",
        help="only redraw REPORT.md and the plots from an earlier report.json",
    )
    args = parser.parse_args()
    if args.render:
        report = json.loads(args.render.read_text())
    else:
        report = measure(args.only, args.timeout)
        earlier = args.out / "report.json"
        if args.only and earlier.exists():  # the parts not run keep their last figures
            kept = json.loads(earlier.read_text())["parts"]
            report["parts"] = {
                title: report["parts"].get(title) or kept[title]
                for title, _, _ in BENCHES
                if title in report["parts"] or title in kept
            }
        earlier.write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "REPORT.md").write_text(render(report, draw_plots(report, args.out)))
    print(f"wrote {args.out / 'REPORT.md'} and {args.out / 'report.json'}")


if __name__ == "__main__":
    main()
