/**
 * Fuzz the split virtqueue with random guest content: at least 10^6 random
 * descriptors (tables, indirect tables, flags, next, addr, len) under random
 * avail indices and queue configurations. popChain must only ever return
 * chains whose buffers lie inside guest RAM, or throw a VirtqueueError, and
 * must terminate. Deterministic (seeded) so a failure reproduces.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../memory/guest-memory.js';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from './constants.js';
import { Virtqueue, VirtqueueError, type VirtqueueState } from './queue.js';

/** xorshift32 */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x;
  };
}

// RAM: [0, 0x8000) and [0x9000, 0x10000) with a hole between them.
const LOW = new Uint8Array(0x8000), HIGH = new Uint8Array(0x7000);
const HOLE = 0x8000, HIGH_BASE = 0x9000, TOP = 0x10000;
const DESC = 0x0000, AVAIL = 0x1000, USED = 0x1400, DATA = 0x2000;
const MAX_SIZE = 256;

test('fuzz: 10^6 random descriptors give chains inside guest RAM or VirtqueueErrors, never anything else', () => {
  const mem = new GuestMemory([{ gpa: 0, bytes: LOW }, { gpa: HIGH_BASE, bytes: HIGH }]);
  const dv = new DataView(LOW.buffer);
  const r = prng(0x5eed1234);
  const codes = new Map<string, number>();
  let fed = 0, chains = 0, buffers = 0, rounds = 0, visitedBytes = 0;

  const putDesc = (off: number, lo: number, hi: number, len: number, flags: number, next: number): void => {
    dv.setUint32(off, lo, true);
    dv.setUint32(off + 4, hi, true);
    dv.setUint32(off + 8, len, true);
    dv.setUint16(off + 12, flags, true);
    dv.setUint16(off + 14, next, true);
    fed++;
  };

  while (fed < 1_000_000) {
    rounds++;
    const size = 1 << (r() % 9);
    // Half the rounds are wholly random; the others lay out well-formed
    // chains (some through indirect tables) and corrupt a few fields.
    const benign = (r() & 1) === 1;
    const tables: { at: number; n: number }[] = [];
    const heads: number[] = [];
    if (!benign) {
      const nt = r() % 4;
      for (let t = 0; t < nt; t++) {
        const n = 1 + (r() % 24);
        const at = DATA + ((r() % ((HOLE - DATA - 16 * n) >>> 4)) << 4);
        tables.push({ at, n });
        for (let i = 0; i < n; i++) randomDesc(at + 16 * i, n);
      }
      for (let i = 0; i < size; i++) randomDesc(DESC + 16 * i, size);
    } else {
      const perm = Array.from({ length: size }, (_, i) => i);
      for (let i = size - 1; i > 0; i--) { const j = r() % (i + 1); [perm[i], perm[j]] = [perm[j]!, perm[i]!]; }
      let tableAt = DATA;
      for (let p = 0; p < size;) {
        const n = Math.min(size - p, 1 + (r() % 6));
        const idx = perm.slice(p, p + n);
        p += n;
        heads.push(idx[0]!);
        const nr = r() % (n + 1);
        for (let i = 0; i < n; i++) {
          const last = i === n - 1;
          if (last && (r() & 3) === 0 && tableAt + 16 * 8 <= HOLE) {
            const k = 1 + (r() % 8), kr = r() % (k + 1);
            for (let j = 0; j < k; j++) {
              putDesc(tableAt + 16 * j, DATA + (r() % 0x5000), 0, r() & 0x3ff,
                (j < kr ? 0 : VIRTQ_DESC_F_WRITE) | (j < k - 1 ? VIRTQ_DESC_F_NEXT : 0), j + 1);
            }
            putDesc(DESC + 16 * idx[i]!, tableAt, 0, 16 * k, VIRTQ_DESC_F_INDIRECT, 0);
            tableAt += 16 * k;
          } else {
            putDesc(DESC + 16 * idx[i]!, DATA + (r() % 0x5000), 0, r() & 0x3ff,
              (i < nr ? 0 : VIRTQ_DESC_F_WRITE) | (last ? 0 : VIRTQ_DESC_F_NEXT), last ? 0 : idx[i + 1]!);
          }
        }
      }
      // sparse corruption of single fields
      const hits = r() % 3;
      for (let h = 0; h < hits; h++) {
        const off = (r() & 1) ? DESC + 16 * (r() % size) : DATA + 16 * (r() % ((tableAt - DATA) >>> 4 || 1));
        const field = r() % 4;
        if (field === 0) dv.setUint32(off + 4, r() & ((r() & 1) ? 0xffffffff : 0x3f), true);
        else if (field === 1) dv.setUint32(off + 8, (r() & 1) ? r() : r() & 0xffff, true);
        else if (field === 2) dv.setUint16(off + 12, r() & 7, true);
        else dv.setUint16(off + 14, (r() & 1) ? r() % size : r() & 0xffff, true);
      }
    }

    function randomDesc(off: number, tableLen: number): void {
      const k = r() & 15;
      let lo: number, hi = 0, len: number;
      if (k < 10) {
        lo = r() % TOP; len = r() & 0x3ff;
      } else if (k < 12) {
        lo = (k === 10 ? HOLE : TOP) - (r() & 0xff); len = r() & 0x1ff;
      } else if (k < 14) {
        lo = r(); hi = r(); len = r();
      } else {
        lo = r(); hi = r() & 0x3f_ffff; len = r() & 0xffff;
      }
      let flags = r() & 3;
      if ((r() & 7) === 0) flags |= VIRTQ_DESC_F_INDIRECT;
      if ((r() & 15) === 0) flags = r() & 0xffff;
      if ((flags & VIRTQ_DESC_F_INDIRECT) && tables.length && (r() & 3)) {
        const t = tables[r() % tables.length]!;
        lo = t.at; hi = 0;
        len = (r() & 7) ? 16 * t.n : r() & 0x1ff;
        if (r() & 1) flags &= ~VIRTQ_DESC_F_NEXT;
      }
      const next = (r() & 7) ? r() % tableLen : r() & 0xffff;
      putDesc(off, lo, hi, len, flags, next);
    }

    const start = r() & 0xffff;
    for (let i = 0; i < size; i++) {
      dv.setUint16(AVAIL + 4 + 2 * ((start + i) % size), i < heads.length ? heads[i]! : (r() & 7) ? r() % size : r() & 0xffff, true);
    }
    const ahead = benign ? ((r() & 15) ? heads.length : r() % (size + 2)) : (r() & 7) ? r() % (size + 1) : r() & 0xffff;
    dv.setUint16(AVAIL, r() & 1, true);
    dv.setUint16(AVAIL + 2, (start + ahead) & 0xffff, true);
    dv.setUint16(AVAIL + 4 + 2 * size, r() & 0xffff, true);

    const state: VirtqueueState = {
      v: 1, maxSize: MAX_SIZE, size, ready: true,
      descTable: `0x${DESC.toString(16)}`, availRing: `0x${AVAIL.toString(16)}`, usedRing: `0x${USED.toString(16)}`,
      nextAvail: start, nextUsed: start, signalledUsed: start,
      eventIdx: (r() & 1) === 1, indirectDesc: (r() & 7) !== 0, notificationsEnabled: true,
      maxChainLen: (r() & 3) ? null : 1 + (r() % 64),
    };
    const q = Virtqueue.fromState(mem, state);
    const maxBufs = q.maxChainLen;
    // terminates: at most size+1 pops per round (avail idx can be at most size ahead)
    for (let pops = 0; pops <= size + 1; pops++) {
      let c;
      try {
        c = q.popChain();
      } catch (e) {
        if (!(e instanceof VirtqueueError)) throw e;
        codes.set(e.code, (codes.get(e.code) ?? 0) + 1);
        // sticky, and the used side still works for what was popped
        assert.throws(() => q.popChain(), (e2: unknown) => e2 === e);
        break;
      }
      if (!c) break;
      assert.ok(pops < size, 'more chains than the avail idx allowed');
      chains++;
      const all = [...c.readable, ...c.writable];
      if (all.length === 0 || all.length > maxBufs) assert.fail(`chain of ${all.length} buffers (max ${maxBufs})`);
      let rl = 0, wl = 0;
      for (const b of c.readable) { if (!mem.contains(b.gpa, b.len)) assert.fail(`readable ${b.gpa}+${b.len} outside RAM`); rl += b.len; }
      for (const b of c.writable) { if (!mem.contains(b.gpa, b.len)) assert.fail(`writable ${b.gpa}+${b.len} outside RAM`); wl += b.len; }
      assert.equal(rl, c.readableLen);
      assert.equal(wl, c.writableLen);
      if (c.head >= size) assert.fail(`head ${c.head} >= size ${size}`);
      buffers += all.length;
      visitedBytes += c.readAll(64).length;
      q.pushUsed(c.head, Math.min(wl, 0xffff));
      q.needsNotification();
    }
    q.enableNotifications();
    q.disableNotifications();
  }

  if (process.env.FUZZ_STATS) console.log({ fed, rounds, chains, buffers, codes: [...codes] });
  assert.ok(fed >= 1_000_000);
  assert.ok(chains > 1000, `only ${chains} good chains in ${rounds} rounds`);
  assert.ok(buffers > chains);
  for (const code of ['EVQ_AVAIL_IDX', 'EVQ_DESC_INDEX', 'EVQ_CHAIN_LOOP', 'EVQ_DESC_RANGE', 'EVQ_DESC_ORDER',
    'EVQ_INDIRECT_LEN', 'EVQ_INDIRECT_NEXT', 'EVQ_INDIRECT_NESTED', 'EVQ_INDIRECT_FEATURE', 'EVQ_CHAIN_LEN']) {
    assert.ok((codes.get(code) ?? 0) > 0, `fuzzing never produced ${code}: ${JSON.stringify([...codes])}`);
  }
  assert.ok(!codes.has('EVQ_MEMORY'), 'no unexpected memory errors');
  assert.ok(visitedBytes > 0);
});

