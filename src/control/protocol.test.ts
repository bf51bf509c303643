import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LineDecoder, parseRequest, parseServerMessage, salvageId, encode } from './protocol.js';

test('LineDecoder: lines split across chunks, merged in one chunk, a UTF-8 character cut in two', () => {
  const d = new LineDecoder();
  assert.deepEqual(d.push(Buffer.from('{"id":1,')), []);
  assert.deepEqual(d.push(Buffer.from('"op":"stats"}\n{"id":2}\n{"i')), ['{"id":1,"op":"stats"}', '{"id":2}']);
  const e = Buffer.from('d":"é"}\n');
  const cut = e.indexOf(0xc3) + 1; // inside the two bytes of é
  assert.deepEqual(d.push(e.subarray(0, cut)), []);
  assert.deepEqual(d.push(e.subarray(cut)), ['{"id":"é"}']);
  assert.equal(d.overflow, false);
});

test('LineDecoder: a line longer than the limit sets overflow', () => {
  const d = new LineDecoder(16);
  d.push(Buffer.from('x'.repeat(10)));
  assert.equal(d.overflow, false);
  d.push(Buffer.from('x'.repeat(10)));
  assert.equal(d.overflow, true);
  // A line completed in the chunk that makes it too long is refused too, not returned.
  const e = new LineDecoder(16);
  assert.deepEqual(e.push(Buffer.from('x'.repeat(10))), []);
  assert.deepEqual(e.push(Buffer.from('x'.repeat(10) + '\n{"id":1}\n')), []);
  assert.equal(e.overflow, true);
  const f = new LineDecoder(16);
  assert.deepEqual(f.push(Buffer.from('x'.repeat(16) + '\n')), ['x'.repeat(16)], 'exactly the limit is fine');
});

test('parseRequest accepts requests and says what is wrong with the rest', () => {
  assert.deepEqual(parseRequest('{"id":3,"op":"checkpoint","args":{"file":"/a"}}'), { id: 3, op: 'checkpoint', args: { file: '/a' } });
  assert.deepEqual(parseRequest('{"id":"x","op":"stats"}'), { id: 'x', op: 'stats', args: {} });
  const bad: [string, RegExp][] = [
    ['garbage', /not JSON/], ['[1,2]', /not a JSON object/], ['{"op":"stats"}', /"id"/],
    ['{"id":1}', /"op"/], ['{"id":1,"op":"rm -rf"}', /unknown operation 'rm -rf'/],
    ['{"id":1,"op":"stats","args":[1]}', /"args"/], ['{"id":{},"op":"stats"}', /"id"/],
    ['{"id":1,"op":"constructor"}', /unknown operation/], ['{"id":1,"op":"toString"}', /unknown operation/],
  ];
  for (const [line, re] of bad) assert.throws(() => parseRequest(line), re, line);
  assert.equal(salvageId('{"id":7,"op":"nope"}'), 7);
  assert.equal(salvageId('garbage'), null);
});

test('parseServerMessage: responses, progress, and nothing else', () => {
  for (const m of [{ id: 1, ok: true, result: { a: 1 } }, { id: null, ok: false, error: 'no' }, { id: 2, progress: { done: 1, total: 2 } }] as const) {
    assert.deepEqual(parseServerMessage(encode(m).trimEnd()), m);
  }
  assert.equal(parseServerMessage('{"id":1}'), undefined);
  assert.equal(parseServerMessage('{"id":1,"progress":{"done":"x"}}'), undefined);
  assert.equal(parseServerMessage('nope'), undefined);
});
