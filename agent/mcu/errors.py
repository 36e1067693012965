"""One error root for the MCU link; each subclass is one thing the operator can act on."""

from __future__ import annotations

from protocol.serial.messages import ErrorCode


class McuError(Exception):
    """Anything that went wrong talking to an MCU."""


class NoDevice(McuError):
    """The port could not be opened."""


class LinkLost(McuError):
    """The port went away while in use (cable pulled, device reset its USB, socket closed)."""


class NoAnswer(McuError):
    """The port opened but nothing answered in time."""


class WrongProtocol(McuError):
    """Something answered, but not in this protocol (or not in a version we speak)."""


class ImageTooLarge(McuError):
    """The image does not fit the MCU's slot."""


class Refusal(McuError):
    """The MCU answered a request with an ERROR frame."""

    def __init__(self, request: str, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{request} refused: {code.name} ({detail})")
        self.request = request
        self.code = code
        self.detail = detail


class SmpRefusal(McuError):
    """An SMP server answered a request with an error (``rc``, or a group's ``err``)."""

    def __init__(self, request: str, code: str, detail: str = "") -> None:
        super().__init__(f"{request} refused: {code}" + (f" ({detail})" if detail else ""))
        self.request = request
        self.code = code
        self.detail = detail

    @classmethod
    def from_reply(cls, request: str, reply) -> SmpRefusal:
        """From smp's ErrorV1 (``rc``) or ErrorV2 (``err``: group and code) response."""
        err = getattr(reply, "err", None)
        code = err.rc if err is not None else getattr(reply, "rc", None)
        return cls(request, getattr(code, "name", str(code)))


class SwapFailed(McuError):
    """The MCU rebooted but does not run the image that was sent."""


def explain(exc: McuError, port: str, image_name: str) -> str:
    """The one line the operator reads for ``exc``."""
    if isinstance(exc, NoDevice):
        return f"no device at {port} ({exc})"
    if isinstance(exc, LinkLost):
        return f"lost the link to the device at {port} ({exc})"
    if isinstance(exc, NoAnswer):
        return f"no answer from the device at {port} ({exc})"
    if isinstance(exc, WrongProtocol):
        return f"the device at {port} does not speak the edgefleet serial protocol ({exc})"
    if isinstance(exc, SmpRefusal):
        if exc.code == "INVALID_TLV":
            return f"signature refused: the MCU does not trust the key that signed {image_name}"
        if exc.code == "INVALID_IMAGE_TOO_LARGE":
            return f"{image_name} is too large for the slot"
        return f"the MCU at {port} refused {exc.request}: {exc.code}"
    if isinstance(exc, ImageTooLarge):
        return f"{image_name} is too large for the slot: {exc}"
    if isinstance(exc, Refusal):
        if exc.code == ErrorCode.TOO_LARGE:
            return f"{image_name} is too large for the slot: {exc.detail}"
        if exc.code == ErrorCode.HASH_MISMATCH:
            return f"hash mismatch: the MCU holds different bytes than {image_name} ({exc.detail})"
        if exc.code == ErrorCode.SIGNATURE:
            return f"signature refused: the MCU does not trust the key that signed {image_name}"
        if exc.code == ErrorCode.IMAGE_INVALID:
            return f"{image_name} is not a valid MCUboot image: {exc.detail}"
        if exc.code == ErrorCode.UNSUPPORTED_VERSION:
            return f"the device at {port} speaks another protocol version ({exc.detail})"
    return str(exc)
