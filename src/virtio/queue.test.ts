import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../memory/guest-memory.js';
import {
  VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY,
} from './constants.js';
import { Virtqueue, VirtqueueError, needEvent, type VirtqueueErrorCode } from './queue.js';
import { MockSplitQueue } from './testing/mock-driver.js';

const MEM = 0x10000;
const N = VIRTQ_DESC_F_NEXT, W = VIRTQ_DESC_F_WRITE, I = VIRTQ_DESC_F_INDIRECT;

/** Guest memory that counts accesses (slices, copies and every typed accessor). */
class CountingMemory extends GuestMemory {
  slices = 0;
  readonly byAddr = new Map<number, number>();
  private count(gpa: number): void {
    this.slices++;
    this.byAddr.set(gpa, (this.byAddr.get(gpa) ?? 0) + 1);
  }
  override slice(gpa: number, len: number): Uint8Array { this.count(gpa); return super.slice(gpa, len); }
  override copyOut(gpa: number, dst: Uint8Array, o: number, len: number): void { this.count(gpa); super.copyOut(gpa, dst, o, len); }
  override copyIn(gpa: number, src: Uint8Array, o: number, len: number): void { this.count(gpa); super.copyIn(gpa, src, o, len); }
  override readU8(gpa: number): number { this.count(gpa); return super.readU8(gpa); }
  override readU16(gpa: number): number { this.count(gpa); return super.readU16(gpa); }
  override readU32(gpa: number): number { this.count(gpa); return super.readU32(gpa); }
  override readU64(gpa: number): bigint { this.count(gpa); return super.readU64(gpa); }
  override writeU16(gpa: number, v: number): void { this.count(gpa); super.writeU16(gpa, v); }
  override writeU32(gpa: number, v: number): void { this.count(gpa); super.writeU32(gpa, v); }
}

function counting(size = MEM): CountingMemory {
  return new CountingMemory([{ gpa: 0, bytes: new Uint8Array(size) }]);
}

function setup(size = 8, opts: { eventIdx?: boolean; indirectDesc?: boolean; mem?: GuestMemory; startIdx?: number } = {}) {
  const mem = opts.mem ?? GuestMemory.ofSize(MEM);
  const drv = new MockSplitQueue(mem, size, { base: 0x1000, startIdx: opts.startIdx });
  const q = drv.makeQueue({ eventIdx: opts.eventIdx, indirectDesc: opts.indirectDesc });
  if (opts.startIdx !== undefined) {
    // a queue whose indices start mid-space: restore it from state
    const st = q.getState();
    st.nextAvail = st.nextUsed = st.signalledUsed = opts.startIdx & 0xffff;
    return { mem, drv, q: Virtqueue.fromState(mem, st) };
  }
  return { mem, drv, q };
}

function expectCode(fn: () => unknown, code: VirtqueueErrorCode): VirtqueueError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof VirtqueueError, `expected VirtqueueError ${code}, got ${String(err)}`);
  assert.equal(err.code, code, err.message);
  return err;
}

const bytes = (s: string) => new TextEncoder().encode(s);

test('a direct chain: readable then writable buffers, read, write, used entry', () => {
  const { drv, q } = setup();
  assert.equal(q.popChain(), undefined);
  const head = drv.addChain({ readable: [bytes('hello '), bytes('world')], writable: [4, 8] });
  const c = q.popChain()!;
  assert.ok(c);
  assert.equal(c.head, head);
  assert.equal(c.readable.length, 2);
  assert.equal(c.writable.length, 2);
  assert.equal(c.readableLen, 11);
  assert.equal(c.writableLen, 12);
  assert.equal(c.readAll(4096).toString(), 'hello world');
  assert.equal(c.readAll(7).toString(), 'hello w');
  assert.equal(c.readAt(4, 4).toString(), 'o wo');
  assert.equal(c.readAt(9, 100).toString(), 'ld');
  assert.equal(c.readAt(50, 3).length, 0);
  assert.equal(c.write(bytes('0123456789abcdefXYZ')), 12, 'truncated to the writable capacity');
  assert.equal(c.write(bytes('!!'), 3), 2);
  assert.equal(q.popChain(), undefined);
  assert.equal(q.inFlight, 1);
  q.pushUsed(c.head, 12);
  assert.deepEqual(drv.popUsed(), { id: head, len: 12 });
  assert.equal(new TextDecoder().decode(drv.written(head, 12)), '012!!56789ab');
  assert.equal(q.inFlight, 0);
});

