import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readSync, writeSync } from 'node:fs';
import { EAGAIN, errno, libc } from '../../host/libc.js';
import { IoVecs } from '../../memory/iovec.js';
import { StreamFrameBackend } from './stream-backend.js';

const AF_UNIX = 1, SOCK_STREAM = 1, SOCK_NONBLOCK = 0o4000, SOCK_CLOEXEC = 0o2000000;
const EPIPE = 32, EPROTO = 71;

/** A backend over one end of a stream socketpair (non-blocking), the other end (blocking) playing passt. */
function pair(): { b: StreamFrameBackend; peer: number; close: () => void } {
  const sv = Buffer.alloc(8);
  assert.ok(libc.socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) >= 0, `socketpair: errno ${errno()}`);
  const b = new StreamFrameBackend(sv.readInt32LE(0), true);
  const peer = sv.readInt32LE(4);
  return { b, peer, close: () => { b.close(); libc.close(peer); } };
}

/** Guest buffers: pieces of the given sizes in one Buffer, as an IoVecs (host addresses). */
function guestBufs(...sizes: number[]): { mem: Buffer; iov: IoVecs; bytes: () => Buffer } {
  const total = sizes.reduce((a, b) => a + b, 0);
  const mem = Buffer.alloc(total + 16 * sizes.length);
  const base = Number(libc.bufferAddress(mem));
  const triples: number[] = [];
  let off = 0;
  for (const s of sizes) { triples.push(0, s, base + off); off += s + 16; } // gaps: pieces do not join
  const iov = new IoVecs(8);
  iov.fill(Float64Array.from(triples), 0, sizes.length, 0, total);
  const bytes = () => {
    const parts: Buffer[] = [];
    let o = 0;
    for (const s of sizes) { parts.push(mem.subarray(o, o + s)); o += s + 16; }
    return Buffer.concat(parts);
  };
  return { mem, iov, bytes };
}

const framed = (f: Buffer): Buffer => { const h = Buffer.alloc(4); h.writeUInt32BE(f.length); return Buffer.concat([h, f]); };
const frame = (n: number, seed: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (i * seed + 7) & 0xff));

test('a frame split at every byte boundary of its length word and body arrives whole', () => {
  const { b, peer, close } = pair();
  try {
    const f = frame(100, 3), wire = framed(f);
    for (const cut of [1, 2, 3, 4, 5, 60]) {
      const g = guestBufs(40, 40, 40);
      writeSync(peer, wire.subarray(0, cut));
      assert.equal(b.readv(g.iov), -EAGAIN, `after ${cut} bytes`);
      writeSync(peer, wire.subarray(cut));
      assert.equal(b.readv(g.iov), 100);
      assert.deepEqual(g.bytes().subarray(0, 100), f);
      assert.equal(b.readv(g.iov), -EAGAIN);
    }
  } finally { close(); }
});

test('several frames in one write: one per call, nothing read past the frame asked for', () => {
  const { b, peer, close } = pair();
  try {
    const fs = [frame(60, 1), frame(1514, 5), frame(42, 9)];
    writeSync(peer, Buffer.concat(fs.map(framed)));
    for (const f of fs) {
      const g = guestBufs(1000, 1000);
      assert.equal(b.readv(g.iov), f.length);
      assert.deepEqual(g.bytes().subarray(0, f.length), f);
    }
    assert.equal(b.readv(guestBufs(100).iov), -EAGAIN);
  } finally { close(); }
});

test('a frame larger than the guest\'s buffers is consumed and reported by its length; the next one is fine', () => {
  const { b, peer, close } = pair();
  try {
    writeSync(peer, Buffer.concat([framed(frame(3000, 2)), framed(frame(50, 4))]));
    const g = guestBufs(1000);
    assert.equal(b.readv(g.iov), 3000);
    assert.equal(b.readv(g.iov), 50);
    assert.deepEqual(g.bytes().subarray(0, 50), frame(50, 4));
  } finally { close(); }
});

