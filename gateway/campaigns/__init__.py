"""Capture campaigns: which devices are asked for samples, how many arrived, when it ends."""