test('readInto copies readable bytes into a buffer of its own, across buffers, and no further than the readable part', () => {
  const { drv, q } = setup();
  drv.addChain({ readable: [bytes('head'), bytes('er-and'), bytes('-more')], writable: [2] });
  const c = q.popChain()!;
  const dst = Buffer.alloc(8, 0x2e);
  assert.equal(c.readInto(dst, 0), 8);
  assert.equal(dst.toString(), 'header-a');
  assert.equal(c.readInto(dst, 10), 5, 'the readable part ends after 5 more bytes');
  assert.equal(dst.subarray(0, 5).toString(), '-more');
  assert.equal(c.readInto(dst, 15), 0);
  assert.equal(c.readInto(dst, -3), 8, 'a negative offset reads from the start');
  assert.equal(dst.toString(), 'header-a');
});

test('popChain(true) hands out one reusable chain: each pop re-points it, and what it describes is the new chain', () => {
  const { drv, q } = setup(8, { indirectDesc: true });
  const h1 = drv.addChain({ readable: [bytes('one')], writable: [4] });
  const h2 = drv.addChain({ readable: [bytes('second'), bytes('!')], writable: [1, 1] }, { indirect: true });
  const c1 = q.popChain(true)!;
  assert.equal(c1.head, h1);
  assert.equal(c1.readAll(64).toString(), 'one');
  assert.equal(c1.bufferCount, 2);
  assert.equal(c1.write(bytes('abcd')), 4);
  q.pushUsed(c1.head, 4);
  const c2 = q.popChain(true)!;
  assert.equal(c2, c1, 'the same object');
  assert.equal(c2.head, h2);
  assert.equal(c2.bufferCount, 4);
  assert.equal(c2.readableCount, 2);
  assert.equal(c2.readableLen, 7);
  assert.equal(c2.writableLen, 2);
  assert.equal(c2.readAll(64).toString(), 'second!');
  assert.equal(c2.write(bytes('xy')), 2);
  q.pushUsed(c2.head, 2);
  assert.equal(new TextDecoder().decode(drv.written(h1, 4)), 'abcd');
  assert.equal(new TextDecoder().decode(drv.written(h2, 2)), 'xy');
  // an owning chain is not touched by later transient pops
  const h3 = drv.addChain({ readable: [bytes('kept')], writable: [1] });
  drv.addChain({ readable: [bytes('other')], writable: [1] });
  const owned = q.popChain()!;
  q.popChain(true);
  assert.equal(owned.head, h3);
  assert.equal(owned.readAll(64).toString(), 'kept');
});

test('indirect chains, and direct descriptors followed by an indirect one', () => {
  const { drv, q, mem } = setup(8);
  const h = drv.addChain({ readable: [bytes('abc'), bytes('def')], writable: [5] }, { indirect: true });
  const c = q.popChain()!;
  assert.equal(c.head, h);
  assert.equal(c.readAll(4096).toString(), 'abcdef');
  assert.deepEqual(c.writable.map((b) => b.len), [5]);
  c.write(bytes('hello'));
  q.pushUsed(h, 5);
  assert.deepEqual(drv.popUsed(), { id: h, len: 5 });
  assert.equal(new TextDecoder().decode(drv.written(h, 5)), 'hello');

  // desc 0 (readable) -> desc 1 (INDIRECT, table of [readable, writable])
  const a = drv.alloc(4), b = drv.alloc(4), w = drv.alloc(8), table = drv.alloc(32, 16);
  mem.write(a, bytes('AAAA'));
  mem.write(b, bytes('BBBB'));
  drv.setDesc(0, { addr: a, len: 4, flags: N, next: 1 });
  drv.setDesc(1, { addr: table, len: 32, flags: I | W /* WRITE on the table descriptor is ignored */, next: 0 });
  drv.writeDescAt(table, { addr: b, len: 4, flags: N, next: 1 });
  drv.writeDescAt(table + 16, { addr: w, len: 8, flags: W, next: 0 });
  drv.publish(0);
  const c2 = q.popChain()!;
  assert.equal(c2.readAll(4096).toString(), 'AAAABBBB');
  assert.deepEqual(c2.writable, [{ gpa: w, len: 8 }]);
});

