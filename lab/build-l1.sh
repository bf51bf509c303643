#!/usr/bin/env bash
# Build the L1 lab machine from Debian's generic kernel package:
#   lab/out/l1/vmlinuz         bzImage (generic flavour: 9p and kvm-amd as modules)
#   lab/out/l1/vmlinux         the same kernel as an ELF (booted via its PVH note)
#   lab/out/l1/initramfs.img   busybox-static + modules + /init (lab/l1/init)
#   lab/out/l1/modroot/        the extracted package (lib/modules/KREL with depmod
#                              run), usable inside L1 as `modprobe -d DIR -S KREL`
# Skips all work when the outputs match the current package and inputs.
# Usage: lab/build-l1.sh [--force]
set -euo pipefail
. "$(dirname "$0")/lib.sh"

L=$OUT_DIR/l1
PKG=$(resolve_kernel linux-image-amd64)
VER=$(apt-cache policy "$PKG" | awk '$1 == "Candidate:" { print $2 }')
STAMP="$PKG $VER $(inputs_hash "$0" "$LAB_DIR/lib.sh" "$LAB_DIR/l1/init")"
if [ "${1:-}" != --force ] && [ -f "$L/initramfs.img" ] && [ "$(cat "$L/stamp" 2>/dev/null)" = "$STAMP" ]; then
  log "up to date: $PKG $VER"; exit 0
fi

T=$OUT_DIR/tmp/l1; rm -rf "$T" "$L"; mkdir -p "$T" "$L"
KREL=$(fetch_kernel "$PKG" "$L/modroot")
log "kernel $PKG $VER ($KREL)"
cp "$L/modroot/boot/vmlinuz-$KREL" "$L/vmlinuz"
# The ELF too: QEMU boots it directly (PVH entry), skipping the XZ
# decompression that takes ~2.5 s under TCG.
extract_vmlinux "$L/vmlinuz" "$L/vmlinux"

R=$T/root; busybox_root "$R"
# Wanted: virtio-pci, 9p over virtio, kvm-amd. depmod/modprobe give the order
# (virtio_ring virtio virtio_pci_{modern,legacy}_dev virtio_pci 9pnet
# 9pnet_virtio netfs fscache 9p irqbypass kvm ccp kvm-amd), plus overlay for /tmp,
# and tun, veth, bridge and vhost_net for the network tests' taps and namespaces.
module_order "$L/modroot" "$KREL" virtio_pci 9pnet_virtio 9p kvm_amd overlay tun veth bridge vhost_net > "$R/etc/modules.order"
while read -r m; do
  mkdir -p "$R/lib/modules/$(dirname "$m")"
  cp "$L/modroot/lib/modules/$KREL/$m" "$R/lib/modules/$m"
done < "$R/etc/modules.order"
log "modules: $(xargs -n1 basename < "$R/etc/modules.order" | sed 's/\.ko$//' | tr '\n' ' ')"
install -m 755 "$LAB_DIR/l1/init" "$R/init"
make_cpio "$R" "$L/initramfs.img"

echo "$KREL" > "$L/kernel-release"
echo "$STAMP" > "$L/stamp"
rm -rf "$T"
log "built $L: vmlinuz initramfs.img"
