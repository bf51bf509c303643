import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applyPages, PageSender, PAGE, BATCH_PAGES } from './ram-pages.js';
import { HEADER_BYTES } from './wire.js';

/** The PAGES payloads a sender makes of `pages` of `ram`. */
async function payloads(ram: Uint8Array, pages: number[]): Promise<Buffer[]> {
  const out: Buffer[] = [];
  const s = new PageSender(ram, async (f) => { out.push(f.subarray(HEADER_BYTES)); });
  await s.addAll(pages);
  await s.flush();
  return out;
}

test('pages round-trip; zero pages carry no data and clear the destination page', async () => {
  const src = new Uint8Array(300 * PAGE);
  src.fill(7, 5 * PAGE, 6 * PAGE);
  src[299 * PAGE + 1] = 9;
  const pls = await payloads(src, [...Array(300).keys()]);
  assert.equal(pls.length, Math.ceil(300 / BATCH_PAGES));
  assert.equal(pls.reduce((n, p) => n + p.length, 0), 4 * pls.length + 8 * 300 + 2 * PAGE, 'only two pages of data');
  const dst = new Uint8Array(300 * PAGE).fill(1); // stale contents, as after an earlier round
  for (const p of pls) applyPages(p, dst);
  assert.deepEqual(dst, src);
});

test('a bad PAGES payload is refused whole, before anything is written', async () => {
  const src = new Uint8Array(4 * PAGE).fill(3);
  const [good] = await payloads(src, [0, 1, 2, 3]);
  const bad: [string, (b: Buffer) => Buffer, RegExp][] = [
    ['an index past RAM', (b) => { b.writeUInt32LE(4, 4 + 8 * 3); return b; }, /page 4 is past the end of RAM \(4 pages\)/],
    ['an unknown kind', (b) => { b.writeUInt32LE(2, 8); return b; }, /page 0 has kind 2/],
    ['a count of 0', (b) => { b.writeUInt32LE(0, 0); return b; }, /0 pages/],
    ['a count past the batch', (b) => { b.writeUInt32LE(BATCH_PAGES + 1, 0); return b; }, /257 pages/],
    ['a truncated payload', (b) => b.subarray(0, b.length - 1), /bytes, \d+ expected/],
    ['a longer payload', (b) => Buffer.concat([b, Buffer.alloc(1)]), /bytes, \d+ expected/],
    ['a data page marked zero', (b) => { b.writeUInt32LE(0, 8 + 8 * 3); return b; }, /bytes, \d+ expected/],
  ];
  for (const [what, edit, re] of bad) {
    const dst = new Uint8Array(4 * PAGE);
    assert.throws(() => applyPages(edit(Buffer.from(good!)), dst), re, what);
    assert.ok(dst.every((x) => x === 0), `${what}: nothing written`);
  }
});
