import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pairedRatios, type Vmm } from './common.js';

type R = { vmm: Vmm; run: number; ok: boolean; mbs?: number };

test('pairedRatios pairs each tshyve boot with the QEMU boot of the same run, both ok', () => {
  const runs: R[] = [
    { vmm: 'tshyve', run: 0, ok: true, mbs: 50 }, { vmm: 'qemu', run: 0, ok: true, mbs: 100 },
    { vmm: 'qemu', run: 1, ok: true, mbs: 40 }, { vmm: 'tshyve', run: 1, ok: true, mbs: 60 },
    { vmm: 'tshyve', run: 2, ok: true, mbs: 70 }, { vmm: 'qemu', run: 2, ok: false },
    { vmm: 'tshyve', run: 3, ok: false }, { vmm: 'qemu', run: 3, ok: true, mbs: 10 },
    { vmm: 'tshyve', run: 4, ok: true }, { vmm: 'qemu', run: 4, ok: true, mbs: 10 },
  ];
  assert.deepEqual(pairedRatios(runs, (r) => r.mbs), [0.5, 1.5]);
});
