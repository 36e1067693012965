"""Delta sizes and speeds for every bundled model pair.

    python bench/delta_codec.py [--runs 5] [--json out.json]

For each pair (a head-only and a full fine-tune of each base model): the full size, the gzip
size, the container size of each patch algorithm (bsdiff4 and the model-aware XOR/LZMA), the
size of the delta as shipped (the smallest), delta/full and delta/gzip, and the median make
and apply times over several runs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from collections.abc import Callable

from edgefleet.models import model_pairs, model_path
from protocol.delta import Algorithm, apply_delta, make_delta, read_header


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(runs: int) -> list[dict]:
    rows = []
    for pair in model_pairs():
        old = model_path(pair["old"]).read_bytes()
        new = model_path(pair["new"]).read_bytes()
        delta = make_delta(old, new)
        assert apply_delta(old, delta) == new
        gz = len(gzip.compress(new, 9))
        rows.append(
            {
                "pair": pair["name"],
                "full_bytes": len(new),
                "gzip_bytes": gz,
                "bsdiff4_bytes": len(make_delta(old, new, [Algorithm.BSDIFF4])),
                "xor_lzma_bytes": len(make_delta(old, new, [Algorithm.TENSOR_LZMA])),
                "delta_bytes": len(delta),
                "algorithm": read_header(delta).algorithm.name.lower(),
                "delta_over_full": round(len(delta) / len(new), 4),
                "delta_over_gzip": round(len(delta) / gz, 4),
                "make_ms": round(median_ms(lambda o=old, n=new: make_delta(o, n), runs), 2),
                "apply_ms": round(median_ms(lambda o=old, d=delta: apply_delta(o, d), runs), 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows = measure(args.runs)
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[c]).rjust(w) for c, w in zip(columns, widths, strict=True)))
    print(f"(make/apply: median of {args.runs} runs)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