test('indices wrap past 65535 (70000 round trips through a size-4 queue)', () => {
  const { drv, q } = setup(4);
  for (let i = 0; i < 70000; i++) {
    const h = drv.addChain({ readable: [1], writable: [2] });
    const c = q.popChain()!;
    assert.equal(c.head, h);
    q.pushUsed(h, i & 1);
    const u = drv.popUsed()!;
    assert.equal(u.id, h);
  }
  assert.equal(q.nextAvailIdx, 70000 & 0xffff);
  assert.equal(drv.usedIdx, 70000 & 0xffff);
});

test('wrap-around with several chains in flight across 65535 -> 0', () => {
  const { drv, q } = setup(8, { startIdx: 65533 });
  const heads = [0, 1, 2, 3, 4, 5].map(() => drv.addChain({ writable: [4] }));
  assert.equal(drv.availIndex, (65533 + 6) & 0xffff);
  const got = [];
  for (let c = q.popChain(); c; c = q.popChain()) got.push(c.head);
  assert.deepEqual(got, heads);
  for (const h of got) q.pushUsed(h, 4);
  assert.equal(q.nextUsedIdx, 3);
  assert.deepEqual(drv.drainUsed().map((u) => u.id), heads);
});

test('needEvent: used_event in [old, new) modulo 2^16', () => {
  assert.equal(needEvent(0, 1, 0), true);
  assert.equal(needEvent(1, 1, 0), false);
  assert.equal(needEvent(5, 10, 0), true);
  assert.equal(needEvent(10, 10, 0), false);
  assert.equal(needEvent(9, 10, 9), true);
  assert.equal(needEvent(8, 10, 9), false);
  assert.equal(needEvent(65535, 2, 65534), true, 'window wraps');
  assert.equal(needEvent(1, 2, 65534), true);
  assert.equal(needEvent(2, 2, 65534), false);
  assert.equal(needEvent(65533, 2, 65534), false);
  assert.equal(needEvent(7, 7, 7), false, 'nothing new');
  // exhaustive against the definition on a small window
  for (let old = 65530; old < 65545; old++) {
    for (let k = 0; k < 6; k++) {
      const o = old & 0xffff, n = (old + k) & 0xffff;
      for (let e = old - 3; e < old + 10; e++) {
        const inWindow = e >= old && e < old + k;
        assert.equal(needEvent(e & 0xffff, n, o), inWindow, `e=${e} old=${o} new=${n}`);
      }
    }
  }
});

test('EVENT_IDX: interrupts only when used_event is passed; avail_event tracks consumption', () => {
  const { drv, q } = setup(8, { eventIdx: true });
  const round = (k: number): boolean => {
    const hs = Array.from({ length: k }, () => drv.addChain({ writable: [1] }));
    for (const h of hs) { assert.equal(q.popChain()!.head, h); q.pushUsed(h, 1); }
    drv.drainUsed();
    return q.needsNotification();
  };
  drv.setUsedEvent(0);
  assert.equal(round(1), true, 'used idx 0 -> 1 passes used_event 0');
  assert.equal(drv.availEvent, 1, 'popChain wrote avail_event');
  drv.setUsedEvent(3);
  assert.equal(round(1), false, 'idx 1 -> 2 does not pass 3');
  assert.equal(round(3), true, 'idx 2 -> 5 passes 3');
  assert.equal(q.needsNotification(), false, 'nothing new since');
  drv.setUsedEvent(4);
  assert.equal(round(2), false, '4 was already passed before');
  drv.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
  drv.setUsedEvent(7);
  assert.equal(round(1), true, 'NO_INTERRUPT is ignored with EVENT_IDX');

  q.disableNotifications();
  drv.addChain({ writable: [1] });
  const c = q.popChain()!;
  assert.equal(drv.availEvent, 8, 'avail_event frozen while disabled');
  q.pushUsed(c.head, 0);
  drv.addChain({ writable: [1] });
  assert.equal(q.enableNotifications(), true, 'a buffer is waiting');
  assert.equal(drv.availEvent, 9);
  q.popChain();
  assert.equal(q.enableNotifications(), false);
  assert.equal(drv.usedFlags, 0, 'used.flags stays 0 with EVENT_IDX');
});

