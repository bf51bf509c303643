/**
 * Served BARs: placed as firmware would, mapped where the guest decodes
 * them, moved and unmapped with them; a BAR moved onto another is a guest
 * error and stays unmapped until moved back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Bus, type BusDevice } from '../bus/bus.js';
import { PciConfig } from './config-space.js';
import { PciBars } from './bars.js';
import { mmioAllocator } from './device.js';

function setup(withPio = true) {
  const mmio = new Bus('mmio'), pio = new Bus('pio');
  const errors: string[] = [];
  const ctx = {
    mmio, pio, guestError: (dev: string, m: string) => { errors.push(`${dev}: ${m}`); },
    allocMmio: mmioAllocator(0xc0000000, 0xfec00000), allocPio: withPio ? mmioAllocator(0x6000, 0x10000) : undefined,
  };
  const config = new PciConfig({ vendor: 0x1234, device: 0x5678, classCode: 0xff, subclass: 0 });
  const dev = (v: number): BusDevice => ({ read: (o) => v + o, write: () => {} });
  const maps: (number | undefined)[] = [];
  return { mmio, pio, errors, config, bars: new PciBars(ctx, config, 'dev'), dev, maps };
}

test('placed at construction, decoding once enabled, each on its own bus', () => {
  const s = setup();
  s.bars.add({ index: 0, size: 0x4000, kind: 'mem32', what: 'regs', dev: s.dev(0x100), onMap: (a) => s.maps.push(a) });
  s.bars.add({ index: 1, size: 0x1000, kind: 'mem32', what: 'msix', dev: s.dev(0x200) });
  s.bars.add({ index: 2, size: 0x20, kind: 'io', what: 'io', dev: s.dev(0x300) });
  assert.equal(s.config.read(0x10, 4), 0xc0000000);
  assert.equal(s.config.read(0x14, 4), 0xc0004000);
  assert.equal(s.config.read(0x18, 4), 0x6000 | 1);
  assert.equal(s.mmio.read(0xc0000000, 4), 0xffffffff, 'not decoded before enable()');
  assert.deepEqual(s.maps, []);
  s.bars.enable();
  assert.equal(s.config.read(0x04, 2), 3);
  assert.equal(s.mmio.read(0xc0000004, 4), 0x104);
  assert.equal(s.mmio.read(0xc0004008, 4), 0x208);
  assert.equal(s.pio.read(0x6002, 1), 0x302);
  assert.deepEqual(s.maps, [0xc0000000]);
});

test('the guest moves a BAR, turns decoding off and on: the device follows; onto another BAR it is a guest error', () => {
  const s = setup();
  s.bars.add({ index: 0, size: 0x4000, kind: 'mem32', what: 'regs', dev: s.dev(0x100), onMap: (a) => s.maps.push(a) });
  s.bars.add({ index: 1, size: 0x1000, kind: 'mem32', what: 'msix', dev: s.dev(0x200) });
  s.bars.enable();
  s.config.write(0x10, 4, 0xd0000000);
  assert.equal(s.mmio.read(0xd0000000, 4), 0x100);
  assert.equal(s.mmio.read(0xc0000000, 4), 0xffffffff, 'gone from the old place');
  s.config.write(0x04, 2, 0);
  assert.equal(s.mmio.read(0xd0000000, 4), 0xffffffff);
  s.config.write(0x04, 2, 2);
  assert.equal(s.mmio.read(0xd0000000, 4), 0x100);
  assert.deepEqual(s.maps, [0xc0000000, 0xd0000000, undefined, 0xd0000000]);
  s.config.write(0x14, 4, 0xd0000000); // BAR 1 onto BAR 0
  assert.equal(s.errors.length, 1);
  assert.match(s.errors[0]!, /^dev: msix at 0xd0000000: .*overlaps dev-regs/);
  assert.equal(s.mmio.read(0xd0000000, 4), 0x100, 'BAR 0 keeps its place');
  assert.equal(s.mmio.read(0xc0004000, 4), 0xffffffff);
  s.config.write(0x14, 4, 0xc0004000);
  assert.equal(s.mmio.read(0xc0004000, 4), 0x200, 'mapped again once moved back');
});

test('an I/O BAR without I/O port space is refused at construction', () => {
  const s = setup(false);
  assert.throws(() => s.bars.add({ index: 0, size: 0x20, kind: 'io', what: 'io', dev: s.dev(0) }), /dev: BAR 0 needs I\/O port space/);
});
