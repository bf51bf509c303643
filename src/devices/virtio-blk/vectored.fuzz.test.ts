/**
 * Random requests through the path production uses: guest RAM is a native
 * mapping, so data moves with preadv/pwritev on a FileBlockBackend over a
 * memfd. Chains of random shapes (direct or indirect, data split at random
 * byte boundaries over scattered buffers, random types, sectors, lengths,
 * segments) against a shadow copy of the disk: every request completes with
 * a valid status, an OK read returns the shadow's bytes, an OK write,
 * discard or write-zeroes changes the disk as the shadow says, a failed one
 * changes nothing; and a read-only disk stays bit-identical.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readSync, writeSync } from 'node:fs';
import { libc, MFD_CLOEXEC } from '../../host/libc.js';
import { GuestMemory } from '../../memory/guest-memory.js';
import { createGuestRam } from '../../memory/ram.js';
import type { VirtioInterrupt } from '../../virtio/device.js';
import { MockSplitQueue } from '../../virtio/testing/mock-driver.js';
import { FileBlockBackend } from '../block/index.js';
import {
  VirtioBlk, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
} from './device.js';
import { requestHeader } from './request.js';

const DISK = 1 << 20;
const SECTORS = DISK / 512;
const RAM = 8 << 20;
/** Chains per notify. */
const BATCH = 16;

/** xorshift32: deterministic. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return s;
  };
}

interface Request {
  type: number;
  /** byte offset, or -1 when the sector is out of range */
  off: number;
  /** data bytes (IN: writable before the status, OUT: readable after the header) */
  len: number;
  /** OUT: the bytes written */
  data?: Uint8Array;
  /** DISCARD / WRITE_ZEROES: the ranges, in bytes */
  zero?: { off: number; len: number }[];
  head: number;
  writable: number;
}

/** A memfd disk of DISK pseudo-random bytes, and its contents. */
function memfdDisk(seed: number): { fd: number; bytes: Buffer } {
  const fd = libc.memfdCreate('tshyve-fuzz-disk', MFD_CLOEXEC);
  assert.ok(fd >= 0);
  const bytes = Buffer.alloc(DISK);
  const r = rng(seed);
  for (let i = 0; i < DISK; i += 4) bytes.writeUInt32LE(r(), i);
  assert.equal(writeSync(fd, bytes, 0, DISK, 0), DISK);
  return { fd, bytes };
}

