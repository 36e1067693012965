"""``edgefleet flash``: put a signed MCUboot image on an MCU attached to a serial port."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgefleet.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flash",
        help="upload a signed MCUboot image to an MCU over serial (resumes an interrupted one)",
    )
    parser.add_argument("image", type=Path, help="image signed by imgtool (MCUboot format)")
    parser.add_argument("--port", required=True, help="serial device, pty, or socket://HOST:PORT")
    parser.add_argument("--baud", type=int, default=115200, help="line rate")
    parser.add_argument(
        "--confirm",
        action="store_true",
        help="keep the new image (otherwise the MCU reverts it at its next reboot)",
    )
    parser.add_argument("--timeout", type=float, default=1.0, help="reply timeout in seconds")
    parser.add_argument(
        "--protocol",
        choices=("edgefleet", "smp"),
        default="edgefleet",
        help="what the MCU speaks: edgefleet's serial protocol, or SMP (mcumgr: Zephyr with "
        "MCUboot, over its console UART)",
    )
    parser.add_argument(
        "--compress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send the image as deflate blocks when the MCU offers to inflate them; "
        "--no-compress sends it as it is",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from agent.mcu.errors import McuError, explain
    from agent.mcu.host import McuPort, open_device

    try:
        image = args.image.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read image {args.image}: {exc.strerror}") from exc
    if not image:
        raise UserError(f"image {args.image} is empty")
    target = McuPort(args.port, args.baud, args.timeout, args.protocol, args.compress)
    try:
        with _ProgressBar(enabled=not args.json) as progress:
            device = open_device(target)
            result = device.install(image, confirm=args.confirm, progress=progress)
    except McuError as exc:
        raise UserError(explain(exc, args.port, args.image.name)) from exc
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        state = "confirmed" if result.confirmed else "on trial (reverts at next reboot)"
        print(
            f"{result.device}: running {result.version}, {state}; "
            f"sent {result.bytes_sent} bytes{' compressed' if result.compressed else ''} "
            f"from offset {result.resumed_from} "
            f"in {result.upload_seconds:.1f} s"
        )
    return 0


class _ProgressBar:
    """A rich progress bar on stderr whose ``__enter__`` returns the update callback."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._bar = None

    def __enter__(self):
        if not self._enabled:
            return None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        task = self._bar.add_task("uploading", total=None)

        def update(done: int, total: int) -> None:
            self._bar.update(task, completed=done, total=total)

        return update

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
