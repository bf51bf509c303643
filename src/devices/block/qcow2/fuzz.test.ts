/**
 * Hostile qcow2 images: small images qemu-img made, mutated (random bytes
 * in the header, tables and data; chosen fields set to absurd values:
 * offsets past the end or into the header, huge L1 and refcount tables,
 * zero and overlapping refcounts, reserved and flag bits in table entries,
 * backing names that loop), each opened, read, written, discarded, checked
 * and closed. Every failure must be a one-line refusal (UserError) or an
 * I/O error (BlockIoError), each image handled in bounded time, and memory
 * must stay bounded.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { UserError } from '../../../errors.js';
import { BlockIoError } from '../backend.js';
import { openImage } from '../open.js';
import { checkImage } from './check.js';
import { Qcow2Backend } from './image.js';
import { qemuImg, rng, scratchDir, skipNoQemu } from './testing.js';

const IMAGES = Number(process.env.TSHYVE_QCOW2_FUZZ ?? 10_000);

interface Base { name: string; bytes: Buffer; cs: number }

function bases(s: ReturnType<typeof scratchDir>): Base[] {
  const raw = s.path('seed.raw');
  const data = Buffer.alloc(96 * 1024);
  for (let i = 0; i < data.length; i += 512) data.fill(i / 512 + 1, i, i + 200);
  writeFileSync(raw, data);
  const out: Base[] = [];
  const make = (name: string, args: string[], cs: number) => {
    const p = s.path(name);
    assert.equal(qemuImg(...args, p).status, 0, name);
    out.push({ name, bytes: readFileSync(p), cs });
  };
  make('v3-512.qcow2', ['convert', '-O', 'qcow2', '-o', 'cluster_size=512', raw], 512);
  make('v2-1k.qcow2', ['convert', '-O', 'qcow2', '-o', 'compat=0.10,cluster_size=1k', raw], 1024);
  make('v3-c.qcow2', ['convert', '-c', '-O', 'qcow2', '-o', 'cluster_size=1k', raw], 1024);
  make('v3-r1.qcow2', ['convert', '-O', 'qcow2', '-o', 'cluster_size=512,refcount_bits=1', raw], 512);
  const snap = s.path('v3-snap.qcow2');
  assert.equal(qemuImg('convert', '-O', 'qcow2', '-o', 'cluster_size=512', raw, snap).status, 0);
  assert.equal(qemuImg('snapshot', '-c', 's1', snap).status, 0);
  out.push({ name: 'v3-snap.qcow2', bytes: readFileSync(snap), cs: 512 });
  writeFileSync(s.path('base.raw'), data);
  make('v3-b.qcow2', ['create', '-f', 'qcow2', '-o', 'cluster_size=512', '-b', 'base.raw', '-F', 'raw'], 512);
  return out;
}

/** One mutation of a copy of `b`. */
function mutate(b: Base, r: (n: number) => number): Buffer {
  const img = Buffer.from(b.bytes);
  const hdr = img.readUInt32BE(100) || 72;
  const u64 = (at: number, v: bigint) => { if (at + 8 <= img.length) img.writeBigUInt64BE(v, at); };
  const u32 = (at: number, v: number) => { if (at + 4 <= img.length) img.writeUInt32BE(v >>> 0, at); };
  const anyOffset = (): bigint => [0n, 1n, 512n, BigInt(b.cs), BigInt(img.length), BigInt(img.length + b.cs), 1n << 40n, (1n << 56n) - 512n,
    BigInt(r(img.length)) & ~511n, 0xffffffffffffffffn][r(10)]!;
  const entry = (): bigint => [0n, 1n, 1n << 63n, 1n << 62n, (1n << 63n) | BigInt(r(img.length)), BigInt(r(img.length)) & ~511n,
    (3n << 62n) | BigInt(r(1 << 20)), 0x00fffffffffffe00n, BigInt(r(1 << 30)) << 9n, (1n << 63n) | 0x1feffn][r(10)]!;
  const l1 = Number(img.readBigUInt64BE(40)), rt = Number(img.readBigUInt64BE(48));
  const n = 1 + r(3);
  for (let k = 0; k < n; k++) {
    switch (r(12)) {
      case 0: for (let i = 0; i < 1 + r(8); i++) img[r(Math.min(img.length, hdr + 64))] = r(256); break; // header bytes
      case 1: for (let i = 0; i < 1 + r(16); i++) img[r(img.length)] = r(256); break; // anywhere
      case 2: u64([8, 40, 48, 64][r(4)]!, anyOffset()); break; // table offsets
      case 3: u32([36, 56, 60, 16][r(4)]!, [0, 1, 2, 0x7fffffff, 0xffffffff, 4096, 1 << 22, r(100)][r(8)]!); break; // sizes and counts
      case 4: u32(20, [0, 8, 9, 12, 16, 21, 22, 31, 64][r(9)]!); break; // cluster bits
      case 5: u32(96, r(9)); break; // refcount order
      case 6: u64(72, BigInt(1 << r(6))); break; // incompatible features (dirty, corrupt, ...)
      case 7: u64(l1 + 8 * r(4), entry()); break; // L1 entries
      case 8: { // an L2 entry somewhere in the file
        const at = (r(img.length) & ~7);
        u64(at, entry());
        break;
      }
      case 9: u64(rt + 8 * r(4), [0n, anyOffset(), BigInt(l1), 0n][r(4)]!); break; // refcount table: missing, wild, overlapping
      case 10: { // refcount blocks: zeros, huge counts
        const at = Number(img.readBigUInt64BE(rt) & ~511n);
        if (at > 0 && at < img.length) img.fill([0, 0xff, 1][r(3)]!, Math.min(img.length, at + r(64)), Math.min(img.length, at + r(64) + 1 + r(b.cs)));
        break;
      }
      default: { // backing file name
        const off = Number(img.readBigUInt64BE(8));
        if (off > 0 && off < img.length - 16) { img.write(['v3-b.qcow2', '/', '../../../../etc/passwd', 'json:{}', 'nbd:x'][r(5)]!, off); u32(16, 10); }
        break;
      }
    }
  }
  return img;
}

