/**
 * Level 1: which lab results the driver runs once more (test/lab/linux-driver.ts):
 * a hang, or a triple fault no scenario asks for, in the result or any phase.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { failedByTheLab, type BootResult } from './lab/linux-driver.js';

const base: BootResult = { name: 's', code: 1, stdout: 'TSHYVE-GUEST-OK\n', stderr: '', ms: 10 };
const phase = (code: number | null, stderr = '') => ({ what: 'p', code, stdout: '', stderr, ms: 1 });

test('a lab result is run again after a hang or an unasked triple fault, not after a wrong answer', () => {
  assert.equal(failedByTheLab(base), undefined);
  assert.match(failedByTheLab({ ...base, code: null, stdout: 'x'.repeat(300) + 'tail' }) ?? '', /^HUNG after 10 ms .*tail/);
  assert.match(failedByTheLab({ ...base, code: 3, stderr: 'tshyve: vCPU 1 triple fault (rip 0xfff0)\n' }) ?? '', /triple-faulted \(tshyve: vCPU 1 triple fault \(rip 0xfff0\)\)/);
  // in a save/restore phase: the scenario's own code may say 1
  assert.match(failedByTheLab({ ...base, phases: [phase(0), phase(3, 'tshyve: vCPU 0 triple fault')] }) ?? '', /vCPU 0 triple fault/);
  // exit 3 for another reason, or a failed check: the result stands
  assert.equal(failedByTheLab({ ...base, code: 3, stderr: 'something else' }), undefined);
  assert.equal(failedByTheLab({ ...base, code: 4, stderr: 'tshyve: bad option' }), undefined);
  assert.equal(failedByTheLab({ ...base, phases: [phase(1, 'powered off')] }), undefined);
});