test('without EVENT_IDX: NO_INTERRUPT and NO_NOTIFY flags', () => {
  const { drv, q } = setup(8);
  drv.addChain({ writable: [1] });
  q.pushUsed(q.popChain()!.head, 0);
  assert.equal(q.needsNotification(), true);
  assert.equal(q.needsNotification(), false, 'no new used entries');
  drv.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
  drv.addChain({ writable: [1] });
  q.pushUsed(q.popChain()!.head, 0);
  assert.equal(q.needsNotification(), false);
  q.disableNotifications();
  assert.equal(drv.usedFlags, VIRTQ_USED_F_NO_NOTIFY);
  assert.equal(q.enableNotifications(), false);
  assert.equal(drv.usedFlags, 0);
});

test('guest fields are read once: each descriptor, the ring entry, the avail idx', () => {
  const mem = counting();
  const { drv, q } = setup(8, { mem });
  const heads = [drv.addChain({ readable: [4, 4], writable: [4] }), drv.addChain({ readable: [4] }, { indirect: true })];
  mem.byAddr.clear();
  const c1 = q.popChain()!, c2 = q.popChain()!;
  assert.equal(q.popChain(), undefined);
  assert.deepEqual([c1.head, c2.head], heads);
  assert.equal(mem.byAddr.get(drv.avail + 2), 2, 'avail idx: once for both chains, once to find nothing new');
  assert.equal(mem.byAddr.get(drv.avail + 4), 1);
  assert.equal(mem.byAddr.get(drv.avail + 6), 1);
  for (let i = 0; i < 4; i++) assert.equal(mem.byAddr.get(drv.desc + 16 * i), 1, `descriptor ${i}`);
});

test('hostile: loops and over-long chains stop within queue-size steps', () => {
  for (const size of [1, 8, 256]) {
    const mem = counting();
    const { drv, q } = setup(size, { mem });
    for (let i = 0; i < size; i++) drv.setDesc(i, { addr: 0x100, len: 1, flags: N, next: (i + 1) % size });
    drv.publish(0);
    mem.slices = 0;
    expectCode(() => q.popChain(), 'EVQ_CHAIN_LOOP');
    assert.ok(mem.slices <= size + 3, `${mem.slices} accesses for size ${size}`);
    // sticky
    expectCode(() => q.popChain(), 'EVQ_CHAIN_LOOP');
  }
  {
    const { drv, q } = setup(8);
    drv.setDesc(3, { addr: 0x100, len: 1, flags: N, next: 3 });
    drv.publish(3);
    expectCode(() => q.popChain(), 'EVQ_CHAIN_LOOP');
  }
  {
    // loop inside an indirect table
    const mem = counting();
    const { drv, q } = setup(8, { mem });
    const t = drv.alloc(64, 16);
    for (let i = 0; i < 4; i++) drv.writeDescAt(t + 16 * i, { addr: 0x100, len: 1, flags: N, next: (i + 1) % 4 });
    drv.setDesc(0, { addr: t, len: 64, flags: I, next: 0 });
    drv.publish(0);
    mem.slices = 0;
    expectCode(() => q.popChain(), 'EVQ_CHAIN_LOOP');
    assert.ok(mem.slices <= 8);
  }
  {
    // more buffers than maxChainLen: 3 direct + an indirect table of 6 in a size-8 queue
    const { drv, q } = setup(8);
    const t = drv.alloc(96, 16);
    for (let i = 0; i < 6; i++) drv.writeDescAt(t + 16 * i, { addr: 0x100, len: 1, flags: i < 5 ? N : 0, next: i + 1 });
    for (let i = 0; i < 3; i++) drv.setDesc(i, { addr: 0x100, len: 1, flags: N, next: i + 1 });
    drv.setDesc(3, { addr: t, len: 96, flags: I, next: 0 });
    drv.publish(0);
    expectCode(() => q.popChain(), 'EVQ_CHAIN_LEN');
  }
});

