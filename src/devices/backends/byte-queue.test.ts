import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ByteQueue } from './byte-queue.js';

const bytes = (s: string) => Buffer.from(s, 'latin1');

test('ByteQueue: bytes come out in order across chunks; one-byte pushes share a chunk', () => {
  const q = new ByteQueue(64, 8);
  for (const ch of 'hello, world') q.push(bytes(ch));
  assert.equal(q.length, 12);
  assert.equal(q.held, 16, 'two 8-byte chunks, not twelve buffers');
  const a = q.take()!;
  assert.equal(a.toString('latin1'), 'hello, w');
  const b = q.take()!;
  assert.equal(b.toString('latin1'), 'orld');
  assert.equal(q.take(), undefined);
  assert.equal(q.length, 0);
  assert.equal(q.held, 16, 'lent chunks still count');
  q.release(a); q.release(b);
  assert.equal(q.held, 0);
});

test('ByteQueue: the cap counts whole chunks, queued or lent; the excess is dropped and counted', () => {
  const q = new ByteQueue(16, 8);
  assert.equal(q.push(bytes('x'.repeat(20))), 16);
  assert.equal(q.dropped, 4);
  const a = q.take()!; // lent: still held
  assert.equal(q.push(bytes('y')), 0);
  assert.equal(q.dropped, 5);
  q.release(a);
  assert.equal(q.push(bytes('yz')), 2);
  assert.equal(q.take()!.toString('latin1'), 'x'.repeat(8));
  assert.equal(q.take()!.toString('latin1'), 'yz');
  assert.throws(() => new ByteQueue(4, 8), RangeError);
});

test('ByteQueue: trimTo keeps the newest bytes, dropping and counting the oldest', () => {
  const q = new ByteQueue(64, 8);
  q.push(bytes('0123456789abcdefghij'));
  q.trimTo(5);
  assert.equal(q.length, 5);
  assert.equal(q.dropped, 15);
  assert.equal(q.held, 16, 'the emptied chunk is let go');
  assert.equal(q.take()!.toString('latin1'), 'f');
  assert.equal(q.take()!.toString('latin1'), 'ghij');
  q.push(bytes('k'));
  q.clear();
  assert.equal(q.length, 0);
  assert.equal(q.dropped, 16);
  assert.equal(q.take(), undefined);
});

test('ByteQueue: pushLatest keeps the newest bytes within the cap, however the writes fall', () => {
  const q = new ByteQueue(10 + 2 * 4, 4);
  for (const ch of 'abcdefghijklmnopqrstuvwxyz') q.pushLatest(bytes(ch), 10);
  assert.equal(q.length, 10);
  assert.equal(q.dropped, 16);
  q.pushLatest(bytes('0123456789ABCDEF'), 10); // longer than what is kept
  assert.equal(q.dropped, 32);
  let out = '';
  for (let b = q.take(); b; b = q.take()) { out += b.toString('latin1'); q.release(b); }
  assert.equal(out, '6789ABCDEF');
});
