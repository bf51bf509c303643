/**
 * MSI-X on virtio-pci with irqfd vectors (a fake router behind
 * ctx.msiVector): routes follow the guest's table, set once per change;
 * interrupts are eventfd signals; masking and the PBA stay in the transport.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../memory/guest-memory.js';
import { Bus } from '../../bus/bus.js';
import { mmioAllocator, type DeviceContext } from '../../pci/device.js';
import { VirtioPci } from './transport.js';
import { VirtioRnd } from '../../devices/virtio-rnd.js';
import { MsiRouter, type MsiVector } from '../../vm/msi-router.js';
import type { GsiRoute } from '../../kvm/abi.js';

const B0 = 0xc0000000, B1 = 0xc0004000;

function setup(withIrqfd: boolean) {
  const mem = GuestMemory.ofSize(1 << 20);
  const mmio = new Bus('mmio');
  const tables: GsiRoute[][] = [];
  const router = new MsiRouter((t) => tables.push([...t]));
  const signals: number[] = [];
  const msis: [bigint, number][] = [];
  const closed: number[] = [];
  const ctx: DeviceContext = {
    mem, pio: new Bus('pio'), mmio,
    irq: () => ({ set: () => {} }),
    msi: (a, d) => { msis.push([a, d]); },
    guestError: () => {},
    allocMmio: mmioAllocator(B0, 0xfec00000),
    msiVector: withIrqfd ? (): MsiVector => {
      const gsi = router.alloc();
      return {
        gsi, fd: -1,
        route: (a, d) => { router.setRoute(gsi, a, d); },
        signal: () => { signals.push(gsi); },
        close: () => { closed.push(gsi); router.release(gsi); },
      };
    } : undefined,
  };
  const fn = new VirtioPci(ctx, new VirtioRnd(), { slot: 4 }, 'rnd');
  // driver bring-up to DRIVER_OK, config vector 0
  mmio.write(B0 + 0x14, 1, 0);
  for (const st of [1, 3]) mmio.write(B0 + 0x14, 1, st);
  mmio.write(B0 + 0x08, 4, 1); mmio.write(B0 + 0x0c, 4, 1);
  mmio.write(B0 + 0x14, 1, 0x0b);
  mmio.write(B0 + 0x10, 2, 0);
  mmio.write(B0 + 0x14, 1, 0x0f);
  const entry = (v: number, addr: number, data: number) => {
    mmio.write(B1 + v * 16, 4, addr); mmio.write(B1 + v * 16 + 4, 4, 0); mmio.write(B1 + v * 16 + 8, 4, data);
  };
  const unmask = (v: number, on: boolean) => mmio.write(B1 + v * 16 + 12, 4, on ? 0 : 1);
  const msixCtl = (v: number) => fn.config.write(findMsixCap(fn) + 2, 2, v);
  return { fn, mmio, tables, signals, msis, closed, entry, unmask, msixCtl };
}

function findMsixCap(fn: VirtioPci): number {
  for (let p = fn.config.read(0x34, 1); p; p = fn.config.read(p + 1, 1)) if (fn.config.read(p, 1) === 0x11) return p;
  throw new Error('no MSI-X capability');
}

test('an unmasked vector gets its route once and each interrupt is one eventfd signal', () => {
  const s = setup(true);
  s.msixCtl(0x8000);
  s.entry(0, 0xfee00000, 0x41);
  assert.equal(s.tables.length, 0, 'a masked vector has no route yet');
  s.unmask(0, true);
  assert.equal(s.tables.length, 1, 'route set at unmask');
  assert.deepEqual(s.tables[0]!.filter((r) => r.kind === 'msi'), [{ gsi: 24, kind: 'msi', address: 0xfee00000n, data: 0x41 }]);
  for (let i = 0; i < 5; i++) s.fn.core.signalConfig();
  assert.deepEqual(s.signals, [24, 24, 24, 24, 24]);
  assert.equal(s.tables.length, 1, 'no routing ioctl per interrupt');
  assert.equal(s.msis.length, 0, 'no KVM_SIGNAL_MSI');
  // reprogrammed (as Linux does: masked, written, unmasked): one new table
  s.unmask(0, false);
  s.entry(0, 0xfee01000, 0x42);
  s.unmask(0, true);
  assert.equal(s.tables.length, 2);
  assert.deepEqual(s.tables[1]!.filter((r) => r.kind === 'msi'), [{ gsi: 24, kind: 'msi', address: 0xfee01000n, data: 0x42 }]);
});

test('masked vector and function mask: pending bit in the PBA, delivered through the irqfd on unmask', () => {
  const s = setup(true);
  s.msixCtl(0x8000);
  s.entry(0, 0xfee00000, 0x41);
  s.fn.core.signalConfig();
  assert.deepEqual(s.signals, []);
  assert.equal(s.mmio.read(B1 + 0x800, 4) & 1, 1, 'PBA bit set');
  s.unmask(0, true);
  assert.deepEqual(s.signals, [24]);
  assert.equal(s.mmio.read(B1 + 0x800, 4) & 1, 0, 'PBA bit cleared');
  s.msixCtl(0xc000); // function mask
  s.fn.core.signalConfig();
  assert.deepEqual(s.signals, [24]);
  s.msixCtl(0x8000);
  assert.deepEqual(s.signals, [24, 24]);
});

test('without irqfd vectors MSIs go through ctx.msi (KVM_SIGNAL_MSI)', () => {
  const s = setup(false);
  s.msixCtl(0x8000);
  s.entry(0, 0xfee00000, 0x41);
  s.unmask(0, true);
  s.fn.core.signalConfig();
  assert.deepEqual(s.msis, [[0xfee00000n, 0x41]]);
  assert.equal(s.tables.length, 0);
});

test('destroy closes every vector\'s irqfd', () => {
  const s = setup(true);
  s.fn.destroy();
  assert.deepEqual(s.closed, [24, 25], 'config vector and one queue vector');
});
