#!/usr/bin/env bash
# Build the tshyve reference guest from Debian's cloud kernel package:
#   lab/out/guest/vmlinuz     bzImage (as shipped)
#   lab/out/guest/vmlinux     ELF kernel, decompressed from the bzImage's LZ4 payload
#   lab/out/guest/initrd.img  gzip'd newc cpio: busybox-static, virtio modules,
#                             /init (see lab/guest/init), /workloads/*.sh,
#                             /bin/randio (lab/guest-tools/randio.c, static)
# Skips all work when the outputs match the current package and inputs.
# Usage: lab/build-guest.sh [--force]
set -euo pipefail
. "$(dirname "$0")/lib.sh"

G=$OUT_DIR/guest
PKG=$(resolve_kernel linux-image-cloud-amd64)
VER=$(apt-cache policy "$PKG" | awk '$1 == "Candidate:" { print $2 }')
STAMP="$PKG $VER $(inputs_hash "$0" "$LAB_DIR/lib.sh" "$LAB_DIR/guest/init" "$LAB_DIR"/guest/workloads/*.sh "$LAB_DIR"/guest-tools/*.c)"
if [ "${1:-}" != --force ] && [ -f "$G/initrd.img" ] && [ "$(cat "$G/stamp" 2>/dev/null)" = "$STAMP" ]; then
  log "up to date: $PKG $VER"; exit 0
fi

T=$OUT_DIR/tmp/guest; rm -rf "$T"; mkdir -p "$T" "$G"
KREL=$(fetch_kernel "$PKG" "$T/pkg")
log "kernel $PKG $VER ($KREL)"
cp "$T/pkg/boot/vmlinuz-$KREL" "$G/vmlinuz"
cp "$T/pkg/boot/config-$KREL" "$G/config"

# vmlinux: the ELF inside the bzImage (LZ4 payload), see extract_vmlinux.
extract_vmlinux "$G/vmlinuz" "$G/vmlinux"

# initrd: busybox + virtio modules (in load order) + init + workloads.
R=$T/root; busybox_root "$R"
MODS="virtio virtio_ring virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev virtio_mmio
      virtio_blk virtio_net virtio_console virtio_rng virtio_scsi virtio_balloon virtio_input"
module_order "$T/pkg" "$KREL" $MODS > "$R/etc/modules.order"
while read -r m; do
  mkdir -p "$R/lib/modules/$(dirname "$m")"
  cp "$T/pkg/lib/modules/$KREL/$m" "$R/lib/modules/$m"
done < "$R/etc/modules.order"
# Programs busybox lacks, with their shared libraries: ethtool (the network
# tests turn offloads off) and iperf3 (the network bench).
for prog in ethtool iperf3; do
  P=$(PATH=$PATH:/usr/sbin:/sbin command -v "$prog" || true)
  [ -x "$P" ] || die "$prog is not installed (scripts/setup-lab.sh installs it)"
  install -D -m 755 "$P" "$R$P"
  for lib in $(ldd "$P" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'); do
    install -D -m 755 "$lib" "$R$lib"   # (the ELF interpreter must be executable)
  done
done
# randio: 4 KiB random direct I/O with a queue depth (the disk bench's fio stand-in).
gcc -static -O2 -Wall -o "$R/bin/randio" "$LAB_DIR/guest-tools/randio.c" || die "cannot build randio (gcc and libc6-dev)"
install -m 755 "$LAB_DIR/guest/init" "$R/init"
mkdir -p "$R/workloads"; cp "$LAB_DIR"/guest/workloads/*.sh "$R/workloads/"
echo "$KREL" > "$R/etc/tshyve-kernel"
make_cpio "$R" "$G/initrd.img"

echo "$KREL" > "$G/kernel-release"
echo "$STAMP" > "$G/stamp"
NMODS=$(wc -l < "$R/etc/modules.order")
rm -rf "$T"
log "built $G: vmlinuz vmlinux initrd.img ($NMODS modules)"
