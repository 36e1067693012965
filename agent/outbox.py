"""What the parts of the agent tell the gateway: events, and that the retained status changed
(the link publishes it again). One small surface, so no part needs the whole link."""

from __future__ import annotations

import time

from agent.link import Link
from protocol.topics import Event


class Outbox:
    def __init__(self, device_id: str, link: Link):
        self.device_id, self.link = device_id, link

    def event(self, kind: str, **detail) -> None:
        self.link.send_event(Event(self.device_id, time.time_ns() // 1_000_000, kind, detail))

    def notify(self) -> None:
        self.link.notify_status()
