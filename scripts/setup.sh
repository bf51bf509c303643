#!/usr/bin/env bash
# Everything tshyve's build and tests need on a fresh Debian machine:
# Debian packages (nasm for the test guests, ovmf's firmware; the lab's QEMU, busybox,
# kernels), npm packages, the build, and the nested lab with its reference
# guest. Idempotent; a second run takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
# nasm: the test guests; ovmf: Debian's UEFI firmware (-l bootrom, the flash tests).
missing=
command -v nasm >/dev/null || missing="$missing nasm"
[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || missing="$missing ovmf"
if [ -n "$missing" ]; then
  echo "setup: installing$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if [ ! -d node_modules/koffi ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run build --silent
scripts/setup-lab.sh
