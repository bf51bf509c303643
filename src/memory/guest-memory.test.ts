import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory, PAGE_SIZE } from './guest-memory.js';
import { GuestMemoryError } from '../errors.js';
test('accessors alternate between regions correctly; copyOut and resolve stay inside one region', () => {
  const a = new Uint8Array(0x1000), b = new Uint8Array(0x1000);
  const m = new GuestMemory([{ gpa: 0x10000, bytes: b, hostAddr: 0x7f00_0000_0000n }, { gpa: 0, bytes: a }]);
  m.writeU32(0xffc, 0x11223344);
  m.writeU16(0x10002, 0xbeef);
  assert.equal(m.readU32(0xffc), 0x11223344);
  assert.equal(m.readU16(0x10002), 0xbeef);
  assert.equal(a[0xffc], 0x44);
  assert.equal(b[2], 0xef);
  const dst = new Uint8Array(6);
  m.copyOut(0x10000, dst, 2, 4);
  assert.deepEqual([...dst], [0, 0, 0, 0, 0xef, 0xbe]);
  assert.throws(() => m.copyOut(0xffe, dst, 0, 4), GuestMemoryError, 'straddles the end of a region');
  assert.throws(() => m.readU32(0x1000), GuestMemoryError, 'in the hole');
  assert.equal(m.resolve(0x10010, 16), 0x7f00_0000_0010);
  assert.equal(m.resolve(0x10ff0, 32), -1, 'past the region');
  assert.equal(m.resolve(0x10, 16), 0, 'a region without a host mapping');
});

test('resolveTrusted answers as resolve does, whichever region was found last', () => {
  const mem = new GuestMemory([
    { gpa: 0, bytes: new Uint8Array(0x10000), hostAddr: 0x7f00_0000_0000n },
    { gpa: 0x100000, bytes: new Uint8Array(0x8000) }, // no native mapping: 0
    { gpa: 0x200000, bytes: new Uint8Array(0x1000), hostAddr: 0x7f10_0000_0000n },
  ]);
  let seed = 7;
  const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) >>> 0; return seed % n; };
  const edges = [0, 1, 0xffff, 0x10000, 0xfffff, 0x100000, 0x107fff, 0x108000, 0x200000, 0x200fff, 0x201000, 2 ** 53 - 1, 2 ** 52];
  for (let i = 0; i < 20000; i++) {
    const gpa = i < 200 ? edges[i % edges.length]! + rnd(3) : rnd(3) === 0 ? rnd(0x300000) : edges[rnd(edges.length)]!;
    const len = [0, 1, 16, 4096, 0x8000, 0xffffffff][rnd(6)]!;
    mem.resolve(edges[rnd(edges.length)]!, 1); // move the region found last around
    const want = mem.resolve(gpa, len);
    mem.resolve(edges[rnd(edges.length)]!, 1);
    assert.equal(mem.resolveTrusted(gpa, len), want, `gpa 0x${gpa.toString(16)} len ${len}`);
  }
  assert.equal(mem.resolveTrusted(0x10, 16), 0x7f00_0000_0010);
  assert.equal(mem.resolveTrusted(0x100010, 16), 0, 'inside RAM without a native mapping');
  assert.equal(mem.resolveTrusted(0xfff0, 32), -1, 'past the end of a region');
});

test('the dirty map: writes mark their pages (by RAM offset, across regions), reads do not', () => {
  const dirty = new Uint8Array(8);
  const a = new Uint8Array(4 * PAGE_SIZE), b = new Uint8Array(4 * PAGE_SIZE);
  const m = new GuestMemory([{ gpa: 0, bytes: a, ramOffset: 0 }, { gpa: 0x100000, bytes: b, ramOffset: 4 * PAGE_SIZE }], dirty);
  m.read(0, 100); m.readU32(PAGE_SIZE); m.copyOut(0x100000, new Uint8Array(8), 0, 8);
  assert.deepEqual([...dirty], [0, 0, 0, 0, 0, 0, 0, 0]);
  m.writeU16(PAGE_SIZE - 1, 1); // straddles pages 0 and 1
  m.copyIn(0x100000 + 2 * PAGE_SIZE, new Uint8Array(8), 0, 8);
  m.markDirty(0x100000 + 3 * PAGE_SIZE, 1);
  assert.deepEqual([...dirty], [1, 1, 0, 0, 0, 0, 1, 1]);
});

test('markDirtyPieces marks the pieces [from, to) of (gpa, len, host) triples, and only those', () => {
  const dirty = new Uint8Array(8);
  const m = new GuestMemory([{ gpa: 0, bytes: new Uint8Array(8 * PAGE_SIZE), ramOffset: 0 }], dirty);
  const pieces = new Float64Array([0, 16, 0, PAGE_SIZE + 8, PAGE_SIZE, 0, 4 * PAGE_SIZE, 512, 0, 6 * PAGE_SIZE, 1, 0]);
  m.markDirtyPieces(pieces, 1, 3);
  assert.deepEqual([...dirty], [0, 1, 1, 0, 1, 0, 0, 0]);
  GuestMemory.ofSize(PAGE_SIZE).markDirtyPieces(pieces, 0, 1); // no dirty map: nothing to do
});
