/**
 * The request-path warm-up: it serves its requests (reads and writes through
 * the real backend class, on scratch memfds), touches nothing else, leaks no
 * file descriptor, never signals or resets through the interrupt it is
 * given, and stops early when asked.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import type { VirtioInterrupt } from '../../virtio/device.js';
import { warmUpBlkRequestPath } from './warm-up.js';

const openFds = (): number => readdirSync('/proc/self/fd').length;

function recordingInterrupt() {
  const calls = { signalUsed: 0, signalConfig: 0, needsReset: [] as unknown[] };
  const irq: VirtioInterrupt = {
    signalUsed: () => { calls.signalUsed++; return false; },
    signalConfig: () => { calls.signalConfig++; },
    needsReset: (r) => { calls.needsReset.push(r); },
  };
  return { irq, calls };
}

test('the warm-up serves its requests through the interrupt it is given, and leaves no fd or memory mapped behind', () => {
  const { irq, calls } = recordingInterrupt();
  warmUpBlkRequestPath(8, irq); // first use opens what the process keeps anyway (libc bindings)
  const before = openFds();
  const r = warmUpBlkRequestPath(200, irq);
  assert.ok(r.requests >= 200, `${r.requests} requests`);
  assert.equal(r.stopped, false);
  assert.ok(Number.isFinite(r.ms) && r.ms > 0, `took ${r.ms} ms`);
  assert.deepEqual(calls.needsReset, [], 'no request broke the scratch queue');
  assert.ok(calls.signalUsed > 100, `every notify ends in signalUsed (${calls.signalUsed})`);
  assert.equal(calls.signalConfig, 0);
  assert.equal(openFds(), before, 'the scratch memfds and the backend fd are closed');
  const maps = readdirSync('/proc/self/map_files').length;
  warmUpBlkRequestPath(50, irq);
  assert.equal(readdirSync('/proc/self/map_files').length, maps, 'the scratch RAM is unmapped');
});

test('the warm-up stops when asked (the guest wants the disk), within 16 notifies', () => {
  const { irq } = recordingInterrupt();
  let asked = 0;
  const r = warmUpBlkRequestPath(100_000, irq, () => ++asked >= 2);
  assert.equal(r.stopped, true);
  assert.equal(asked, 2);
  assert.ok(r.requests > 0 && r.requests < 100, `${r.requests} requests before stopping`);
});
