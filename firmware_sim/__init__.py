"""The MCU side: simulated flash and bootloader, simulated MCU, QEMU target, fleet simulator."""
