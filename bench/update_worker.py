"""What one update costs a device in memory and disk, for the largest model it takes.

    python bench/update_worker.py [--size-mib 64] [--bsdiff] [--json out.json]

The model is the bundled ``kws_f32_v1`` (and its ``v2_head`` fine-tune) padded with the same
random bytes to ``--size-mib`` (default: the updater's ``max_model_bytes``, 64 MiB); LiteRT
loads and gates it like any model. Both versions are signed into a real repository served over
loopback HTTP; a device state folder is provisioned with v1 through the update cycle. Then, for
each way v2 can travel (the model itself; a delta of the full model zlib-compressed; the tensor
delta (raw LZMA2); with ``--bsdiff`` a bsdiff4 delta, slow to make at this size), a copy of
that folder takes the offer with the real update worker (``python -m agent.updater.worker``)
in two runs:

1. download, delta apply and verification, up to the saved VERIFIED state (the worker is
   stopped by its fault hook right after that save);
2. resumed: install into the inactive slot, health gate on the engine, switch to TRIAL.

Reported per run: the worker's peak resident set (its ``ru_maxrss``, measured through a small
launcher so that this process's size does not count: ``tests/support/peak_rss.py``) and wall
time; and the disk the state folder uses at TRIAL (both slots, the work
folder with the download and the verified candidate, the TUF metadata), which is the most it
uses during the update. The same for the bundled 92 KiB model, for the worker's own base.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.updater.download import DEFAULT_MAX_MODEL_BYTES
from edgefleet.models import model_path
from firmware_sim.fleet.releases import sign_model
from gateway.releases.repository import Repository
from protocol.delta import Algorithm, delta_target_path, make_delta
from tests.support.peak_rss import run_measured
from tests.updater.conftest import provision
from tests.updater.support import FAST, REPO, served

MiB = 1 << 20
DELTA = delta_target_path("kws", 1, 2)
STOP_AFTER_DOWNLOAD = "state.VERIFIED.dir_synced"


def models(size: int) -> tuple[bytes, bytes]:
    v1, v2 = (model_path(n).read_bytes() for n in ("kws_f32_v1", "kws_f32_v2_head"))
    pad = random.Random(1).randbytes(max(size - len(v1), 0))
    return v1 + pad, v2 + pad


def worker(state_dir: Path, root: Path, args: list[str], hook: str | None) -> dict:
    """One worker run: its peak resident set (MiB), wall time and exit status."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_FAULT")}
    if hook:
        env["EDGEFLEET_FAULT_HOOK"] = hook
    command = [sys.executable, "-m", "agent.updater.worker", "--state-dir", str(state_dir)]
    command += ["--root", str(root), "--max-model-bytes", str(1 << 31), *args]
    started = time.perf_counter()
    run = run_measured(command, cwd=REPO, env=env)
    return {
        "peak_mib": round(run.peak_bytes / MiB, 1),
        "seconds": round(time.perf_counter() - started, 2),
        "exit": run.returncode,
    }


def disk_mib(folder: Path) -> float:
    """Blocks allocated under ``folder`` (what ``du`` counts)."""
    blocks = sum(p.lstat().st_blocks for p in folder.rglob("*") if not p.is_symlink())
    return round(blocks * 512 / MiB, 1)


def one_update(template: Path, root: Path, url: str, home: Path, label: str) -> dict:
    state_dir = home / label
    shutil.copytree(template, state_dir, symlinks=True)
    offer = ["run", "--repository", url, "--target", "kws/2.tflite"]
    fetch = worker(state_dir, root, offer, STOP_AFTER_DOWNLOAD)
    assert fetch["exit"] == -9, fetch
    gate = worker(state_dir, root, ["run"], None)
    saved = json.loads((state_dir / "state.json").read_text())
    assert saved["state"] == "TRIAL", saved
    return {
        "download_apply_peak_mib": fetch["peak_mib"],
        "download_apply_s": fetch["seconds"],
        "install_gate_peak_mib": gate["peak_mib"],
        "install_gate_s": gate["seconds"],
        "disk_at_trial_mib": disk_mib(state_dir),
        "of_which_work_mib": disk_mib(state_dir / "work"),
    }


def measure(size: int, bsdiff: bool, base: Path) -> list[dict]:
    v1, v2 = models(size)
    repo = Repository.init(base / "repo")
    sign_model(repo, v1, "kws", 1, FAST)
    sign_model(repo, v2, "kws", 2, FAST)
    root = repo.metadata_dir / "1.root.json"
    ways = [("zlib", [Algorithm.FULL_ZLIB]), ("tensor_lzma", [Algorithm.TENSOR_LZMA])]
    if bsdiff:
        ways.append(("bsdiff4", [Algorithm.BSDIFF4]))
    rows = []
    with served(repo.dir) as url:
        template = base / "template"
        provision(template, url, root)
        row = one_update(template, root, url, base, "model")
        rows.append({"model_mib": round(len(v2) / MiB, 2), "way": "model", **row})
        for name, algorithms in ways:
            delta = make_delta(v1, v2, algorithms)
            repo.add_delta(DELTA, delta, {})
            row = one_update(template, root, url, base, name)
            rows.append(
                {
                    "model_mib": round(len(v2) / MiB, 2),
                    "way": f"delta {name} ({len(delta) / 1024:.0f} KiB)",
                    **row,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=float, default=DEFAULT_MAX_MODEL_BYTES / MiB)
    parser.add_argument("--bsdiff", action="store_true", help="also a bsdiff4 delta (slow)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += measure(0, args.bsdiff, Path(tmp) / "bundled")
        rows += measure(int(args.size_mib * MiB), args.bsdiff, Path(tmp) / "largest")
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[c]).rjust(w) for c, w in zip(columns, widths, strict=True)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