test('fuzz: validate() accepts only rings inside guest RAM, for random 64-bit addresses and sizes', () => {
  const mem = new GuestMemory([{ gpa: 0, bytes: LOW }, { gpa: HIGH_BASE, bytes: HIGH }]);
  const r = prng(42);
  const rand64 = (): bigint => {
    switch (r() & 3) {
      case 0: return BigInt(r() % (TOP + 0x100));
      case 1: return (BigInt(r()) << 32n) | BigInt(r());
      case 2: return (1n << 64n) - BigInt(r() & 0xfff);
      default: return BigInt(r() & 0x1f_ffff) * 0x1_0000_0000n + BigInt(r());
    }
  };
  let ok = 0;
  for (let i = 0; i < 100_000; i++) {
    const q = new Virtqueue(mem, 1024);
    q.size = (r() & 3) ? 1 << (r() % 11) : r() & 0xffff;
    q.descTable = rand64() & ~((r() & 1) ? 0xfn : 0n);
    q.availRing = rand64() & ~((r() & 1) ? 1n : 0n);
    q.usedRing = rand64() & ~((r() & 1) ? 3n : 0n);
    q.ready = (r() & 15) !== 0;
    try {
      q.validate();
    } catch (e) {
      if (!(e instanceof VirtqueueError)) throw e;
      continue;
    }
    ok++;
    const s = q.size;
    assert.ok(mem.contains(Number(q.descTable), 16 * s));
    assert.ok(mem.contains(Number(q.availRing), 6 + 2 * s));
    assert.ok(mem.contains(Number(q.usedRing), 6 + 8 * s));
    assert.equal(q.descTable % 16n, 0n);
  }
  assert.ok(ok > 100, `only ${ok} valid configurations`);
});
