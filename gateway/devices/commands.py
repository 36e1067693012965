"""``edgefleet device provision ID``: a new device's broker login and the bundle to copy onto it."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("device", help="devices of the site: provision")
    commands = parser.add_subparsers(dest="device_command", metavar="COMMAND", required=True)
    provision = commands.add_parser(
        "provision",
        help="create a device's broker login and a bundle folder to copy onto it",
    )
    provision.add_argument("device", metavar="ID", help="device id, [A-Za-z0-9_-]{1,64}")
    provision.add_argument("--site", required=True, help="the gateway's site")
    provision.add_argument(
        "--broker-url", required=True, help="what the device connects to: mqtts://host:8883"
    )
    provision.add_argument(
        "--repository",
        type=Path,
        required=True,
        help="the release repository whose metadata/root.json the device trusts",
    )
    provision.add_argument(
        "--broker-dir",
        type=Path,
        default=Path("/etc/mosquitto/edgefleet"),
        help="the site broker's password file (passwd) and ACL (acl)",
    )
    provision.add_argument("--topic-root", default="edgefleet", help="the MQTT topic root")
    provision.add_argument(
        "--ca-cert", type=Path, help="the site CA certificate (copied into the bundle)"
    )
    provision.add_argument(
        "--ca-key",
        type=Path,
        help="the site CA key: issue a client certificate instead of a password",
    )
    provision.add_argument(
        "--state-dir", default="/var/lib/edgefleet-agent", help="the agent's state folder"
    )
    provision.add_argument(
        "--model",
        default="/var/lib/edgefleet-agent/model.tflite",
        help="the model the agent runs until the first update",
    )
    provision.add_argument(
        "--out", type=Path, help="the bundle folder to create (default: ./ID-bundle)"
    )
    provision.add_argument("--json", action="store_true", help="JSON for scripts")
    provision.set_defaults(handler=run_provision)


def run_provision(args: argparse.Namespace) -> int:
    import json

    from gateway.devices.provision import Request, provision

    done = provision(
        Request(
            device=args.device,
            site=args.site,
            broker_url=args.broker_url,
            repository=args.repository,
            broker_dir=args.broker_dir,
            out=args.out or Path(f"{args.device}-bundle"),
            topic_root=args.topic_root,
            ca_cert=args.ca_cert,
            ca_key=args.ca_key,
            state_dir=args.state_dir,
            model=args.model,
        )
    )
    if args.json:
        print(json.dumps(done, indent=2))
    else:
        print(f"device {done['device']}: bundle {done['bundle']} ({', '.join(done['files'])})")
        print(f"next: {done['next']}")
    return 0