function allowed(e: unknown): boolean {
  return (e instanceof UserError || e instanceof BlockIoError) && !e.message.includes('\n') && e.message.length < 400;
}

test(`${IMAGES} mutated images: refused in one line or I/O errors, never a crash, hang or unbounded memory`, { skip: skipNoQemu, timeout: 600_000 }, () => {
  const s = scratchDir(true);
  try {
    const all = bases(s);
    const r = rng(0x5eed);
    const buf = Buffer.alloc(8192);
    let opened = 0, refused = 0, ioErrors = 0, worst = 0;
    const baseMem = process.memoryUsage().arrayBuffers;
    let peakMem = 0;
    for (let i = 0; i < IMAGES; i++) {
      const b = all[i % all.length]!;
      const p = s.path(i % all.length === all.length - 1 ? 'v3-b-mut.qcow2' : 'mut.qcow2');
      writeFileSync(p, mutate(b, r));
      const t0 = performance.now();
      let img;
      try {
        img = openImage({ path: p });
        opened++;
      } catch (e) {
        assert.ok(allowed(e), `image ${i} (${b.name}): ${String(e)}`);
        refused++;
        continue;
      }
      try {
        const size = Math.min(img.size, 1 << 20);
        for (const op of [0, 1, 2, 3, 4, 5]) {
          const off = r(Math.max(1, size - buf.length));
          try {
            if (op === 0 || op === 3) img.read(buf, off);
            else if (op === 1 || op === 4) img.write(buf.subarray(0, 1 + r(buf.length)), off);
            else if (op === 2) img.discard(off, 1 + r(buf.length));
            else img.flush();
          } catch (e) {
            assert.ok(allowed(e), `image ${i} (${b.name}) op ${op}: ${String(e)}`);
            ioErrors++;
          }
        }
        if (img instanceof Qcow2Backend) {
          try { checkImage(img, false); } catch (e) { assert.ok(allowed(e), `image ${i} check: ${String(e)}`); }
        }
      } finally {
        try { img.close(); } catch (e) { assert.ok(allowed(e), `image ${i} close: ${String(e)}`); }
      }
      worst = Math.max(worst, performance.now() - t0);
      if (i % 500 === 0) peakMem = Math.max(peakMem, process.memoryUsage().arrayBuffers - baseMem);
    }
    assert.ok(opened > IMAGES / 20, `some mutated images open (${opened})`);
    assert.ok(refused > IMAGES / 20, `some are refused (${refused})`);
    assert.ok(worst < 5000, `the slowest image took ${worst.toFixed(0)} ms`);
    assert.ok(peakMem < 256 << 20, `memory grew by ${peakMem} bytes`);
    void ioErrors;
  } finally {
    s.done();
  }
});
