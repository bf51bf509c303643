#!/usr/bin/env bash
# Set up this machine and boot the reference guest (Debian's cloud kernel
# with a busybox initramfs) under tshyve. Where this host's KVM cannot run
# Linux (no /dev/kvm, or no VT-x/AMD-V under it), say so and boot it inside the nested lab.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
G=lab/out/guest
ARGS=(-c 2 -m 512M -s 0,hostbridge -s 31,lpc -l com1,stdio
  -o "boot.kernel=$G/vmlinuz" -o "boot.initrd=$G/initrd.img"
  -o "boot.cmdline=console=ttyS0 quiet tshyve.run=poweroff" quickstart)
set +e
if node dist/bundle/cli/tshyve.js "${ARGS[@]}" </dev/null; rc=$?; [ $rc -ne 4 ]; then
  echo "quickstart: tshyve exited $rc (1 = the guest powered off)"; exit 0
fi
echo "quickstart: booting the same guest inside the nested lab (lab/run) instead" >&2
lab/run -- node dist/bundle/cli/tshyve.js "${ARGS[@]}"
rc=$?
echo "quickstart: tshyve exited $rc in the lab (1 = the guest powered off)"
[ $rc -eq 1 ]
