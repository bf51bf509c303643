import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProgressBar, renderBar } from './progress.js';

test('renderBar fits the terminal and says how far', () => {
  const s = renderBar('checkpoint', 8 << 20, 16 << 20, 1234, 80);
  assert.match(s, /^checkpoint \[#+-+\] {2}50% 8\.0\/16\.0 MiB 1\.2 s$/);
  assert.ok(s.length <= 79, s);
  assert.match(renderBar('x', 5, 0, 0, 80), / {2}0%/);
});

test('ProgressBar draws on a terminal only, and clears itself', () => {
  const tty: string[] = [], pipe: string[] = [];
  const a = new ProgressBar({ isTTY: true, columns: 60, write: (s) => tty.push(s) }, 'suspend');
  const b = new ProgressBar({ isTTY: false, write: (s) => pipe.push(s) }, 'suspend');
  for (const bar of [a, b]) { bar.update(0, 10); bar.update(1, 10); bar.update(10, 10); bar.clear(); }
  assert.deepEqual(pipe, []);
  assert.equal(tty.length, 3, 'first, last (throttled in between), clear');
  assert.match(tty[1]!, /100%/);
  assert.equal(tty[2], '\r\x1b[K');
});
