import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Bus } from '../bus/bus.js';
import { ConfigNode, ConfigTree } from '../config/tree.js';
import { platformAcpiOptions } from '../pci/acpi-options.js';
import type { PciFunction } from '../pci/device.js';
import { StateReader, StateWriter } from '../snapshot/state.js';
import { attachAcpiPm, SCI_EN, SLP_EN, type AcpiPm } from './acpi-pm.js';
import { platformDevices, type PlatformContext } from './platform.js';
import { PMBA, PMIOSE, PMREGMISC, piix4PmFunction } from './piix4-pm.js';
import { PIIX4_PM_BASE, pmPortsAt } from '../x86/acpi/pm-ports.js';

function setup() {
  const pio = new Bus('pio');
  const calls: string[] = [];
  let ns = 0n;
  const pm = attachAcpiPm(pio, { onPowerOff: () => calls.push('off'), onReset: () => calls.push('reset') },
    { ports: pmPortsAt(PIIX4_PM_BASE), softOffTypes: [0], now: () => ns }, true);
  const fn = piix4PmFunction(pio, pm);
  return { pio, calls, fn, tick: (d: bigint) => { ns += d; } };
}

test('PIIX4 PM function: 8086:7113, PMBA read-only RTE bit, blocks decoded only with PMIOSE, at PMBA', () => {
  const { pio, fn, tick } = setup();
  assert.equal(fn.config.read(0, 4), 0x71138086);
  assert.equal(fn.config.read(PMBA, 4), 1, 'PMBA resets to RTE only');
  assert.equal(pio.read(PIIX4_PM_BASE + 8, 4), 0xffffffff, 'nothing decoded before the firmware programs it');
  fn.config.write(PMBA, 4, 0xb03f);
  assert.equal(fn.config.read(PMBA, 4), 0xb001, 'bits 15:6 are the base');
  assert.equal(pio.read(PIIX4_PM_BASE + 8, 4), 0xffffffff, 'still off without PMIOSE');
  fn.config.write(PMREGMISC, 1, PMIOSE);
  tick(1_000_000_000n);
  assert.ok(Math.abs(pio.read(PIIX4_PM_BASE + 8, 4) - 3579545) < 2, 'the timer at PMBA + 8');
  // moved: the old place decodes nothing
  fn.config.write(PMBA, 2, 0xc000);
  assert.equal(pio.read(PIIX4_PM_BASE + 8, 4), 0xffffffff);
  assert.notEqual(pio.read(0xc008, 4), 0xffffffff);
  fn.config.write(PMREGMISC, 1, 0);
  assert.equal(pio.read(0xc008, 4), 0xffffffff);
});

test('PIIX4 PM function: a PMBA on top of another device decodes nothing; SLP_TYP 0 is soft off; restore re-maps', () => {
  const { pio, fn, calls } = setup();
  pio.register(0x408, 4, { read: () => 0x12, write: () => {} }, 'other');
  fn.config.write(PMREGMISC, 1, PMIOSE);
  fn.config.write(PMBA, 2, 0x380); // blocks at 0x380-0x38b
  assert.equal(pio.read(0x388, 4), 0);
  fn.config.write(PMBA, 2, 0x400); // the timer would be at 0x408
  assert.equal(pio.read(0x408, 1), 0x12, 'the other device keeps its ports');
  assert.equal(pio.read(0x388, 4), 0xffffffff, 'the old place released');
  assert.equal(pio.read(0x404, 2), 0xffff, 'nothing of the block decoded');
  fn.config.write(PMBA, 2, PIIX4_PM_BASE);
  pio.write(PIIX4_PM_BASE + 4, 2, SLP_EN); // OVMF's ResetShutdown: SLP_TYP 0
  assert.deepEqual(calls, ['off']);
  // a restored config space (PMIOSE off) is applied by restoreState
  const saved = new StateWriter();
  fn.config.saveState!(saved);
  const json = JSON.parse(JSON.stringify(saved.obj)) as Record<string, string>;
  const bytes = Buffer.from(json['bytes$b64']!, 'base64');
  bytes[PMREGMISC] = 0;
  fn.config.restoreState!(new StateReader({ 'bytes$b64': bytes.toString('base64') }, 'config'));
  fn.restoreState!(new StateReader({}, 'fn'));
  assert.equal(pio.read(PIIX4_PM_BASE + 8, 4), 0xffffffff);
});

test('the registered PM device decodes where the FADT says: the fixed ports on direct boot; with firmware, once the firmware sets PMBA to the FADT\'s base', () => {
  for (const firmware of [false, true]) {
    const config = new ConfigTree();
    if (firmware) config.set('lpc.bootrom', '/unused.fd');
    const pio = new Bus('pio');
    const fns: PciFunction[] = [];
    const ctx = {
      pio, config, irq: () => ({ set: () => {} }), powerOff: () => {}, reset: () => {},
      addPciFunction: (_bdf: unknown, _kind: string, fn: PciFunction) => { fns.push(fn); },
    } as unknown as PlatformContext;
    const entry = platformDevices().find((d) => d.name === 'pm')!;
    const pm = entry.create(ctx, new ConfigNode(entry.node)) as AcpiPm;
    const fadt = platformAcpiOptions(1, firmware).pm!;
    assert.deepEqual(pm.ports, fadt, `firmware ${firmware}: the device's ports are the FADT's`);
    assert.equal(fns.length, firmware ? 1 : 0, 'the PIIX4 PM function comes with firmware only');
    if (firmware) {
      assert.equal(pio.read(fadt.pmTmr, 4), 0xffffffff, 'nothing decoded before the firmware programs PMBA');
      fns[0]!.config.write(PMBA, 2, fadt.pm1aEvt);
      fns[0]!.config.write(PMREGMISC, 1, PMIOSE);
    }
    assert.notEqual(pio.read(fadt.pmTmr, 4), 0xffffffff, `firmware ${firmware}: the PM timer at the FADT's PM_TMR_BLK`);
    assert.equal(pio.read(fadt.pm1aCnt, 2) & SCI_EN, SCI_EN, `firmware ${firmware}: PM1a control at the FADT's PM1A_CNT_BLK`);
  }
});
