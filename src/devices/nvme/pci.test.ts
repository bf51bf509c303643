/**
 * The NVMe PCI function as `-s N,nvme,...` builds it, over fake guest
 * memory and buses: identity, BAR 0 registers, MSI-X in BAR 4 delivering
 * the admin queue's completions, save and restore through the function,
 * and a RAM disk refused by a save.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Bus } from '../../bus/bus.js';
import { ConfigTree } from '../../config/tree.js';
import { GuestMemory } from '../../memory/guest-memory.js';
import { findPciDevice, mmioAllocator, persistentPciFunction, type DeviceContext, type PciDeviceEmulation, type PciFunction } from '../../pci/device.js';
import { StateReader, StateWriter } from '../../snapshot/state.js';
import { CSTS_RDY, DOORBELLS, REG } from './constants.js';
import './pci.js';

const B0 = 0xc0000000, B4 = 0xc0004000, ASQ = 0x10000, ACQ = 0x20000;

function build(opts: string) {
  const mem = GuestMemory.ofSize(1 << 20);
  const mmio = new Bus('mmio');
  const msis: [bigint, number][] = [];
  const ctx: DeviceContext = {
    mem, pio: new Bus('pio'), mmio, irq: () => ({ set: () => {} }), msi: (a, d) => { msis.push([a, d]); },
    guestError: () => {}, allocMmio: mmioAllocator(B0, 0xfec00000), vmName: 'vm',
  };
  const t = new ConfigTree();
  const emu = findPciDevice('nvme') as PciDeviceEmulation; // (this file imports the model: its full entry)
  emu.legacyConfig!({ set: (k, v) => t.set(`pci.0.4.0.${k}`, v) }, opts);
  const fn = emu.create(ctx, t.node('pci.0.4.0')!, { bus: 0, slot: 4, func: 0 });
  return { mem, mmio, msis, fn };
}

function msixOn(fn: PciFunction, mmio: Bus): void {
  let cap = fn.config.read(0x34, 1);
  while (fn.config.read(cap, 1) !== 0x11) cap = fn.config.read(cap + 1, 1);
  fn.config.write(cap + 2, 2, 0x8000);
  mmio.write(B4, 4, 0xfee00000); mmio.write(B4 + 4, 4, 0); mmio.write(B4 + 8, 4, 0x41); mmio.write(B4 + 12, 4, 0);
}

/** Enable, then Identify Controller through the admin queue; returns the completion's status word. */
function identify(mem: GuestMemory, mmio: Bus, tail: number): number {
  const a = ASQ + (tail - 1) * 64;
  mem.fill(a, 64);
  mem.writeU32(a, 0x06 | (tail << 16)); mem.writeU32(a + 24, 0x30000); mem.writeU32(a + 40, 1);
  mmio.write(B0 + DOORBELLS, 4, tail);
  return mem.readU32(ACQ + (tail - 1) * 16 + 12);
}

test('nvme on PCI: identity, registers in BAR 0, MSI-X in BAR 4 carrying the admin queue\'s completions', () => {
  const { mem, mmio, msis, fn } = build('ram=4,maxq=2,ser=PCITEST');
  assert.equal(fn.config.read(0, 4), 0x0a0afb5d);
  assert.equal(fn.config.read(0x08, 4) >>> 8, 0x010802, 'class: mass storage, NVM, NVMe');
  assert.equal(mmio.read(B0 + REG.VS, 4), 0x10400);
  msixOn(fn, mmio);
  mmio.write(B0 + REG.AQA, 4, 0x000f000f);
  mmio.write(B0 + REG.ASQ, 4, ASQ); mmio.write(B0 + REG.ACQ, 4, ACQ);
  mmio.write(B0 + REG.CC, 4, 1 | (6 << 16) | (4 << 20));
  assert.equal(mmio.read(B0 + REG.CSTS, 4), CSTS_RDY);
  assert.equal(identify(mem, mmio, 1) >>> 16, 1, 'phase 1, success');
  assert.equal(Buffer.from(mem.read(0x30004, 7)).toString(), 'PCITEST');
  assert.deepEqual(msis, [[0xfee00000n, 0x41]]);
  assert.throws(() => persistentPciFunction({ bus: 0, slot: 4, func: 0 }, 'nvme', fn).saveState(new StateWriter()), /a ram= disk cannot be saved/);
  fn.destroy?.();
});

test('nvme on PCI: save and restore a file-backed controller; the restored one goes on serving its admin queue', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-nvme-pci-'));
  const img = join(dir, 'd.img');
  writeFileSync(img, Buffer.alloc(1 << 20));
  const a = build(`${img},maxq=2`);
  msixOn(a.fn, a.mmio);
  a.mmio.write(B0 + REG.AQA, 4, 0x000f000f);
  a.mmio.write(B0 + REG.ASQ, 4, ASQ); a.mmio.write(B0 + REG.ACQ, 4, ACQ);
  a.mmio.write(B0 + REG.CC, 4, 1 | (6 << 16) | (4 << 20));
  identify(a.mem, a.mmio, 1);
  const dev = persistentPciFunction({ bus: 0, slot: 4, func: 0 }, 'nvme', a.fn);
  const w = new StateWriter();
  dev.saveState(w);
  const b = build(`${img},maxq=2`);
  b.mem.write(0, a.mem.read(0, 1 << 20));
  persistentPciFunction({ bus: 0, slot: 4, func: 0 }, 'nvme', b.fn).restoreState(new StateReader(JSON.parse(JSON.stringify(w.obj)), 'dev'));
  assert.equal(b.mmio.read(B0 + REG.CSTS, 4), CSTS_RDY);
  assert.equal(identify(b.mem, b.mmio, 2) >>> 16, 1, 'the second command completes in the restored controller');
  assert.deepEqual(b.msis, [[0xfee00000n, 0x41]], 'through the restored MSI-X table');
  a.fn.destroy?.();
  b.fn.destroy?.();
});
