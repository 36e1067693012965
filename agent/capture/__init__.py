"""Capture on the device: campaigns from the gateway select the model inputs worth keeping.

``select`` decides which inputs of a chunk each campaign takes (pure, numpy); ``store`` keeps
campaigns, their counts and the hourly counter in the sample spool's database; ``campaigns``
is the part the daemon composes (commands in, samples into the spool, events out).
"""

from agent.capture.campaigns import Capture, Plan

__all__ = ["Capture", "Plan"]
