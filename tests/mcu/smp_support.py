"""An in-process SMP host for the simulated SMP MCU: requests from the ``smp`` package, framed
with ``smp.packet``, answered by ``SmpMcu.receive`` with no pty and no pacing."""

from __future__ import annotations

import hashlib

from smp import header as smphdr
from smp import image_management as smpimg
from smp import os_management as smpos
from smp import packet as smppacket

from firmware_sim.smp_server import SmpConfig, SmpMcu
from protocol.serial import smp_console
from protocol.serial.smp_image import image_hash
from tests.mcu.mcu_support import LAYOUT, Images

RESPONSES = {
    smpimg.ImageStatesReadRequest: smpimg.ImageStatesReadResponse,
    smpimg.ImageStatesWriteRequest: smpimg.ImageStatesWriteResponse,
    smpimg.ImageUploadWriteRequest: smpimg.ImageUploadWriteResponse,
    smpimg.ImageEraseRequest: smpimg.ImageEraseResponse,
    smpos.EchoWriteRequest: smpos.EchoWriteResponse,
    smpos.ResetWriteRequest: smpos.ResetWriteResponse,
    smpos.MCUMgrParametersReadRequest: smpos.MCUMgrParametersReadResponse,
}


def smp_config(images: Images, **overrides) -> SmpConfig:
    values = {"layout": LAYOUT, "verifier": images.verifier()}
    values.update(overrides)
    return SmpConfig(**values)


def parse_reply(wire: bytes) -> bytes:
    decoder = smppacket.decode()
    next(decoder)
    for line in wire.splitlines(keepends=True):
        try:
            decoder.send(line)
        except StopIteration as done:
            return done.value
    raise AssertionError(f"no whole reply in {wire[:60]!r}")


class SmpHost:
    """Sends one request at a time; a RESET reply boots the MCU again, as the UART does."""

    def __init__(self, mcu: SmpMcu) -> None:
        self.mcu = mcu

    def request(self, message):
        wire = self.mcu.receive(smp_console.encode(bytes(message)))
        if self.mcu.reboot_pending:
            self.mcu.power_on()
        packet = parse_reply(wire)
        head = smphdr.Header.loads(packet[:8])
        assert head.sequence == message.header.sequence
        reply_class = RESPONSES.get(type(message))
        try:
            if reply_class is None:
                raise ValueError("not a command these tests expect an answer to")
            return reply_class.loads(packet)
        except ValueError:
            if head.group_id == smphdr.GroupId.IMAGE_MANAGEMENT:
                try:
                    return smpimg.ImageManagementErrorV2.loads(packet)
                except ValueError:
                    pass
            errors = {smphdr.GroupId.OS_MANAGEMENT: smpos.OSManagementErrorV1}
            return errors.get(head.group_id, smpimg.ImageManagementErrorV1).loads(packet)

    def states(self) -> dict[int, smpimg.ImageState]:
        return {s.slot: s for s in self.request(smpimg.ImageStatesReadRequest()).images}

    def upload(self, image: bytes, chunk: int = 256, stop_after: int | None = None):
        """Upload as smpclient does: offset 0 with length and SHA-256, then from each reply's
        offset. Returns the offset of the MCU's first reply: ``chunk`` for a new upload (it took
        the first chunk), further on where it resumed one."""
        sha = hashlib.sha256(image).digest()
        reply = self.request(
            smpimg.ImageUploadWriteRequest(off=0, data=image[:chunk], len=len(image), sha=sha)
        )
        if not isinstance(reply, smpimg.ImageUploadWriteResponse):
            return reply  # refused: the error response
        first = reply.off
        while reply.off < len(image):
            if stop_after is not None and reply.off >= stop_after:
                break
            data = image[reply.off : reply.off + chunk]
            reply = self.request(smpimg.ImageUploadWriteRequest(off=reply.off, data=data))
        return first

    def test(self, image: bytes):
        return self.request(smpimg.ImageStatesWriteRequest(hash=image_hash(image)))

    def confirm(self):
        return self.request(smpimg.ImageStatesWriteRequest(confirm=True))

    def reset(self):
        return self.request(smpos.ResetWriteRequest())
