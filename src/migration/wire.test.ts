import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Socket, createServer, createConnection } from 'node:net';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Channel, F, encodeFrame, jsonFrame } from './wire.js';
import { parseMigrationAddress } from './transport.js';

/** A channel fed `bytes` as if they came from the peer. */
function fed(bytes: Buffer): Channel {
  const s = new Socket();
  const ch = new Channel(s, 'the peer');
  s.emit('data', bytes);
  return ch;
}

test('frames in: split anywhere, several at once', async () => {
  const s = new Socket();
  const ch = new Channel(s, 'the peer');
  const all = Buffer.concat([jsonFrame(F.HELLO, { a: 1 }), encodeFrame(F.PAGES, Buffer.alloc(5000, 1))]);
  for (let i = 0; i < all.length; i += 7) s.emit('data', all.subarray(i, i + 7));
  assert.deepEqual((await ch.recvJson([F.HELLO], 1000)).value, { a: 1 });
  assert.equal((await ch.recv([F.PAGES], 1000)).payload.length, 5000);
});

test('a bad frame ends the channel with one line naming what was wrong', async () => {
  const good = jsonFrame(F.HELLO, { a: 1 });
  const cases: [string, Buffer, RegExp][] = [
    ['bad magic', Buffer.concat([Buffer.from('XXXX'), good.subarray(4)]), /without the stream's magic/],
    ['reserved bits', (() => { const b = Buffer.from(good); b[5] = 1; return b; })(), /reserved bits/],
    ['unexpected type', jsonFrame(F.STATE, {}), /sent STATE where HELLO was expected/],
    ['too long', (() => { const b = Buffer.from(good); b.writeUInt32LE(2 << 20, 8); return b; })(), /HELLO of 2097152 bytes \(at most 1048576\)/],
    ['damaged payload', (() => { const b = Buffer.from(good); b[b.length - 2]! ^= 1; return b; })(), /checksum does not match/],
    ['a refusal', jsonFrame(F.REFUSE, { error: 'no\nthanks' }), /the peer refused: no thanks$/],
  ];
  for (const [what, bytes, re] of cases) await assert.rejects(fed(bytes).recv([F.HELLO], 1000), re, what);
});

test('migration addresses: HOST,PORT and unix:/abs; anything else is one line', () => {
  assert.deepEqual(parseMigrationAddress('10.0.0.2,7000'), { kind: 'tcp', host: '10.0.0.2', port: 7000 });
  assert.deepEqual(parseMigrationAddress('unix:/run/m.sock'), { kind: 'unix', path: '/run/m.sock' });
  for (const bad of ['10.0.0.2', '10.0.0.2,0', 'h,65536', 'unix:rel.sock', 'h:7000']) assert.throws(() => parseMigrationAddress(bad), /migration address/);
});

test('a peer that stops reading (a stopped destination) fails the sender after stallMs instead of holding it forever', async () => {
  const path = join(mkdtempSync(join(tmpdir(), 'tshyve-wire-')), 's');
  const server = createServer((peer) => peer.pause()); // accepts, never reads
  await new Promise<void>((r) => server.listen(path, r));
  const sock = createConnection(path);
  await new Promise((r) => sock.once('connect', r));
  const ch = new Channel(sock, 'the destination', 300);
  const frame = encodeFrame(F.PAGES, Buffer.alloc(1 << 20));
  const t0 = Date.now();
  await assert.rejects((async () => { for (;;) await ch.send(frame); })(), /the destination took nothing for 0\.3 s/);
  assert.ok(Date.now() - t0 < 5000);
  server.close();
});