test('hostile: descriptor addresses and lengths outside guest RAM or overflowing', () => {
  const cases: { addr: bigint | number; len: number }[] = [
    { addr: MEM - 4, len: 5 },
    { addr: MEM, len: 1 },
    { addr: 0xffff_ffff_ffff_fff0n, len: 0x20 },
    { addr: 0xffff_ffff_ffff_ffffn, len: 1 },
    { addr: 2 ** 53 - 1, len: 1 },
    { addr: 2 ** 53, len: 0 },
    { addr: 0x1_0000_0000, len: 16 },
    { addr: 0, len: 0xffff_ffff },
  ];
  for (const { addr, len } of cases) {
    for (const flags of [0, W]) {
      const { drv, q } = setup(8);
      drv.setDesc(0, { addr: 0x100, len: 4, flags: N, next: 1 });
      drv.setDesc(1, { addr, len, flags, next: 0 });
      drv.publish(0);
      expectCode(() => q.popChain(), 'EVQ_DESC_RANGE');
    }
  }
  // a buffer straddling a hole between two RAM regions
  const mem = new GuestMemory([{ gpa: 0, bytes: new Uint8Array(0x8000) }, { gpa: 0x8000, bytes: new Uint8Array(0x8000) }]);
  const { drv, q } = setup(8, { mem });
  drv.setDesc(0, { addr: 0x7ff0, len: 0x20, flags: 0, next: 0 });
  drv.publish(0);
  expectCode(() => q.popChain(), 'EVQ_DESC_RANGE');
});

test('hostile: malformed indirect tables', () => {
  const t0 = 0x6000;
  const cases: { code: VirtqueueErrorCode; desc: { addr: number | bigint; len: number; flags: number }; table?: (t: number, drv: MockSplitQueue) => void; indirectDesc?: boolean }[] = [
    { code: 'EVQ_INDIRECT_LEN', desc: { addr: t0, len: 0, flags: I } },
    { code: 'EVQ_INDIRECT_LEN', desc: { addr: t0, len: 17, flags: I } },
    { code: 'EVQ_INDIRECT_LEN', desc: { addr: t0, len: 8, flags: I } },
    { code: 'EVQ_INDIRECT_LEN', desc: { addr: t0, len: 16 * 9, flags: I } },
    { code: 'EVQ_INDIRECT_NEXT', desc: { addr: t0, len: 16, flags: I | N } },
    { code: 'EVQ_INDIRECT_RANGE', desc: { addr: MEM - 16, len: 32, flags: I } },
    { code: 'EVQ_INDIRECT_RANGE', desc: { addr: 0xffff_ffff_ffff_fff0n, len: 32, flags: I } },
    { code: 'EVQ_INDIRECT_FEATURE', desc: { addr: t0, len: 16, flags: I }, indirectDesc: false },
    {
      code: 'EVQ_INDIRECT_NESTED', desc: { addr: t0, len: 32, flags: I },
      table: (t, drv) => {
        drv.writeDescAt(t, { addr: 0x100, len: 1, flags: N, next: 1 });
        drv.writeDescAt(t + 16, { addr: t, len: 32, flags: I, next: 0 });
      },
    },
    {
      code: 'EVQ_DESC_INDEX', desc: { addr: t0, len: 32, flags: I },
      table: (t, drv) => drv.writeDescAt(t, { addr: 0x100, len: 1, flags: N, next: 2 }),
    },
    {
      code: 'EVQ_DESC_RANGE', desc: { addr: t0, len: 16, flags: I },
      table: (t, drv) => drv.writeDescAt(t, { addr: MEM, len: 1, flags: 0, next: 0 }),
    },
  ];
  for (const c of cases) {
    const { drv, q } = setup(8, { indirectDesc: c.indirectDesc ?? true });
    if (c.table) c.table(t0, drv);
    drv.setDesc(0, { ...c.desc, next: 0 });
    drv.publish(0);
    expectCode(() => q.popChain(), c.code);
  }
});

