#!/usr/bin/env bash
# Installs the system packages the tests use (a real mosquitto broker, the QEMU Cortex-M target and
# its cross compiler, the host C compiler, libfaketime for the simulator's clock faults, headless Chromium and its
# WebDriver for the console's browser tests) when missing. As root it installs them with apt-get; otherwise it prints the
# exact command to run and fails.
set -euo pipefail

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
compgen -G "/usr/lib/*-linux-gnu/faketime/libfaketime.so.1" >/dev/null || missing+=(libfaketime)
command -v qemu-system-arm >/dev/null 2>&1 || missing+=(qemu-system-arm)
# The host compiler builds the firmware's C parsers and Ed25519 for their native (and sanitized) tests.
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v arm-none-eabi-gcc >/dev/null 2>&1 || missing+=(gcc-arm-none-eabi)
if ! command -v arm-none-eabi-gcc >/dev/null 2>&1 \
   || [ ! -f "$(arm-none-eabi-gcc -print-file-name=libc.a)" ]; then
  missing+=(libnewlib-arm-none-eabi)
fi
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
