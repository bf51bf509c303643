# shellcheck shell=bash
# Helpers shared by lab/build-guest.sh and lab/build-l1.sh (sourced, not run).

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT_DIR=$LAB_DIR/out
DEB_DIR=$OUT_DIR/debs

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# resolve_kernel META -> prints the concrete "linux-image-6.1.0-NN-..." package
# that apt's candidate (newest) version of the meta package depends on.
resolve_kernel() {
  local pkg
  pkg=$(apt-cache depends "$1" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
  [ -n "$pkg" ] || die "cannot resolve $1 (run apt-get update?)"
  printf '%s\n' "$pkg"
}

# fetch_kernel PKG DEST -> apt-get download PKG (cached in out/debs) and
# dpkg -x it into DEST (fresh). Prints the kernel release (e.g. 6.1.0-56-amd64).
fetch_kernel() {
  local pkg=$1 dest=$2 ver deb
  ver=$(apt-cache policy "$pkg" | awk '$1 == "Candidate:" { print $2 }')
  mkdir -p "$DEB_DIR"
  deb=$(ls "$DEB_DIR/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1)
  if [ -z "$deb" ]; then
    log "downloading $pkg $ver"
    # _apt cannot write into root-owned dirs; download is then "unsandboxed" (harmless warning).
    (cd "$DEB_DIR" && apt-get download -q "$pkg=$ver" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) || true
    deb=$(ls "$DEB_DIR/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1)
    [ -n "$deb" ] || die "apt-get download $pkg failed"
  fi
  rm -rf "$dest"; mkdir -p "$dest"
  dpkg -x "$deb" "$dest"
  ls "$dest/lib/modules"
}

# module_order ROOT KREL MOD... -> prints module paths (relative to
# lib/modules/KREL) in load order, dependencies first, without duplicates.
# Modules missing from this kernel (or built in) are skipped.
module_order() {
  local root=$1 krel=$2; shift 2
  depmod -b "$root" "$krel"
  local m
  for m in "$@"; do
    modprobe -d "$root" -S "$krel" --show-depends "$m" 2>/dev/null || log "note: module $m not available (built in or absent)"
  done | awk '$1 == "insmod" { print $2 }' | sed "s|^$root/lib/modules/$krel/||" | awk '!seen[$0]++'
}

# busybox_root DIR -> minimal root with busybox-static and its applet links.
busybox_root() {
  local d=$1 a
  mkdir -p "$d"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,usr/bin,usr/sbin}
  cp /bin/busybox "$d/bin/busybox"
  for a in $("$d/bin/busybox" --list-full); do
    [ -e "$d/$a" ] || ln -s /bin/busybox "$d/$a"
  done
}

# make_cpio DIR OUT -> gzip'd newc cpio of DIR, owned by root.
make_cpio() {
  (cd "$1" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) | gzip -6 > "$2.tmp"
  mv "$2.tmp" "$2"
}

# inputs_hash FILE... -> hash identifying a build's inputs (for skip-if-done).
inputs_hash() { cat "$@" | sha256sum | cut -c1-16; }

# extract_vmlinux BZIMAGE OUT -> the ELF kernel inside a bzImage.
# The protected-mode code starts at (setup_sects+1)*512; the setup header's
# payload_offset (0x248) / payload_length (0x24c) locate the compressed kernel
# in it, followed by its 4-byte uncompressed size, which lz4/xz do not expect.
# Debian: cloud flavour is LZ4, generic flavour is XZ.
extract_vmlinux() {
  local f=$1 out=$2 off len magic
  u() { od -An -tu"$2" -j $(($1)) -N"$2" "$f" | tr -d ' '; }
  off=$(( ($(u 0x1f1 1) + 1) * 512 + $(u 0x248 4) ))
  len=$(( $(u 0x24c 4) - 4 ))
  magic=$(od -An -tx1 -j "$off" -N4 "$f" | tr -d ' ')
  case "$magic" in
    02214c18) set -- lz4 -dc ;;   # LZ4 legacy frame
    fd377a58) set -- xz -dc ;;    # XZ
    *) die "$f: unknown payload compression (magic $magic)" ;;
  esac
  dd if="$f" bs=1M iflag=skip_bytes,count_bytes skip="$off" count="$len" status=none | "$@" > "$out.tmp" ||
    die "$f: cannot decompress payload"
  [ "$(od -An -tx1 -N4 "$out.tmp" | tr -d ' ')" = 7f454c46 ] || die "$out: not an ELF file"
  mv "$out.tmp" "$out"
}
