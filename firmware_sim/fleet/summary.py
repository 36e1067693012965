"""How a scenario run looks to a person: progress lines while it runs (a live status line on a
terminal) and a short summary at the end."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO) -> None:
        self._status = None
        if stream.isatty():
            from rich.console import Console

            self._console = Console(file=stream)
            self._status = self._console.status("starting")
            self._status.start()
        self._stream = stream

    def say(self, text: str) -> None:
        if self._status is not None:
            self._console.log(text)
            self._status.update(text)
        else:
            print(text, file=self._stream, flush=True)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()


def summary_lines(report: dict) -> list[str]:
    verdict = "PASSED" if report["passed"] else "FAILED"
    served = report["update_bytes_served"]
    lines = [
        f"scenario {report['scenario']}: {verdict} in {report['duration_s']:.1f} s "
        f"(fleet up in {report['startup_s']:.1f} s)",
        f"  devices    {report['devices_on_target']}/{report['devices_total']} on target, "
        f"{report['devices_rolled_back']} rolled back, {report['bricked']} bricked, "
        f"{report['agent_restarts']} agent restarts",
        f"  rollout    {report['rollout_state']}; devices fetched "
        f"{_kib(served['targets'])} of models and deltas and {_kib(served['metadata'])} of "
        "signed metadata",
        f"  telemetry  {report['telemetry_sent']} sent, "
        f"{report['telemetry_delivered_unique']} delivered, "
        f"{report['telemetry_dropped_counted']} dropped (counted), "
        f"{report.get('telemetry_curated_out', 0)} kept home by curation, "
        f"{report['telemetry_dead_lettered']} dead letters, {report['telemetry_lost']} lost",
        f"  security   {report['attacks_refused']} forged or stale updates refused, "
        f"{report['malformed_counted']} malformed messages counted, "
        f"{report['impersonations_refused']}/{len(report['impersonation_attempts'])} "
        "impersonations refused",
    ]
    if report.get("samples_captured"):
        ratio = report["cloud_bytes_ratio"]
        lines.append(
            f"  data loop  {report['samples_captured']} samples captured, "
            f"{report['samples_in_dataset']} in the dataset; the cloud got "
            f"{_kib(report['cloud_bytes'])} of {_kib(report['cloud_bytes_unfiltered'])} sent "
            f"by devices ({ratio:.1%})"
        )
        for row in report.get("quality", []):
            low, high = row["interval"] or (0, 0)
            lines.append(
                f"  accuracy   v{row['version']} on {row['campaign']}: {row['accuracy']:.2f} "
                f"(95 % {low:.2f}-{high:.2f}, n={row['n']})"
            )
        for result in report.get("evaluations", []):
            candidate, incumbent = result["candidate"], result["incumbent"]
            lines.append(
                f"  evaluated  {Path(candidate['file']).name}: {candidate['accuracy']:.2f} "
                f"against v{incumbent.get('version', '?')} {incumbent['accuracy']:.2f} on "
                f"{result['n']} labelled samples"
            )
        lines.append(
            f"  dataset    {report['dataset']} "
            f"(edgefleet cloud dataset list --dataset {report['dataset']})"
        )
    if report["gateway_unplanned_exits"]:
        lines.append(f"  gateway    {report['gateway_unplanned_exits']} unplanned exits")
    if report["mcus_total"]:
        lines.append(f"  mcus       {report['mcus_on_target']}/{report['mcus_total']} on target")
    lines += [f"  violation: {v}" for v in report["violations"]]
    return lines


def _kib(count: int) -> str:
    return f"{count / 1024:,.1f} KiB"


def print_summary(report: dict, stream: TextIO = sys.stdout) -> None:
    for line in summary_lines(report):
        print(line, file=stream)
