#!/usr/bin/env bash
# Build the UEFI boot disk of the firmware tests (see lab/README.md):
#   lab/out/efi/disk.img   raw GPT disk, one EFI system partition (FAT) holding
#     EFI/BOOT/BOOTX64.EFI   a standalone GRUB (grub-mkstandalone, Debian's
#                            grub-efi-amd64-bin) whose embedded grub.cfg boots:
#     tshyve/vmlinuz         the reference guest's kernel (lab/out/guest)
#     tshyve/initrd.img      the reference guest's initrd
#     tshyve/efivarfs.cpio   efivarfs.ko from the same kernel package, appended
#                            to the initrd by GRUB (it is a module in Debian)
# The guest runs the hello workload, then the script below (tshyve.cmd), then
# powers off. The script mounts efivarfs and looks for the variable
# TshyveLabBoot-GUID: absent, it creates it (TSHYVE-EFIVAR=written) and present,
# it prints it (TSHYVE-EFIVAR=found:<value>), so a second boot with the same
# variable store shows whether the variable persisted.
# Needs lab/build-guest.sh's output. Skips all work when its inputs are unchanged.
# Usage: lab/build-efi-disk.sh [--force]
set -euo pipefail
. "$(dirname "$0")/lib.sh"

G=$OUT_DIR/guest
E=$OUT_DIR/efi
[ -f "$G/vmlinuz" ] && [ -f "$G/initrd.img" ] || die "the reference guest is not built (lab/build-guest.sh)"
for t in grub-mkstandalone mkfs.vfat mcopy mmd sfdisk; do
  PATH=$PATH:/usr/sbin:/sbin command -v "$t" >/dev/null || die "$t is not installed (scripts/setup-lab.sh installs it)"
done
GRUBVER=$(dpkg-query -W -f '${Version}' grub-efi-amd64-bin)
STAMP="$(cat "$G/stamp") grub $GRUBVER $(inputs_hash "$0" "$LAB_DIR/lib.sh")"
if [ "${1:-}" != --force ] && [ -f "$E/disk.img" ] && [ "$(cat "$E/stamp" 2>/dev/null)" = "$STAMP" ]; then
  log "up to date"; exit 0
fi

T=$OUT_DIR/tmp/efi; rm -rf "$T"; mkdir -p "$T" "$E"
KREL=$(cat "$G/kernel-release")
PKG=linux-image-$KREL
fetch_kernel "$PKG" "$T/pkg" >/dev/null

# efivarfs.ko as a second initrd (GRUB concatenates them; so does the kernel's unpacker).
mkdir -p "$T/vars/lib/modules"
cp "$T/pkg/lib/modules/$KREL/kernel/fs/efivarfs/efivarfs.ko" "$T/vars/lib/modules/efivarfs.ko"
make_cpio "$T/vars" "$T/efivarfs.cpio"

GUID=6c0b3a3e-8f2a-4b7e-9d41-2a5f1e7c9b10
cat > "$T/efivar.sh" <<EOF
insmod /lib/modules/efivarfs.ko 2>/dev/null
mount -t efivarfs efivarfs /sys/firmware/efi/efivars || { echo TSHYVE-EFIVAR=no-efivarfs; exit 1; }
V=/sys/firmware/efi/efivars/TshyveLabBoot-$GUID
if [ -e \$V ]; then echo "TSHYVE-EFIVAR=found:\$(tail -c +5 \$V)"; exit 0; fi
# 4 bytes of attributes (non-volatile, boot-service and runtime access), then the data.
printf '\\007\\000\\000\\000tshyve-lab' > \$V && echo TSHYVE-EFIVAR=written
EOF
CMD=$(base64 -w0 < "$T/efivar.sh")

# The ESP is found by a file on it, not by a disk number.
cat > "$T/grub.cfg" <<EOF
set timeout=0
search --no-floppy --file /tshyve/vmlinuz --set=root
echo "TSHYVE-GRUB: loading the kernel"
linux /tshyve/vmlinuz console=ttyS0 tshyve.run=hello tshyve.cmd=$CMD tshyve.end=poweroff
initrd /tshyve/initrd.img /tshyve/efivarfs.cpio
boot
EOF
grub-mkstandalone -O x86_64-efi -o "$T/BOOTX64.EFI" \
  --modules="part_gpt fat" --locales= --fonts= --themes= \
  --install-modules="normal configfile search search_fs_file part_gpt fat echo linux boot test" \
  "boot/grub/grub.cfg=$T/grub.cfg"

# The ESP as a file of its own, then placed at 1 MiB in a GPT disk.
KIB=$(( ( $(stat -c %s "$G/vmlinuz" "$G/initrd.img" "$T/efivarfs.cpio" "$T/BOOTX64.EFI" | paste -sd+ | bc) / 1024 ) + 4096 ))
PART=$T/esp.img
PATH=$PATH:/usr/sbin:/sbin mkfs.vfat -C -n TSHYVE-ESP "$PART" "$KIB" >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$PART" ::/EFI ::/EFI/BOOT ::/tshyve
mcopy -i "$PART" "$T/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$PART" "$G/vmlinuz" "$G/initrd.img" "$T/efivarfs.cpio" ::/tshyve/
SECTORS=$(( KIB * 2 ))
truncate -s $(( (2048 + SECTORS + 2048) * 512 )) "$T/disk.img"
printf 'label: gpt\nstart=2048, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system partition"\n' "$SECTORS" |
  PATH=$PATH:/usr/sbin:/sbin sfdisk -q "$T/disk.img" >/dev/null
dd if="$PART" of="$T/disk.img" bs=1M seek=1 conv=notrunc,sparse status=none
mv "$T/disk.img" "$E/disk.img"

echo "$STAMP" > "$E/stamp"
rm -rf "$T"
log "built $E/disk.img ($(( $(stat -c %s "$E/disk.img") / 1048576 )) MiB, GRUB $GRUBVER, kernel $KREL)"
