"""The MCU worker: ``python -m agent.mcu.worker --port P [--baud B] [--timeout S]
[--protocol edgefleet|smp] CMD``.

The agent runs it as a child process for everything that talks to an attached MCU or needs
python-tuf: a serial port that hangs never stalls the daemon's event loop, and the daemon never
imports tuf. Killing it at any moment is safe: an upload resumes, and an image on trial that
nobody confirmed is reverted by the MCU's next boot, so the MCU always keeps a verified image.

``query`` prints one JSON line ``{"version", "state"}``: the version of the image the MCU keeps
(the primary's once confirmed, the previous one while a new one is on trial; null when it holds
none) and ``ok``, or ``unreachable`` with a ``reason``.

``update --state-dir DIR --root ROOT --repository URL --target NAME/N.bin`` verifies the target
with TUF and downloads it (resumed), then installs it: upload (resumed), test swap, reboot, smoke
test, confirm. A lost link, a reboot under way or no answer is tried again, up to ``ATTEMPTS``
times; each attempt resumes where the MCU stopped. It prints ``{"step": "verified"}``, a
``{"step": "retry"}`` per retry, and last ``{"result", "reason"}``, the result one of
``committed`` (with the ``version`` the MCU now keeps and the offset its upload resumed from);
``refused`` (by TUF, the signed metadata, or as a downgrade: nothing was sent);
``failed`` (the MCU refused the image, or the link failed at every attempt); ``rolled_back``
(the smoke test failed and the MCU went back to its image); ``unreachable`` (the repository;
the download resumes next time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from agent.mcu.device import PROTOCOLS
from agent.mcu.errors import LinkLost, McuError, NoAnswer, NoDevice, Refusal, explain
from agent.mcu.flasher import running
from agent.mcu.host import McuPort, open_device
from edgefleet import logs
from protocol.mcu_image import McuImageMeta, parse_version
from protocol.serial.messages import ErrorCode, InfoReply, SlotFlag, SlotState

ATTEMPTS = 4
RETRY_DELAY_S = 1.0
# Refusals that a fresh attempt can get past: the MCU rebooted under the host (it wants HELLO
# first, or lost the upload in progress) or a flash operation failed.
TRANSIENT_CODES = (ErrorCode.BAD_STATE, ErrorCode.FLASH)


def transient(exc: McuError) -> bool:
    if isinstance(exc, Refusal):
        return exc.code in TRANSIENT_CODES
    return isinstance(exc, NoDevice | LinkLost | NoAnswer)


def kept_version(info: InfoReply) -> str | None:
    """The version of the image the MCU boots for good: a new image on trial does not count."""
    primary, previous = info.primary, info.secondary
    if primary.state != SlotState.VALID:
        return None
    if primary.flags & SlotFlag.CONFIRMED:
        return primary.version_text
    return previous.version_text if previous.state == SlotState.VALID else None


def downgrade(info: InfoReply, image: bytes, image_version: str, runs=running) -> str | None:
    """Why ``image`` must not replace what the MCU keeps, or None. An image already running
    (on trial after a host that died) only needs its confirmation; ``runs`` is how the MCU's
    protocol recognises an image in a slot."""
    if runs(info.primary, image):
        return None
    kept = kept_version(info)
    if kept is not None and parse_version(image_version) <= parse_version(kept):
        return f"downgrade: image {image_version} is not newer than the kept {kept}"
    return None


def install_with_retries(port: McuPort, image: bytes, meta: McuImageMeta, target: str, emit):
    reason = ""
    device = open_device(port)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            why = downgrade(device.query(), image, meta.image_version, device.runs)
            if why:
                return {"result": "refused", "reason": why}
            flashed = device.install(image)
            return {
                "result": "committed",
                "version": flashed.version,
                "resumed_from": flashed.resumed_from,
            }
        except McuError as exc:
            reason = explain(exc, port.port, target)
            if isinstance(exc, Refusal) and exc.request == "INFER":
                return {"result": "rolled_back", "reason": f"smoke test: {reason}"}
            if not transient(exc):
                return {"result": "failed", "reason": reason}
            if attempt < ATTEMPTS:
                emit({"step": "retry", "attempt": attempt, "reason": reason})
                time.sleep(RETRY_DELAY_S)
    return {"result": "failed", "reason": f"gave up after {ATTEMPTS} attempts: {reason}"}


def update(args: argparse.Namespace, port: McuPort, emit) -> dict:
    from agent.mcu.fetch import discard_downloads, fetch_image  # python-tuf: update work only
    from agent.updater.errors import Refused, Transient

    try:
        image, meta = fetch_image(args.state_dir, args.root, args.repository, args.target)
    except Transient as exc:
        return {"result": "unreachable", "reason": str(exc)}
    except Refused as exc:
        return {"result": "refused", "reason": str(exc)}
    emit({"step": "verified", "image_version": meta.image_version, "length": len(image)})
    result = install_with_retries(port, image, meta, args.target, emit)
    if result["result"] != "failed":  # a failed link resumes from the download next time
        discard_downloads(args.state_dir)
    return result


def query_line(port: McuPort) -> dict:
    try:
        return {"version": kept_version(open_device(port).query()), "state": "ok"}
    except McuError as exc:
        return {"version": None, "state": "unreachable", "reason": explain(exc, port.port, "")}


def _emit(data: dict) -> None:
    sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent.mcu.worker")
    parser.add_argument("--port", required=True, help="serial device, pty, or socket://HOST:PORT")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--timeout", type=float, default=1.0, help="reply timeout in seconds")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="edgefleet")
    parser.add_argument("--no-compress", dest="compress", action="store_false")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("query", help="what the MCU keeps")
    run = commands.add_parser("update", help="verify an MCU image target and install it")
    run.add_argument("--state-dir", type=Path, required=True, help="this MCU's folder")
    run.add_argument("--root", type=Path, required=True, help="trusted root.json")
    run.add_argument("--repository", required=True, help="repository http(s) URL")
    run.add_argument("--target", required=True, help="e.g. sensor/2.bin")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure("info")
    port = McuPort(args.port, args.baud, args.timeout, args.protocol, args.compress)
    _emit(update(args, port, _emit) if args.command == "update" else query_line(port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
