"""The device daemon: inference, telemetry spool and publisher, updater, MCU host."""
