import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IoVecs } from './iovec.js';

test('pieces that continue each other on the host join; others do not', () => {
  const v = new IoVecs(4);
  v.reset(4);
  v.push(0x7f00_0000_1000, 4096);
  v.push(0x7f00_0000_2000, 4096); // continues the first
  v.push(0x7f00_0001_0000, 512);
  assert.equal(v.count, 2);
  assert.equal(v.bytes, 8704);
  assert.deepEqual(v.list(), [{ addr: 0x7f00_0000_1000, len: 8192 }, { addr: 0x7f00_0001_0000, len: 512 }]);
  // the native layout: u64 base, u64 len
  assert.equal(v.buf.readBigUInt64LE(0), 0x7f00_0000_1000n);
  assert.equal(v.buf.readBigUInt64LE(8), 8192n);
  assert.equal(v.buf.readBigUInt64LE(16), 0x7f00_0001_0000n);
});

test('reset grows the buffer and empties it', () => {
  const v = new IoVecs(1);
  v.reset(300);
  for (let i = 0; i < 300; i++) v.push(0x1000_0000 + i * 8192, 4096);
  assert.equal(v.count, 300);
  assert.ok(v.buf.length >= 300 * 16);
  v.reset(2);
  assert.equal(v.count, 0);
  assert.equal(v.bytes, 0);
});

test('advance after a short transfer drops whole entries and starts the next one later', () => {
  const v = new IoVecs();
  v.reset(3);
  v.push(0x10000, 1000);
  v.push(0x20000, 2000);
  v.push(0x30000, 3000);
  let first = v.advance(0, 1500); // all of the first, 500 of the second
  assert.equal(first, 1);
  assert.deepEqual(v.list(first), [{ addr: 0x20000 + 500, len: 1500 }, { addr: 0x30000, len: 3000 }]);
  first = v.advance(first, 1500); // exactly the rest of the second
  assert.equal(first, 2);
  first = v.advance(first, 2999);
  assert.deepEqual(v.list(first), [{ addr: 0x30000 + 2999, len: 1 }]);
  assert.equal(v.advance(first, 1), 3);
});
