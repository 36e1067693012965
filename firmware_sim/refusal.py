"""How the simulated MCU says no: an error code and a short reason, sent back as ERROR."""

from __future__ import annotations

from protocol.serial.messages import ErrorCode


class Refused(Exception):
    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
