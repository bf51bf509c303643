import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bootFailure, geoMean, pairedRatios, tshyveFirmwareArgs, type Timed, type Vmm } from './common.js';

type P = { vmm: Vmm; round: number; pair: number; mbs?: number };

test('pairedRatios pairs each tshyve pass with the QEMU pass of the same round and pair, skipping cold passes', () => {
  const passes: P[] = [
    { vmm: 'tshyve', round: 0, pair: -1, mbs: 10 }, { vmm: 'qemu', round: 0, pair: -1, mbs: 100 },
    { vmm: 'tshyve', round: 0, pair: 0, mbs: 50 }, { vmm: 'qemu', round: 0, pair: 0, mbs: 100 },
    { vmm: 'qemu', round: 0, pair: 1, mbs: 40 }, { vmm: 'tshyve', round: 0, pair: 1, mbs: 60 },
    { vmm: 'tshyve', round: 1, pair: 0, mbs: 70 }, // its QEMU pass is missing (round failed)
    { vmm: 'qemu', round: 1, pair: 1, mbs: 10 },
    { vmm: 'tshyve', round: 2, pair: 0 }, { vmm: 'qemu', round: 2, pair: 0, mbs: 10 },
  ];
  assert.deepEqual(pairedRatios(passes, (r) => r.mbs), [0.5, 1.5]);
});

test('geoMean: the geometric mean, and a 95 % interval that holds it and narrows with more pairs', () => {
  assert.equal(geoMean([]), undefined);
  const one = geoMean([2])!;
  assert.equal(one.gmean, 2);
  assert.ok(Number.isNaN(one.lo));
  const g = geoMean([0.5, 2])!;
  assert.ok(Math.abs(g.gmean - 1) < 1e-12);
  // logs +-ln2, sd = ln2*sqrt(2), half-width = 12.71 * ln2
  assert.ok(Math.abs(Math.log(g.hi) - 12.71 * Math.LN2) < 1e-9);
  const few = geoMean([0.9, 1.1, 0.95, 1.05])!, many = geoMean(Array.from({ length: 40 }, (_, i) => [0.9, 1.1, 0.95, 1.05][i % 4]!))!;
  assert.ok(few.lo < few.gmean && few.gmean < few.hi);
  assert.ok(many.hi - many.lo < (few.hi - few.lo) / 2);
});

test('tshyveFirmwareArgs: unset means tshyve\'s firmware boot is off; set (even empty) enables it with those arguments', () => {
  assert.equal(tshyveFirmwareArgs({}), undefined);
  assert.deepEqual(tshyveFirmwareArgs({ TSHYVE_FIRMWARE_ARGS: '' }), []);
  assert.deepEqual(tshyveFirmwareArgs({ TSHYVE_FIRMWARE_ARGS: ' -o  x86.irqchip=user ' }), ['-o', 'x86.irqchip=user']);
});

test('bootFailure: a timeout, no TSHYVE-GUEST-OK, or another exit than the VMM\'s power-off status', () => {
  const t = (over: Partial<Timed>): Timed => ({ code: 1, signal: null, output: '', stderr: '', wallMs: 1, timedOut: false, ...over });
  assert.equal(bootFailure(t({}), 'TSHYVE-GUEST-OK', 'tshyve', 5000), undefined);
  assert.equal(bootFailure(t({ code: 0 }), 'TSHYVE-GUEST-OK', 'qemu', 5000), undefined);
  assert.equal(bootFailure(t({ timedOut: true }), 'TSHYVE-GUEST-OK', 'tshyve', 5000), 'timeout after 5 s, killed');
  assert.equal(bootFailure(t({}), 'panic', 'tshyve', 5000), 'TSHYVE-GUEST-OK never printed');
  assert.equal(bootFailure(t({ code: 0 }), 'TSHYVE-GUEST-OK', 'tshyve', 5000), 'exit 0, expected 1');
});
