"""MCU host: drives an attached microcontroller over serial (upload, test, confirm, revert),
by hand (`edgefleet flash`) or from a rollout (`updater.py`)."""