test('hostile: avail idx too far ahead, bad head or next index, readable after writable', () => {
  {
    const { drv, q } = setup(8);
    drv.setAvailIdx(9);
    expectCode(() => q.popChain(), 'EVQ_AVAIL_IDX');
  }
  {
    const { drv, q } = setup(8);
    drv.setAvailIdx(0xffff); // "behind": 65535 ahead
    expectCode(() => q.popChain(), 'EVQ_AVAIL_IDX');
  }
  {
    const { drv, q } = setup(8);
    for (let i = 0; i < 8; i++) drv.addChain({ readable: [1] });
    for (let i = 0; i < 8; i++) assert.ok(q.popChain(), 'exactly size ahead is fine');
  }
  {
    const { drv, q } = setup(8);
    drv.setAvailRing(0, 8);
    drv.setAvailIdx(1);
    expectCode(() => q.popChain(), 'EVQ_DESC_INDEX');
  }
  {
    const { drv, q } = setup(8);
    drv.setDesc(0, { addr: 0x100, len: 1, flags: N, next: 0xffff });
    drv.publish(0);
    expectCode(() => q.popChain(), 'EVQ_DESC_INDEX');
  }
  {
    const { drv, q } = setup(8);
    drv.setDesc(0, { addr: 0x100, len: 1, flags: N | W, next: 1 });
    drv.setDesc(1, { addr: 0x100, len: 1, flags: 0, next: 0 });
    drv.publish(0);
    expectCode(() => q.popChain(), 'EVQ_DESC_ORDER');
  }
});

test('validate: size, alignment and ring placement with 64-bit arithmetic', () => {
  const mem = GuestMemory.ofSize(MEM);
  const make = (cfg: { size?: number; desc?: bigint; avail?: bigint; used?: bigint; ready?: boolean }) => {
    const q = new Virtqueue(mem, 256);
    q.size = cfg.size ?? 8;
    q.descTable = cfg.desc ?? 0x1000n;
    q.availRing = cfg.avail ?? 0x2000n;
    q.usedRing = cfg.used ?? 0x3000n;
    q.ready = cfg.ready ?? true;
    return q;
  };
  make({}).validate();
  expectCode(() => make({ ready: false }).validate(), 'EVQ_NOT_READY');
  for (const size of [0, 3, 12, 512, 65535]) expectCode(() => make({ size }).validate(), 'EVQ_SIZE');
  expectCode(() => make({ desc: 0x1008n }).validate(), 'EVQ_ALIGN');
  expectCode(() => make({ avail: 0x2001n }).validate(), 'EVQ_ALIGN');
  expectCode(() => make({ used: 0x3002n }).validate(), 'EVQ_ALIGN');
  expectCode(() => make({ desc: BigInt(MEM - 16) }).validate(), 'EVQ_RING_RANGE');
  expectCode(() => make({ used: BigInt(MEM - 8 * 8) }).validate(), 'EVQ_RING_RANGE');
  expectCode(() => make({ desc: 0xffff_ffff_ffff_fff0n }).validate(), 'EVQ_RING_RANGE');
  expectCode(() => make({ avail: (1n << 64n) - 2n }).validate(), 'EVQ_RING_RANGE');
  expectCode(() => make({ used: 1n << 53n }).validate(), 'EVQ_RING_RANGE');
  expectCode(() => make({ used: BigInt(MEM) + (1n << 32n) }).validate(), 'EVQ_RING_RANGE');
  // a valid queue changed afterwards must be validated again
  const q = make({});
  q.validate();
  q.size = 16;
  expectCode(() => q.popChain(), 'EVQ_NOT_READY');
});