for (const [what, len] of [['zero', 0], ['over 64 KiB + header', 70_000], ['2^32 - 1', 0xffffffff]] as const) {
  test(`a hostile length (${what}) drops the connection: one error, then quiet; the peer sees it closed`, () => {
    const { b, peer, close } = pair();
    try {
      const h = Buffer.alloc(4); h.writeUInt32BE(len);
      writeSync(peer, Buffer.concat([h, Buffer.alloc(64)]));
      const g = guestBufs(2000);
      assert.equal(b.readv(g.iov), -EPROTO);
      assert.match(b.broken ?? '', /frame length/);
      assert.equal(b.readv(g.iov), -EAGAIN);
      assert.equal(b.writev(g.iov), -EAGAIN);
      assert.equal(readSync(peer, Buffer.alloc(16)), 0, 'EOF at the peer');
    } finally { close(); }
  });
}

test('the peer closing is one error (EPIPE), then quiet', () => {
  const { b, peer } = pair();
  writeSync(peer, Buffer.from([0, 0]));
  libc.close(peer);
  const g = guestBufs(100);
  assert.equal(b.readv(g.iov), -EPIPE);
  assert.equal(b.readv(g.iov), -EAGAIN);
  b.close();
});

test('tx: each frame goes out behind its length, from several guest buffers', () => {
  const { b, peer, close } = pair();
  try {
    const g = guestBufs(10, 20, 30);
    const want = frame(60, 11);
    // the pieces are 10, 20 and 30 bytes at offsets 0, 26 and 62 (16-byte gaps)
    g.mem.set(want.subarray(0, 10), 0); g.mem.set(want.subarray(10, 30), 26); g.mem.set(want.subarray(30, 60), 62);
    assert.equal(b.writev(g.iov), 60);
    assert.equal(b.writev(g.iov), 60);
    const got = Buffer.alloc(200);
    let n = 0;
    while (n < 128) n += readSync(peer, got, n, 200 - n, null);
    assert.deepEqual(got.subarray(0, 128), Buffer.concat([framed(want), framed(want)]));
  } finally { close(); }
});

test('tx into a full socket: a frame cut short is finished before the next; the stream stays framed', () => {
  const { b, peer, close } = pair();
  try {
    const sizes = [60_000];
    const sent: Buffer[] = [];
    let dropped = 0;
    for (let i = 0; i < 40; i++) {
      const g = guestBufs(...sizes);
      const f = frame(60_000, i + 1);
      f.copy(g.mem);
      const r = b.writev(g.iov);
      if (r === 60_000) sent.push(f); else { assert.equal(r, -EAGAIN); dropped++; }
    }
    assert.ok(dropped > 0, 'the socket filled up');
    // drain the peer, then one more frame sends what was left of the cut one
    const stream: Buffer[] = [];
    const chunk = Buffer.alloc(1 << 20);
    const drain = () => {
      for (;;) {
        const n = libc.recv(peer, chunk, chunk.length, 0x40 /* MSG_DONTWAIT */);
        if (n <= 0) break;
        stream.push(Buffer.from(chunk.subarray(0, n)));
      }
    };
    drain();
    const last = frame(100, 99), g = guestBufs(100);
    last.copy(g.mem);
    assert.equal(b.writev(g.iov), 100);
    sent.push(last);
    drain();
    const all = Buffer.concat(stream);
    const got: Buffer[] = [];
    for (let o = 0; o < all.length;) { const l = all.readUInt32BE(o); got.push(all.subarray(o + 4, o + 4 + l)); o += 4 + l; }
    assert.equal(got.length, sent.length);
    got.forEach((f, i) => assert.ok(f.equals(sent[i]!), `frame ${i} intact`));
  } finally { close(); }
});

test('EAGAIN is what readv says with nothing there', () => {
  const { b, close } = pair();
  try { assert.equal(b.readv(guestBufs(64).iov), -EAGAIN); } finally { close(); }
});
