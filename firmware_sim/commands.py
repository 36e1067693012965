"""``edgefleet mcu-sim``: run a simulated MCU on a pty or a TCP port, for flashing by hand.

It prints the port on the first line of stdout and serves until SIGINT or SIGTERM. With
``--fault-file PATH`` it cuts its own power at the flash operation PATH names, boots again and
keeps serving (``firmware_sim/fault_file.py``). With ``--protocol smp`` the MCU's application is
an SMP server (mcumgr, ``firmware_sim/smp_server.py``) instead of edgefleet's serial protocol.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgefleet.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mcu-sim", help="run a simulated MCU (MCUboot slots, TFLite Micro) on a pty or socket"
    )
    parser.add_argument("--flash", type=Path, required=True, help="flash image file (kept)")
    parser.add_argument(
        "--key", type=Path, action="append", required=True, help="trusted Ed25519 key (PEM)"
    )
    parser.add_argument("--factory", type=Path, help="image to program if the flash is new")
    parser.add_argument("--baud", type=int, default=115200, help="line rate to pace to")
    parser.add_argument("--socket", action="store_true", help="listen on 127.0.0.1 instead")
    parser.add_argument("--arena", type=int, default=16 * 1024, help="model arena in bytes")
    parser.add_argument("--slot-sectors", type=int, default=16, help="4 KiB sectors per slot")
    parser.add_argument(
        "--protocol",
        choices=("edgefleet", "smp"),
        default="edgefleet",
        help="the application's protocol: edgefleet's serial protocol, or SMP (mcumgr) framed "
        "as Zephyr's UART transport frames it",
    )
    parser.add_argument(
        "--fault-file",
        type=Path,
        help="when PATH appears holding N or 'random' (then optionally 'torn'), cut the power "
        "at the N-th flash operation from then, boot again, and delete PATH",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from firmware_sim.bootloader import Verifier
    from firmware_sim.fault_file import FaultFile
    from firmware_sim.flash import Flash, FlashError
    from firmware_sim.layout import Layout, Slot
    from firmware_sim.mcu import McuConfig, SimulatedMcu
    from firmware_sim.mcuboot_image import load_public_key
    from firmware_sim.smp_server import SmpConfig, SmpMcu
    from firmware_sim.uart import UartServer

    try:
        keys = tuple(load_public_key(path.read_bytes()) for path in args.key)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a trusted key: {exc}") from exc
    layout = Layout(slot_sectors=args.slot_sectors)
    new = not args.flash.exists()
    try:
        flash = Flash.open_file(args.flash, layout.geometry)
    except (OSError, FlashError) as exc:
        raise UserError(f"cannot use {args.flash} as flash: {exc}") from exc
    if new and args.factory:
        image = args.factory.read_bytes()
        if len(image) > layout.capacity:
            raise UserError(f"factory image {args.factory} is larger than the slot")
        flash.write(layout.base(Slot.PRIMARY), image + b"\xff" * (-len(image) % 8))
    if args.protocol == "smp":
        mcu = SmpMcu(flash, SmpConfig(layout=layout, verifier=Verifier(keys)))
    else:
        config = McuConfig(layout=layout, verifier=Verifier(keys), arena_size=args.arena)
        mcu = SimulatedMcu(flash, config)
    faults = FaultFile(args.fault_file, flash, layout) if args.fault_file else None
    kind = "socket" if args.socket else "pty"
    server = UartServer(mcu, args.baud, kind, faults)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        print(server.port, flush=True)
        stop.wait()
    return 0