test('pushUsed refuses a bad id and more used entries than chains popped', () => {
  const { drv, q } = setup(8);
  expectCode(() => q.pushUsed(0, 0), 'EVQ_USED');
  drv.addChain({ writable: [1] });
  const c = q.popChain()!;
  expectCode(() => q.pushUsed(8, 0), 'EVQ_USED');
  expectCode(() => q.pushUsed(c.head, -1), 'EVQ_USED');
  expectCode(() => q.pushUsed(c.head, 2 ** 32), 'EVQ_USED');
  q.pushUsed(c.head, 1);
  expectCode(() => q.pushUsed(c.head, 1), 'EVQ_USED');
});

test('save/restore: a queue with chains in flight continues after a JSON round trip', () => {
  const { drv, q, mem } = setup(8, { eventIdx: true });
  const h1 = drv.addChain({ readable: [bytes('one')] });
  const h2 = drv.addChain({ readable: [bytes('two')] });
  drv.addChain({ readable: [bytes('three')] });
  q.popChain();
  q.pushUsed(h1, 0);
  q.needsNotification();
  assert.equal(q.popChain()!.head, h2);
  const st = JSON.parse(JSON.stringify(q.getState()));
  const r = Virtqueue.fromState(mem, st);
  assert.deepEqual(r.getState(), q.getState());
  assert.equal(r.inFlight, 1);
  r.pushUsed(h2, 0);
  assert.equal(r.popChain()!.readAll(4096).toString(), 'three');
  assert.equal(r.popChain(), undefined);
  assert.deepEqual(drv.drainUsed().map((u) => u.id), [h1, h2]);
  // a never-configured queue round-trips too
  const fresh = new Virtqueue(mem, 64, { maxChainLen: 200 });
  fresh.descTable = 0xdead_beef_0000_0000n;
  assert.deepEqual(Virtqueue.fromState(mem, fresh.getState()).getState(), fresh.getState());
});

test('save/restore: untrusted state is rejected with EVQ_BADSTATE or the validate() error', () => {
  const { q, mem } = setup(8);
  const good = q.getState();
  const bad: [Record<string, unknown> | unknown, VirtqueueErrorCode][] = [
    [null, 'EVQ_BADSTATE'],
    ['state', 'EVQ_BADSTATE'],
    [{ ...good, v: 2 }, 'EVQ_BADSTATE'],
    [{ ...good, maxSize: 12 }, 'EVQ_BADSTATE'],
    [{ ...good, maxSize: 65536 }, 'EVQ_BADSTATE'],
    [{ ...good, size: 1.5 }, 'EVQ_BADSTATE'],
    [{ ...good, size: 16 }, 'EVQ_SIZE'],
    [{ ...good, size: 6 }, 'EVQ_SIZE'],
    [{ ...good, nextAvail: 70000 }, 'EVQ_BADSTATE'],
    [{ ...good, nextUsed: -1 }, 'EVQ_BADSTATE'],
    [{ ...good, nextAvail: 9, nextUsed: 0 }, 'EVQ_BADSTATE'],
    [{ ...good, signalledUsed: '0' }, 'EVQ_BADSTATE'],
    [{ ...good, descTable: '0x1_0000' }, 'EVQ_BADSTATE'],
    [{ ...good, descTable: 4096 }, 'EVQ_BADSTATE'],
    [{ ...good, descTable: '0x10000000000000000' }, 'EVQ_BADSTATE'],
    [{ ...good, descTable: '0xffffffffffffff00' }, 'EVQ_RING_RANGE'],
    [{ ...good, usedRing: '0x3002' }, 'EVQ_ALIGN'],
    [{ ...good, ready: 1 }, 'EVQ_BADSTATE'],
    [{ ...good, eventIdx: 'yes' }, 'EVQ_BADSTATE'],
    [{ ...good, maxChainLen: 0 }, 'EVQ_BADSTATE'],
    [{ ...good, maxChainLen: 1e9 }, 'EVQ_BADSTATE'],
    [{ ...good, ready: false, nextAvail: 3 }, 'EVQ_BADSTATE'],
  ];
  for (const [st, code] of bad) expectCode(() => Virtqueue.fromState(mem, st), code);
});

