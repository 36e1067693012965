"""``edgefleet sim SCENARIO.toml`` and ``edgefleet demo``: run a simulated fleet (real agents,
gateway, broker and cloud ingest on loopback) through a scenario, report, and exit 1 when an
expectation failed, so a CI job can gate a release on it. ``--serve`` keeps the site running
after the report, with the gateway's console on loopback, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO = Path(__file__).with_name("demo.toml")


def register(subparsers: argparse._SubParsersAction) -> None:
    sim = subparsers.add_parser(
        "sim",
        help="run a simulated fleet through a scenario and check its expectations",
        description="Bring up a broker, a cloud ingest, a gateway and N real agents (plus "
        "simulated MCUs), play the scenario's timeline of releases, rollouts and faults, and "
        "write a report. Exit status: 0 when every expectation held, 1 when one failed, 2 for "
        "a bad scenario or a site that could not start. Format: docs/scenarios.md.",
    )
    sim.add_argument("scenario", type=Path, metavar="SCENARIO.toml")
    _common(sim)
    sim.set_defaults(handler=run_sim)
    demo = subparsers.add_parser(
        "demo",
        help="the whole system in one command: a staged rollout and the data loop on a "
        "simulated fleet",
        description="About 20 simulated devices and 2 MCUs on loopback: a signed head-only "
        "fine-tune rolled out in stages through one power cut and one broker restart, an MCU "
        "image; then the data loop: drift on the fleet, capture campaigns the gateway curates "
        "into the cloud's Parquet dataset, labels, the evaluation and staged rollout of a model "
        "retrained for the drift, and the fleet's accuracy before and after; a short summary "
        "at the end. "
        "Uses mosquitto when installed, else a built-in broker.",
    )
    _common(demo)
    demo.set_defaults(handler=run_demo)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", type=Path, metavar="FILE", help="write the report JSON here")
    parser.add_argument(
        "--broker", metavar="URL|embedded", help="use this broker (mqtt://127.0.0.1:PORT, "
        "MQTT 5) instead of starting mosquitto, or 'embedded' for the built-in amqtt broker "
        "(the default when mosquitto is not installed); broker faults need mosquitto",
    )  # fmt: skip
    parser.add_argument(
        "--workdir", type=Path, help="keep every file of the run here (default: a temporary "
        "folder, removed when the run passed)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the report JSON on stdout")
    parser.add_argument(
        "--serve", action="store_true", help="after the report, keep the site running (broker, "
        "gateway, agents, cloud) and print the console's URL and a viewer token; Ctrl-C or "
        "SIGTERM stops it",
    )  # fmt: skip


def run_demo(args: argparse.Namespace) -> int:
    args.scenario = DEMO
    return run_sim(args)


def run_sim(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import shutil
    import sys
    import tempfile

    from edgefleet.errors import UserError
    from edgefleet.fsio import atomic_write_bytes
    from firmware_sim.fleet import scenario as scenario_file
    from firmware_sim.fleet.embedded_broker import EMBEDDED
    from firmware_sim.fleet.runner import Runner
    from firmware_sim.fleet.scenario import BROKER_FAULTS
    from firmware_sim.fleet.site import ConsoleAccess, broker_choice
    from firmware_sim.fleet.summary import Progress, print_summary

    scenario = scenario_file.load(args.scenario)
    if args.broker not in (None, EMBEDDED) and not args.broker.startswith("mqtt://"):
        raise UserError(f"--broker {args.broker}: must be mqtt://HOST:PORT or 'embedded'")
    broker = broker_choice(args.broker)
    progress = Progress(sys.stderr)
    if broker == EMBEDDED and args.scenario == DEMO:
        scenario = scenario.without(BROKER_FAULTS)
        progress.say("the built-in broker keeps nothing across a restart: the demo skips its own")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgefleet-sim-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runner = Runner(scenario, workdir, broker, progress.say)

    def publish(report: dict) -> None:
        progress.close()
        text = json.dumps(report, indent=2) + "\n"
        if args.report:
            atomic_write_bytes(args.report, text.encode())
        if args.json:
            sys.stdout.write(text)
        else:
            print_summary(report)
        sys.stdout.flush()

    def serve(console: ConsoleAccess) -> None:
        stream = sys.stderr if args.json else sys.stdout  # the report JSON stays alone
        print(
            f"console: {console.url}\nviewer token: {console.viewer_token}\n"
            f"operator token: in {console.admin_token_file}\n"
            "the site keeps running; Ctrl-C or SIGTERM stops it",
            file=stream,
            flush=True,
        )

    try:
        report = asyncio.run(runner.run(publish, serve if args.serve else None))
    finally:
        progress.close()
    keep_dataset = report.get("samples_in_dataset", 0) > 0
    if report["passed"] and args.workdir is None and not keep_dataset:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not report["passed"]:
        print(f"logs and state of this run: {workdir}", file=sys.stderr)
    return 0 if report["passed"] else 1
