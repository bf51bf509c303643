/**
 * Test scaffolding for the qcow2 backend: qemu-img as the reference, a
 * seeded random source, scatter lists over Buffers, and random I/O applied
 * to two backends at once.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { libc } from '../../../host/libc.js';
import { IoVecs } from '../../../memory/iovec.js';
import type { BlockBackend } from '../backend.js';

export const QEMU_IMG = '/usr/bin/qemu-img';
export const haveQemuImg = existsSync(QEMU_IMG);
export const skipNoQemu = haveQemuImg ? false : 'qemu-img is not installed';

export function qemuImg(...args: string[]): { status: number; out: string } {
  const r = spawnSync(QEMU_IMG, args, { encoding: 'utf8' });
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

/** `overlay` is a qcow2 image of `size` bytes over `backing` (its format recorded), and clean, as qemu-img reads it. */
export function assertOverlay(overlay: string, backing: string, backingFormat: 'raw' | 'qcow2', size: number): void {
  const info = qemuImg('info', '--output=json', overlay);
  assert.equal(info.status, 0, info.out);
  const j = JSON.parse(info.out) as Record<string, unknown>;
  assert.equal(j['format'], 'qcow2');
  assert.equal(j['backing-filename'], backing);
  assert.equal(j['backing-filename-format'], backingFormat);
  assert.equal(j['virtual-size'], size);
  const check = qemuImg('check', overlay);
  assert.equal(check.status, 0, check.out);
}

/** A scratch folder (`inMemory`: on /dev/shm when there is one, where fdatasync costs nothing). */
export function scratchDir(inMemory = false): { dir: string; path: (n: string) => string; done: () => void } {
  const dir = mkdtempSync(join(inMemory && existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'tshyve-qcow2-'));
  return { dir, path: (n) => join(dir, n), done: () => rmSync(dir, { recursive: true, force: true }) };
}

/** xorshift32: reproducible "random" numbers. */
export function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n: number) => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x % n;
  };
}

/** n bytes of noise: a random 4 KiB pattern repeated, each 64-byte piece stamped with a random tag and its position. */
export function randomBytes(r: (n: number) => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  const w = new Uint32Array(1024);
  for (let i = 0; i < w.length; i++) w[i] = r(0x100000000);
  const pat = Buffer.from(w.buffer);
  for (let i = 0; i < n; i += pat.length) pat.copy(b, i, 0, Math.min(pat.length, n - i));
  const tag = r(0x100000000);
  for (let i = 0; i + 8 <= n; i += 64) { b.writeUInt32LE(tag, i); b.writeUInt32LE(i, i + 4); }
  return b;
}

/** A scatter list over pieces of `buf` (kept alive by the caller). */
export function iovOf(buf: Buffer, pieces: number[]): IoVecs {
  const base = Number(libc.bufferAddress(buf));
  const t = new Float64Array(3 * pieces.length);
  let at = 0;
  pieces.forEach((len, i) => { t[3 * i] = 0; t[3 * i + 1] = len; t[3 * i + 2] = base + at; at += len; });
  const iov = new IoVecs(pieces.length);
  iov.fill(t, 0, pieces.length, 0, at);
  return iov;
}

/** Split n bytes into a few pieces (multiples of 512 when n is). */
export function pieces(r: (n: number) => number, n: number): number[] {
  const out: number[] = [];
  let left = n;
  while (left > 0) {
    const k = left <= 512 || r(3) === 0 ? left : Math.max(512, Math.floor(r(left) / 512) * 512) || left;
    out.push(Math.min(k, left));
    left -= Math.min(k, left);
  }
  return out;
}

/**
 * `ops` random writes (Buffer or vectored), discards and write-zeroes of
 * `size`-byte disks, applied to every backend alike (a discard to the first,
 * the others then written with what it reads there); sector aligned or not.
 */
export function randomOps(r: (n: number) => number, backends: BlockBackend[], size: number, ops: number, maxLen = 256 * 1024): void {
  for (let i = 0; i < ops; i++) {
    const aligned = r(4) !== 0;
    let off = r(size);
    let len = 1 + r(maxLen);
    if (aligned) { off = Math.floor(off / 512) * 512; len = Math.max(512, Math.floor(len / 512) * 512); }
    len = Math.min(len, size - off);
    if (len <= 0) continue;
    const kind = r(10);
    if (kind < 6) {
      const data = randomBytes(r, len);
      const vec = r(2) === 0;
      const p = pieces(r, len);
      for (const b of backends) {
        if (vec && b.writev) b.writev(iovOf(data, p), off); else b.write(data, off);
      }
    } else if (kind < 8) {
      // what a discarded range reads as is the backend's choice: the others copy the first's
      backends[0]!.discard(off, len);
      const now = Buffer.alloc(len);
      backends[0]!.read(now, off);
      for (const b of backends.slice(1)) b.write(now, off);
    } else {
      const unmap = r(2) === 0;
      for (const b of backends) b.writeZeroes(off, len, unmap);
    }
    if (r(20) === 0) for (const b of backends) b.flush();
  }
}