function fuzz(opts: { requests: number; seed: number; readonly: boolean }): { vectored: number; ok: number; statuses: number[] } {
  const disk = memfdDisk(opts.seed);
  const shadow = Buffer.from(disk.bytes);
  const ram = createGuestRam(RAM, { hugePages: false });
  const mem = new GuestMemory([{ gpa: 0, bytes: ram.bytes, hostAddr: ram.hostAddr }]);
  const backend = FileBlockBackend.open({ path: `/proc/self/fd/${disk.fd}`, readonly: opts.readonly });
  let vectored = 0;
  const readv = backend.readv.bind(backend), writev = backend.writev.bind(backend);
  backend.readv = (iov, off) => { vectored++; readv(iov, off); };
  backend.writev = (iov, off) => { vectored++; writev(iov, off); };
  const dev = new VirtioBlk({ path: 'fuzz', backend, onError: () => {} });
  const drv = new MockSplitQueue(mem, 256);
  const q = drv.makeQueue({ maxChainLen: dev.queueMaxChainLen(0) ?? 256, indirectDesc: true });
  const resets: unknown[] = [];
  const irq: VirtioInterrupt = { signalUsed: () => true, signalConfig: () => {}, needsReset: (e) => { resets.push(e); } };
  dev.activate([q], mem, irq, dev.features);

  const r = rng(opts.seed);
  const pool = Buffer.alloc(64 * 1024);
  for (let i = 0; i < pool.length; i += 4) pool.writeUInt32LE(r(), i);
  const types = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES, 2, 0xffffffff];
  /** data length: mostly whole sectors, now and then not */
  const dataLen = (): number => (r() % 16 === 0 ? r() % 9000 : 512 * (1 + (r() % 24)));
  /** a sector: mostly in range, now and then near or past the end, or huge */
  const sector = (len: number): bigint => {
    switch (r() % 16) {
      case 0: return BigInt(SECTORS - (r() % 4));
      case 1: return BigInt.asUintN(64, (BigInt(r()) << 32n) | BigInt(r()));
      default: return BigInt(r() % Math.max(1, SECTORS - Math.ceil(len / 512) + 1));
    }
  };
  /** `len` bytes split at random points into 1-8 pieces */
  const split = (len: number): number[] => {
    const n = 1 + (r() % 8);
    const cuts = [0, len];
    for (let i = 1; i < n && len > 1; i++) cuts.push(1 + (r() % (len - 1)));
    cuts.sort((a, b) => a - b);
    const out: number[] = [];
    for (let i = 1; i < cuts.length; i++) if (cuts[i]! > cuts[i - 1]!) out.push(cuts[i]! - cuts[i - 1]!);
    return out;
  };
  const inRange = (s: bigint, len: number): number => (s * 512n + BigInt(len) <= BigInt(DISK) ? Number(s) * 512 : -1);

  const statuses = [0, 0, 0];
  let ok = 0;
  const batch: Request[] = [];
  for (let done = 0; done < opts.requests; done += batch.length) {
    batch.length = 0;
    for (let i = 0; i < BATCH && done + i < opts.requests; i++) {
      const type = types[r() % types.length]!;
      const len = dataLen();
      const s = sector(len);
      const req: Request = { type, off: inRange(s, len), len: 0, head: 0, writable: 0 };
      const readable: (Uint8Array | number)[] = [requestHeader(type, s)];
      let writable: number[];
      if (type === VIRTIO_BLK_T_OUT) {
        const at = r() % (pool.length - len);
        req.data = pool.subarray(at, at + len);
        req.len = len;
        let p = 0;
        for (const k of split(len)) { readable.push(req.data.subarray(p, p + k)); p += k; }
        writable = [1];
      } else if (type === VIRTIO_BLK_T_DISCARD || type === VIRTIO_BLK_T_WRITE_ZEROES) {
        const n = 1 + (r() % 3);
        const segs = Buffer.alloc(16 * n);
        req.zero = [];
        for (let k = 0; k < n; k++) {
          const num = r() % 40 === 0 ? r() : 1 + (r() % 64);
          const ss = sector(num * 512);
          const flags = r() % 30 === 0 ? 2 : type === VIRTIO_BLK_T_WRITE_ZEROES ? r() % 2 : 0;
          segs.writeBigUInt64LE(ss, 16 * k); segs.writeUInt32LE(num >>> 0, 16 * k + 8); segs.writeUInt32LE(flags, 16 * k + 12);
          req.zero.push({ off: inRange(ss, num * 512), len: num * 512 });
        }
        readable.push(segs);
        writable = [1];
      } else {
        req.len = len;
        writable = [...split(len), 1];
      }
      if (r() % 64 === 0) writable[writable.length - 1] = 2; // the status byte is the last of a longer buffer
      req.writable = writable.reduce((a, b) => a + b, 0);
      req.head = drv.addChain({ readable, writable }, { indirect: r() % 2 === 0, gap: r() % 2 === 0 ? 64 : 0 });
      batch.push(req);
    }
    assert.doesNotThrow(() => dev.queueNotify(0));
    const used = drv.drainUsed();
    assert.equal(used.length, batch.length, 'every request completed');
    for (const [i, u] of used.entries()) {
      const req = batch[i]!;
      assert.equal(u.id, req.head, 'completed in order');
      const back = Buffer.from(drv.written(req.head, req.writable));
      const status = back[req.writable - 1]!;
      assert.ok(status === VIRTIO_BLK_S_OK || status === VIRTIO_BLK_S_IOERR || status === VIRTIO_BLK_S_UNSUPP, `status ${status}`);
      statuses[status]!++;
      if (status !== VIRTIO_BLK_S_OK) continue;
      ok++;
      switch (req.type) {
        case VIRTIO_BLK_T_IN:
          assert.ok(req.off >= 0 && req.len % 512 === 0, 'only a valid read succeeds');
          assert.equal(u.len, req.writable);
          if (!back.subarray(0, req.len).equals(shadow.subarray(req.off, req.off + req.len))) assert.fail(`read of ${req.len} at ${req.off}: wrong data`);
          break;
        case VIRTIO_BLK_T_OUT:
          assert.ok(!opts.readonly && req.off >= 0 && req.len % 512 === 0, 'only a valid write succeeds');
          shadow.set(req.data!, req.off);
          break;
        case VIRTIO_BLK_T_DISCARD:
        case VIRTIO_BLK_T_WRITE_ZEROES:
          assert.ok(!opts.readonly);
          for (const z of req.zero!) {
            assert.ok(z.off >= 0);
            shadow.fill(0, z.off, z.off + z.len); // a punched hole on a memfd reads as zeros
          }
          break;
      }
    }
  }
  assert.deepEqual(resets, [], 'no well-formed ring needed a reset');
  dev.destroy();
  backend.close();
  const now = Buffer.alloc(DISK);
  assert.equal(readSync(disk.fd, now, 0, DISK, 0), DISK);
  libc.close(disk.fd);
  libc.munmap(ram.host, ram.size);
  ram.close();
  if (opts.readonly) assert.ok(now.equals(disk.bytes), 'the read-only disk is bit-identical');
  else assert.ok(now.equals(shadow), 'the disk holds what the shadow says');
  return { vectored, ok, statuses };
}

test('10^6 random requests through preadv/pwritev on a memfd disk: valid statuses, the right data', (t) => {
  const t0 = performance.now();
  const res = fuzz({ requests: 1_000_000, seed: 0xb10c, readonly: false });
  assert.ok(res.vectored > 400_000, `${res.vectored} vectored calls`);
  assert.ok(res.statuses.every((n) => n > 1000), `statuses ${res.statuses.join('/')}`);
  t.diagnostic(`${res.ok} OK, ${res.vectored} vectored calls, statuses OK/IOERR/UNSUPP ${res.statuses.join('/')}, ${(performance.now() - t0).toFixed(0)} ms`);
});

test('2·10^5 random requests on a read-only memfd disk leave it bit-identical', () => {
  const res = fuzz({ requests: 200_000, seed: 0x5eed, readonly: true });
  assert.ok(res.vectored > 30_000, `${res.vectored} vectored calls`);
});
