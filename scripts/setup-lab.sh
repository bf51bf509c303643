#!/usr/bin/env bash
# Set up the tshyve test lab (see lab/README.md): install the Debian packages
# it needs, then build the L1 lab machine and the reference guest into
# lab/out/. Idempotent: a second run only checks and exits in a second or so.
# Usage: scripts/setup-lab.sh [--force]   (--force rebuilds lab/out/)
set -euo pipefail
cd "$(dirname "$0")/.."

# qemu-system-x86: L1 (TCG) and the reference VMM inside it; busybox-static:
# both initramfs userlands; cpio/gzip: initramfs images; lz4/xz-utils: kernel
# payloads; kmod: depmod/modprobe for module order; e2fsprogs: disk images;
# python3-minimal: the idle VM L1 keeps for its whole run (lab/l1/init);
# passt: virtio-net's slirp backend; iperf3: network throughput in L1;
# ethtool: copied into the reference guest (offloads off in the network tests);
# ovmf: the UEFI firmware of the firmware tests; grub-efi-amd64-bin, mtools,
# dosfstools, fdisk: their EFI boot disk (lab/build-efi-disk.sh).
# gcc, libc6-dev: the guest's static randio (lab/guest-tools/randio.c, 4 KiB random I/O bench).
PKGS="qemu-system-x86 qemu-utils busybox-static cpio gzip lz4 xz-utils kmod e2fsprogs coreutils python3-minimal passt iperf3 ethtool
      ovmf grub-efi-amd64-bin mtools dosfstools fdisk gcc libc6-dev"
missing=
for p in $PKGS; do
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "${missing// /}" ]; then
  echo "setup-lab: installing:$missing" >&2
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# apt-cache needs package lists to resolve the kernel packages.
if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
fi

lab/build-l1.sh "$@"
lab/build-guest.sh "$@"
lab/build-efi-disk.sh "$@"
echo "setup-lab: ready. Try: lab/run -- sh -c 'ls /dev/kvm; uname -r'  (or lab/selftest.sh)" >&2
