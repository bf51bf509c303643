/**
 * Guest RAM on the host: a memfd mapped shared, filled from a RAM image on
 * a restore, and which parts of it hold data.
 */
import { readSync } from 'node:fs';
import { HostError } from '../errors.js';
import {
  libc, errno, address, view, isMapFailed,
  PROT_READ, PROT_WRITE, MAP_SHARED, MFD_CLOEXEC, SEEK_DATA, SEEK_HOLE, ENXIO, MADV_HUGEPAGE,
} from '../host/libc.js';

/** A memfd-backed guest RAM mapping. */
export interface RamMapping {
  memfd: number;
  size: number;
  host: unknown;
  hostAddr: bigint;
  bytes: Uint8Array;
}

export function createGuestRam(size: number, name = 'tshyve-guest', opts: { hugePages?: boolean } = {}): RamMapping {
  const memfd = libc.memfdCreate(name, MFD_CLOEXEC);
  if (memfd < 0) throw new HostError(`memfd_create failed: errno ${errno()}`);
  if (libc.ftruncate(memfd, size) < 0) {
    const e = errno();
    libc.close(memfd);
    throw new HostError(`cannot size guest memory to ${size} bytes: errno ${e}`);
  }
  const host = libc.mmap(null, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (isMapFailed(host)) {
    const e = errno();
    libc.close(memfd);
    throw new HostError(`cannot map ${size} bytes of guest memory: errno ${e}`);
  }
  // Ask for transparent huge pages: fewer (nested) page faults and TLB misses.
  // Honoured where the host allows THP for shmem (shmem_enabled=advise).
  if (opts.hugePages ?? true) libc.madvise(host, size, MADV_HUGEPAGE);
  return { memfd, size, host, hostAddr: address(host), bytes: new Uint8Array(view(host, size)) };
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

/**
 * The byte ranges of guest RAM that may hold something other than zeros
 * (what the memfd holds: SEEK_DATA / SEEK_HOLE); the rest certainly reads as zero.
 */
export function ramDataRanges(ram: RamMapping): [number, number][] {
  return fileDataRanges(ram.memfd, ram.size) ?? [[0, ram.size]];
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
