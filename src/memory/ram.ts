/**
 * Guest RAM on the host: a memfd mapped shared (a new VM) or a RAM image
 * mapped copy-on-write (a restore), and which parts of it hold data.
 */
import { readFileSync } from 'node:fs';
import { HostError } from '../errors.js';
import {
  libc, errno, address, view, isMapFailed,
  O_RDONLY, O_CLOEXEC, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_PRIVATE, MFD_CLOEXEC, SEEK_DATA, SEEK_HOLE, ENXIO, MADV_HUGEPAGE,
} from '../host/libc.js';

/** A memfd-backed guest RAM mapping. */
export interface RamMapping {
  /** the memfd (shared RAM) or the snapshot's RAM image (copy-on-write RAM) */
  memfd: number;
  /** 'shared': every page the guest has is in the memfd; 'cow': pages may be in the image or private copies */
  kind: 'shared' | 'cow';
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
  return { memfd, kind: 'shared', size, host, hostAddr: address(host), bytes: new Uint8Array(view(host, size)) };
}

/**
 * Guest RAM mapped copy-on-write from a saved RAM image: pages are read from
 * the file when the guest first touches them and copied when it writes, so
 * a restore does not wait for RAM to be read, and the image stays as saved.
 */
export function mapGuestRamFromFile(path: string, size: number): RamMapping {
  const fd = libc.open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw new HostError(`cannot open ${path}: errno ${errno()}`);
  const host = libc.mmap(null, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (isMapFailed(host)) {
    const e = errno();
    libc.close(fd);
    throw new HostError(`cannot map ${size} bytes of ${path}: errno ${e}`);
  }
  return { memfd: fd, kind: 'cow', size, host, hostAddr: address(host), bytes: new Uint8Array(view(host, size)) };
}

/**
 * The byte ranges of guest RAM that may hold something other than zeros;
 * the rest certainly reads as zero. Shared RAM: what the memfd holds
 * (SEEK_DATA / SEEK_HOLE). Copy-on-write RAM: what the image file holds,
 * plus the pages resident in the mapping (mincore), which include every
 * page the guest wrote since the restore.
 */
export function ramDataRanges(ram: RamMapping): [number, number][] {
  const file = fileDataRanges(ram.memfd, ram.size);
  if (!file) return [[0, ram.size]];
  if (ram.kind === 'shared') return file;
  // mincore does not count swapped-out pages: with swap, read everything.
  if (hasSwap()) return [[0, ram.size]];
  const PAGE = 4096;
  const vec = Buffer.alloc(Math.ceil(ram.size / PAGE));
  if (libc.mincore(ram.host, ram.size, vec) < 0) return [[0, ram.size]];
  const resident: [number, number][] = [];
  for (let i = 0; i < vec.length;) {
    if (!(vec[i]! & 1)) { i++; continue; }
    const a = i;
    while (i < vec.length && vec[i]! & 1) i++;
    resident.push([a * PAGE, Math.min(i * PAGE, ram.size)]);
  }
  return mergeRanges([...file, ...resident]);
}

function hasSwap(): boolean {
  try { return readFileSync('/proc/swaps', 'utf8').trim().split('\n').length > 1; } catch { return true; }
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
