/**
 * Hostile guests: 10^6 random register writes and commands (admin and I/O,
 * with biased opcodes, NSIDs, queue ids and sizes, LBAs, PRPs and PRP lists
 * in and out of RAM, doorbells past queue ends) against a controller over
 * a guarded disk. Nothing may throw, touch the disk outside its size, or
 * leave the controller unusable after a reset.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { BlockBackend } from '../block/backend.js';
import { CSTS_CFS, CSTS_RDY, DOORBELLS, REG } from './constants.js';
import { RamBlockBackend } from './ram-backend.js';
import { DATA, MEM, NvmeTestDriver, ioCq, ioSq } from './testing.js';

/** xorshift32: deterministic. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return s;
  };
}

const DISK = 1 << 20;

test('10^6 random register writes and commands: no throw, no I/O outside the disk, usable after a reset', () => {
  const real = RamBlockBackend.ofMiB(1);
  const violations: string[] = [];
  const chk = (op: string, off: number, len: number): void => {
    if (!(Number.isSafeInteger(off) && off >= 0 && len >= 0 && off + len <= DISK)) violations.push(`${op} ${off}+${len}`);
  };
  const backend: BlockBackend = {
    size: DISK, readonly: false, hostSectorSizes: {},
    read: (b, o) => { chk('read', o, b.length); real.read(b, o); },
    write: (b, o) => { chk('write', o, b.length); real.write(b, o); },
    flush: () => {},
    discard: (o, l) => { chk('discard', o, l); return real.discard(o, l); },
    writeZeroes: (o, l) => { chk('writeZeroes', o, l); real.writeZeroes(o, l); },
    close: () => {},
  };
  const d = new NvmeTestDriver({ backend, maxq: 3, qsz: 32 });
  const r = rng(0x4e564d45);
  const pick = <T>(a: readonly T[]): T => a[r() % a.length]!;
  const LIST = 0x700000;
  // a PRP list page of mixed entries: pages in RAM, outside, misaligned, itself
  for (let i = 0; i < 512; i++) d.mem.writeU32(LIST + 8 * i, pick([DATA + 4096 * (r() % 64), LIST, MEM, DATA + 12, 0]));
  const addr = (): number => pick([DATA, DATA + 4096 * (r() % 200), DATA + (r() % 4096), LIST, LIST + 8 * (r() % 512), MEM, MEM - 4096,
    0, 0x1_0000_0000, 2 ** 52, r() * 4096]);
  const harmless = [REG.INTMS, REG.INTMC, REG.CSTS, REG.CAP, REG.VS, REG.AQA, REG.ASQ, REG.ACQ, REG.CMBLOC, 0x50, 0xffc];
  const regs = [REG.CC, REG.AQA, REG.ASQ, REG.ASQ + 4, REG.ACQ, REG.ACQ + 4, REG.INTMS, REG.INTMC, REG.CSTS, REG.CAP, REG.NSSR];
  const adminOps = [0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0a, 0x0c, 0x7c, 0x10, 0x80, r() & 0xff];
  const ioOps = [0x00, 0x01, 0x02, 0x08, 0x09, 0x04, 0x05, 0x7f];
  const small = (): number => pick([0, 1, 2, 3, 4, 7, 15, 16, 31, 0xffff, 0xffffffff, r()]);
  /** (re)start: enabled, with I/O pairs 1 and 2 */
  const start = (): void => {
    d.setReg(REG.CC, 0);
    d.enable(16);
    d.createCq(1, 16); d.createSq(1, 16);
    d.createCq(2, 8, 2); d.createSq(2, 8, 2);
  };
  start();
  const N = 1_000_000;
  let commands = 0, restarts = 0;
  const statuses = new Map<number, number>();
  for (let i = 0; i < N; i++) {
    if ((i & 15) === 0 && (d.reg(REG.CSTS) & (CSTS_CFS | CSTS_RDY)) !== CSTS_RDY) { start(); restarts++; }
    const k = r() % 10;
    if (k < 4) {
      // a register or doorbell write
      // mostly writes a working controller survives; one in 16 may break it (CC, a doorbell value, anything)
      const off = r() % 16 === 0 ? (r() % 2 ? DOORBELLS + 4 * (r() % 10) : pick(regs)) : pick(harmless) + (r() % 2) * (r() % 0x1000);
      const v = pick([small(), d.reg(REG.CC) ^ 1, d.reg(REG.CC) | (1 << 14), (15 << 16) | 15, DATA, r()]);
      d.ctrl.write(off, pick([4, 4, 4, 2, 1]), v);
      continue;
    }
    // a command on a queue the driver side believes in, then its doorbell
    const qid = pick([0, 1, 1, 2]);
    const admin = qid === 0;
    try {
      d.put(qid, {
        opcode: admin ? pick(adminOps) : pick(ioOps),
        nsid: pick([0, 1, 1, 1, 2, 0xffffffff]),
        prp1: addr(), prp2: addr(),
        cdw10: admin ? pick([small(), ((r() % 40) << 16) | (r() % 5), 1, 2, 3, 7, 0x0b, 0x06 | (r() % 4 << 8)]) : pick([r() % 2100, small()]),
        cdw11: pick([small(), ((r() % 5) << 16) | (r() % 4), 4, 0]),
        cdw12: pick([r() % 64, small(), (1 << 30) | (r() % 8), (1 << 25) | (r() % 8)]),
        cdw13: small(),
      });
      d.ring(qid);
      commands++;
    } catch {
      continue; // the driver side has no such queue (yet): nothing was sent
    }
    if (r() % 4 === 0) for (const q of [0, 1, 2]) { try { for (const c of d.reap(q)) statuses.set(c.status & 0x7ff, (statuses.get(c.status & 0x7ff) ?? 0) + 1); } catch { /* not created */ } }
  }
  assert.deepEqual(violations.slice(0, 5), [], 'every disk access inside the disk');
  assert.ok(commands > N / 2, `${commands} commands`);
  assert.ok(restarts > 0, 'the fuzz reached fatal or disabled states');
  assert.ok((statuses.get(0) ?? 0) > 10_000 && statuses.size >= 10, `completions by status: ${JSON.stringify([...statuses])}`);
  // a clean start works after all that
  d.setReg(REG.CC, 0);
  assert.equal(d.reg(REG.CSTS) & (CSTS_CFS | CSTS_RDY), 0);
  const e = new NvmeTestDriver({ backend });
  e.mem.write(0, d.mem.read(0, 4096)); // nothing carried over but the disk
  e.enable();
  assert.equal(e.createCq(1).status, 0);
  assert.equal(e.createSq(1).status, 0);
  d.setReg(REG.CC, 0);
  d.enable();
  assert.equal(d.createCq(1, 16, 1, ioCq(1)).status, 0);
  assert.equal(d.createSq(1, 16, 1, ioSq(1)).status, 0);
  d.mem.fill(DATA, 4096, 0x3c);
  assert.equal(d.rw(1, true, 10, 8).status, 0);
  d.mem.fill(DATA, 4096, 0);
  assert.equal(d.rw(1, false, 10, 8).status, 0);
  assert.equal(d.mem.readU8(DATA + 4095), 0x3c);
});
