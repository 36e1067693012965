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
    ("Inference", "agent_inference.py", ["--seconds", "10"]),
    ("Telemetry", "gateway_throughput.py", ["--records", "200000", "--outage-seconds", "60"]),
    ("Serial", "serial_throughput.py", []),
    ("Updates", "update_rollout.py", ["--runs", "3"]),
]
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
            "stdout": result.stdout,
        }


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def flatten(value, prefix: str = "") -> list[dict]:
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return value
    if isinstance(value, dict):
        rows = []
        for key, item in value.items():
            name = f"{prefix}{key}"
            if isinstance(item, dict):
                rows += flatten(item, f"{name}.")
            elif isinstance(item, list) and item and all(isinstance(v, dict) for v in item):
                rows += [{"figure": f"{name}[{i}]", **v} for i, v in enumerate(item)]
            else:
                rows.append({"figure": name, "value": item})
        return rows
    return [{"figure": prefix or "value", "value": value}]


def plot_deltas(rows: list[dict], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["pair"] for r in rows]
    series = [
        ("full", "full_bytes"),
        ("gzip", "gzip_bytes"),
        ("bsdiff4", "bsdiff4_bytes"),
        ("xor+lzma", "xor_lzma_bytes"),
    ]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.2
    for i, (label, key) in enumerate(series):
        ax.bar(
            [x + i * width for x in range(len(names))],
            [r[key] / 1024 for r in rows],
            width,
            label=label,
        )
    ax.set_xticks([x + 1.5 * width for x in range(len(names))], names)
    ax.set_ylabel("KiB on the wire")
    ax.set_title("Model update size per version pair")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--only", nargs="*", help="run only these parts (e.g. Deltas Serial)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per part")
    args = parser.parse_args()
    report = {"machine": machine(), "parts": {}}
    for title, script, extra in BENCHES:
        if args.only and title not in args.only:
            continue
        if not (HERE / script).exists():
            report["parts"][title] = {"error": [f"{script} is missing"]}
            continue
        print(f"running {title} ({script}) ...", flush=True)
        try:
            report["parts"][title] = run(script, extra, args.timeout)
        except subprocess.TimeoutExpired:
            report["parts"][title] = {"error": [f"timed out after {args.timeout:g} s"]}
    plots = []
    deltas = report["parts"].get("Deltas", {}).get("results")
    if deltas and plot_deltas(deltas, args.out / "deltas.png"):
        plots.append(("Deltas", "deltas.png"))

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
    for title, part in report["parts"].items():
        lines += [f"## {title}", ""]
        if "error" in part:
            lines += [f"Not measured: {' '.join(part['error'])}", ""]
            continue
        lines += [markdown_table(flatten(part["results"])), "", f"({part['seconds']} s)", ""]
        lines += [f"![{t}]({p})" for t, p in plots if t == title] + [""]
    for part in report["parts"].values():
        part.pop("stdout", None)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "REPORT.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'REPORT.md'} and {args.out / 'report.json'}")


if __name__ == "__main__":
    main()
