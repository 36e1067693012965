"""MCU host: drives an attached microcontroller over serial (upload, test, confirm, revert)."""
