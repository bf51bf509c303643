import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IoVecs } from './iovec.js';

/** Packed (gpa, len, host) triples, as a DescriptorChain keeps its buffers. */
const packed = (...b: [number, number, number][]) => Float64Array.from(b.flat());

test('pieces that continue each other on the host join; others do not', () => {
  const v = new IoVecs(4);
  assert.ok(v.fill(packed([0x1000, 4096, 0x7f00_0000_1000], [0x9000, 4096, 0x7f00_0000_2000], [0x2000, 512, 0x7f00_0001_0000]), 0, 3, 0, 8704));
  assert.equal(v.count, 2);
  assert.equal(v.bytes, 8704);
  assert.deepEqual(v.list(), [{ addr: 0x7f00_0000_1000, len: 8192 }, { addr: 0x7f00_0001_0000, len: 512 }]);
  // the native layout: u64 base, u64 len
  assert.equal(v.buf.readBigUInt64LE(0), 0x7f00_0000_1000n);
  assert.equal(v.buf.readBigUInt64LE(8), 8192n);
  assert.equal(v.buf.readBigUInt64LE(16), 0x7f00_0001_0000n);
});

test('fill takes bytes [start, start+len) of the buffers given, and refuses a piece with no native mapping', () => {
  const v = new IoVecs(1);
  const bufs = packed([0, 16, 0x5000], [0x100, 1000, 0x6000], [0x900, 3000, 0x8000], [0x2000, 1, 0x9000]);
  assert.ok(v.fill(bufs, 0, 4, 16, 4000)); // skips the 16-byte header, leaves the status byte out
  assert.deepEqual(v.list(), [{ addr: 0x6000, len: 1000 }, { addr: 0x8000, len: 3000 }]);
  assert.ok(v.fill(bufs, 1, 3, 500, 600)); // from inside the first buffer, into the second
  assert.deepEqual(v.list(), [{ addr: 0x6000 + 500, len: 500 }, { addr: 0x8000, len: 100 }]);
  assert.equal(v.bytes, 600);
  assert.equal(v.fill(packed([0, 512, 0x1000], [0x1000, 512, 0]), 0, 2, 0, 1024), false);
  // grows for long chains
  const many = packed(...Array.from({ length: 300 }, (_, i) => [i * 8192, 4096, 0x1000_0000 + i * 8192] as [number, number, number]));
  assert.ok(v.fill(many, 0, 300, 0, 300 * 4096));
  assert.equal(v.count, 300);
  assert.ok(v.buf.length >= 300 * 16);
});

test('advance after a short transfer drops whole entries and starts the next one later', () => {
  const v = new IoVecs();
  v.fill(packed([0, 1000, 0x10000], [0, 2000, 0x20000], [0, 3000, 0x30000]), 0, 3, 0, 6000);
  let first = v.advance(0, 1500); // all of the first, 500 of the second
  assert.equal(first, 1);
  assert.deepEqual(v.list(first), [{ addr: 0x20000 + 500, len: 1500 }, { addr: 0x30000, len: 3000 }]);
  first = v.advance(first, 1500); // exactly the rest of the second
  assert.equal(first, 2);
  first = v.advance(first, 2999);
  assert.deepEqual(v.list(first), [{ addr: 0x30000 + 2999, len: 1 }]);
  assert.equal(v.advance(first, 1), 3);
});