test('chain helpers never throw on odd offsets and limits', () => {
  const { drv, q } = setup(8);
  drv.addChain({ readable: [bytes('abc')], writable: [2] });
  const c = q.popChain()!;
  assert.equal(c.readAt(-5, 2).toString(), 'ab');
  assert.equal(c.readAt(NaN, 2).toString(), 'ab');
  assert.equal(c.readAt(0, NaN).length, 0);
  assert.equal(c.readAll(Infinity).toString(), 'abc');
  assert.equal(c.readAll(-1).length, 0);
  assert.equal(c.write(bytes('xyz'), 5), 0);
  assert.equal(c.write(bytes('xyz'), -1), 2);
});

test('unpopChains gives back the last chains popped: they are walked again, in order; no more than are in flight', () => {
  const { drv, q } = setup(8, { startIdx: 0xfffe });
  const heads = [0, 1, 2].map(() => drv.addChain({ writable: [16, 32] }));
  const a = q.popChain()!, b = q.popChain()!, c = q.popChain()!;
  assert.deepEqual([a.head, b.head, c.head], heads);
  assert.equal(q.unpopChains(2), false);
  assert.equal(q.inFlight, 1);
  assert.deepEqual([q.popChain()!.head, q.popChain(true)!.head], [heads[1], heads[2]]);
  assert.equal(q.popChain(), undefined);
  expectCode(() => q.unpopChains(4), 'EVQ_USED');
  expectCode(() => q.unpopChains(-1), 'EVQ_USED');
  q.unpopChains(0);
  assert.equal(q.inFlight, 3);
});

test('unpopChains with EVENT_IDX asks for a notify past the buffers already published, and says when more came meanwhile', () => {
  const { drv, q } = setup(8, { eventIdx: true });
  drv.addChain({ writable: [16] });
  drv.addChain({ writable: [16] });
  q.popChain(); q.popChain();
  assert.equal(q.popChain(), undefined);
  assert.equal(q.unpopChains(2), false);
  assert.equal(drv.availEvent, 2, 'avail_event: the avail index as last read, not the rewound one');
  q.popChain(); q.popChain();
  drv.addChain({ writable: [16] }); // published after the device last read avail.idx
  assert.equal(q.unpopChains(2), true);
});

test('pushUsed without publishing: the driver sees the batch at once with publishUsed', () => {
  const { drv, q } = setup(8);
  const heads = [0, 1, 2].map(() => drv.addChain({ writable: [16] }));
  for (const h of heads) assert.equal(q.popChain()!.head, h);
  q.pushUsed(heads[0]!, 16, false);
  q.pushUsed(heads[1]!, 8, false);
  assert.equal(drv.usedIdx, 0, 'nothing published yet');
  q.publishUsed();
  assert.deepEqual(drv.drainUsed(), [{ id: heads[0], len: 16 }, { id: heads[1], len: 8 }]);
  q.pushUsed(heads[2]!, 4);
  assert.equal(drv.usedIdx, 3);
});

test('copyWritable appends a chain\'s writable (gpa, len, host) triples only', () => {
  const { drv, q } = setup(8);
  drv.addChain({ readable: [8], writable: [16, 32] });
  const c = q.popChain()!;
  const dst = new Float64Array(12).fill(-1);
  assert.equal(c.copyWritable(dst, 1), 3);
  assert.deepEqual([...dst.subarray(0, 3)], [-1, -1, -1]);
  assert.deepEqual([dst[4], dst[7]], [16, 32]);
  assert.deepEqual([dst[3], dst[6]], c.writable.map((b) => b.gpa));
});
