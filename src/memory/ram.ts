/**
 * Guest RAM on the host: anonymous memory, 2 MiB aligned and advised for
 * transparent huge pages as QEMU's is, filled from a RAM image on a restore;
 * and which parts of it hold data.
 */
import { openSync, readSync, closeSync } from 'node:fs';
import { HostError } from '../errors.js';
import {
  libc, errno, address, view, isMapFailed,
  PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MADV_HUGEPAGE, MADV_DONTFORK, MADV_DONTNEED, SEEK_DATA, SEEK_HOLE, ENXIO,
} from '../host/libc.js';

const HUGE_PAGE = 2 * 1024 * 1024;
const PAGE = 4096;
/** pagemap entries read at a time (512 KiB, 256 MiB of RAM) */
const PAGEMAP_CHUNK = 65536;

/** Guest RAM mapped in this process. */
export class RamMapping {
  readonly bytes: Uint8Array;

  constructor(readonly size: number, readonly host: unknown, readonly hostAddr: bigint, private pagemap: number | undefined) {
    this.bytes = new Uint8Array(view(host, size));
  }

  /**
   * Give the memory back (a VM that failed to start, a test's scratch RAM).
   * The mapping stays, reading zeros, as views of it may live on.
   */
  close(): void {
    libc.madvise(this.host, this.size, MADV_DONTNEED);
    if (this.pagemap !== undefined) closeSync(this.pagemap);
    this.pagemap = undefined;
  }

  /**
   * The byte ranges that may hold something other than zeros: the pages
   * present or swapped out (/proc/self/pagemap); a page never touched
   * certainly reads as zero. The whole RAM when pagemap cannot say.
   */
  dataRanges(): [number, number][] {
    if (this.pagemap === undefined) return [[0, this.size]];
    const pages = Math.ceil(this.size / PAGE), first = Number(this.hostAddr / BigInt(PAGE));
    const buf = Buffer.alloc(Math.min(pages, PAGEMAP_CHUNK) * 8);
    const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.length / 4);
    const out: [number, number][] = [];
    for (let p = 0; p < pages; p += PAGEMAP_CHUNK) {
      const n = Math.min(PAGEMAP_CHUNK, pages - p);
      if (readSync(this.pagemap, buf, 0, n * 8, (first + p) * 8) !== n * 8) return [[0, this.size]];
      for (let i = 0; i < n; i++) {
        if ((words[i * 2 + 1]! & PM_PRESENT_OR_SWAPPED) === 0) continue;
        const a = (p + i) * PAGE, last = out.at(-1);
        if (last && last[1] === a) last[1] = Math.min(a + PAGE, this.size); else out.push([a, Math.min(a + PAGE, this.size)]);
      }
    }
    return out;
  }
}

/** Bits 63 (present) and 62 (swapped) of a pagemap entry, in its upper 32-bit word. */
const PM_PRESENT_OR_SWAPPED = 0xc0000000;

/**
 * Anonymous memory rather than a memfd: Linux gives anonymous memory
 * transparent huge pages by default (`enabled=always|madvise`), shmem only
 * where `shmem_enabled` allows it, which hosts seldom do; without them every
 * 4 KiB page a nested guest touches first is a fault of its own (the lab's
 * boot bench, bench/README.md section 6). Kept out of fork()ed children, as
 * QEMU does, so that a spawn does not make the guest's pages copy-on-write.
 */
export function createGuestRam(size: number, opts: { hugePages?: boolean } = {}): RamMapping {
  // Map 2 MiB more and trim both ends: an aligned start lets whole huge pages back it.
  const raw = libc.mmap(null, size + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (isMapFailed(raw)) throw new HostError(`cannot map ${size} bytes of guest memory: errno ${errno()}`);
  const rawAddr = address(raw);
  const hostAddr = (rawAddr + BigInt(HUGE_PAGE - 1)) & ~BigInt(HUGE_PAGE - 1);
  const head = Number(hostAddr - rawAddr), tail = HUGE_PAGE - head;
  if (head > 0) libc.munmap(raw, head);
  if (tail > 0) libc.munmap(libc.memsetAddr(hostAddr + BigInt(size), 0, 0), tail);
  const host = libc.memsetAddr(hostAddr, 0, 0);
  libc.madvise(host, size, MADV_DONTFORK);
  if (opts.hugePages ?? true) libc.madvise(host, size, MADV_HUGEPAGE);
  // Opened now: a sandboxed VM opens nothing in /proc later, and a save needs it.
  let pagemap: number | undefined;
  try {
    pagemap = openSync('/proc/self/pagemap', 'r');
  } catch {
    // no /proc: a save writes the whole RAM
  }
  return new RamMapping(size, host, hostAddr, pagemap);
}

/**
 * Fill fresh guest RAM from a saved RAM image: only the image's data ranges
 * (SEEK_DATA/SEEK_HOLE) are read, straight into the mapping; holes stay
 * untouched zero pages. The guest then owns a private copy: nothing done to
 * the image afterwards reaches it. Returns the ranges read.
 */
export function fillGuestRamFromFile(ram: RamMapping, fd: number, path: string): [number, number][] {
  const ranges = fileDataRanges(fd, ram.size) ?? [[0, ram.size]];
  for (const [a, b] of ranges) {
    for (let off = a; off < b;) {
      const n = readSync(fd, ram.bytes, off, Math.min(b - off, 2 ** 30), off);
      if (n <= 0) throw new HostError(`RAM image ${path} ended at ${off} bytes while being read (changed under us?)`);
      off += n;
    }
  }
  return ranges;
}

function fileDataRanges(fd: number, size: number): [number, number][] | undefined {
  const out: [number, number][] = [];
  for (let off = 0; off < size;) {
    const start = libc.lseek(fd, off, SEEK_DATA);
    if (start < 0) {
      if (errno() === ENXIO) break; // no data past off
      return undefined; // no SEEK_DATA here
    }
    let end = libc.lseek(fd, start, SEEK_HOLE);
    if (end < 0 || end > size) end = size;
    if (start >= size) break;
    out.push([start, end]);
    off = end;
  }
  return out;
}

/** Sorted, non-overlapping union of ranges. */
export function mergeRanges(rs: [number, number][]): [number, number][] {
  const sorted = [...rs].sort((x, y) => x[0] - y[0]);
  const out: [number, number][] = [];
  for (const [a, b] of sorted) {
    const last = out.at(-1);
    if (last && a <= last[1]) last[1] = Math.max(last[1], b); else out.push([a, b]);
  }
  return out;
}
