import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MsiRouter } from './msi-router.js';
import { defaultIrqchipRoutes, encodeGsiRouting, GSI_ROUTING_ENTRY_SIZE, IRQCHIP, type GsiRoute } from '../kvm/abi.js';

test('encodeGsiRouting lays out struct kvm_irq_routing: count, then 48-byte entries', () => {
  const b = encodeGsiRouting([
    { gsi: 5, kind: 'irqchip', chip: IRQCHIP.IOAPIC, pin: 5 },
    { gsi: 24, kind: 'msi', address: 0x1_fee0_1000n, data: 0x4041 },
  ]);
  assert.equal(b.length, 8 + 2 * GSI_ROUTING_ENTRY_SIZE);
  assert.equal(b.readUInt32LE(0), 2, 'nr');
  assert.equal(b.readUInt32LE(4), 0, 'flags');
  const e0 = 8, e1 = 8 + 48;
  assert.deepEqual([b.readUInt32LE(e0), b.readUInt32LE(e0 + 4), b.readUInt32LE(e0 + 8), b.readUInt32LE(e0 + 16), b.readUInt32LE(e0 + 20)],
    [5, 1, 0, 2, 5], 'gsi, KVM_IRQ_ROUTING_IRQCHIP, flags, irqchip, pin');
  assert.deepEqual([b.readUInt32LE(e1), b.readUInt32LE(e1 + 4), b.readUInt32LE(e1 + 16), b.readUInt32LE(e1 + 20), b.readUInt32LE(e1 + 24)],
    [24, 2, 0xfee01000, 1, 0x4041], 'gsi, KVM_IRQ_ROUTING_MSI, address_lo, address_hi, data');
});

test('the default table is the kernel\'s: IOAPIC pins 0-23, PIC master 0-7 and slave 8-15', () => {
  const t = defaultIrqchipRoutes();
  const ioapic = t.filter((r) => r.kind === 'irqchip' && r.chip === IRQCHIP.IOAPIC);
  assert.deepEqual(ioapic.map((r) => [r.gsi, (r as { pin: number }).pin]), Array.from({ length: 24 }, (_, i) => [i, i]));
  const pic = t.filter((r) => r.kind === 'irqchip' && r.chip !== IRQCHIP.IOAPIC) as Extract<GsiRoute, { kind: 'irqchip' }>[];
  assert.equal(pic.length, 16);
  for (const r of pic) {
    assert.equal(r.chip, r.gsi < 8 ? IRQCHIP.PIC_MASTER : IRQCHIP.PIC_SLAVE);
    assert.equal(r.pin, r.gsi % 8);
  }
});

test('MsiRouter: GSIs from 24, the full table set only when a route changes, released GSIs reused', () => {
  const sets: GsiRoute[][] = [];
  const r = new MsiRouter((t) => sets.push([...t]), 64);
  const a = r.alloc(), b = r.alloc();
  assert.deepEqual([a, b], [24, 25]);
  assert.equal(sets.length, 0, 'allocation alone sets nothing');
  assert.equal(r.setRoute(a, 0xfee00000n, 0x30), true);
  assert.equal(r.setRoute(a, 0xfee00000n, 0x30), false, 'same message: no ioctl');
  assert.equal(sets.length, 1);
  const last = sets[0]!;
  assert.equal(last.length, defaultIrqchipRoutes().length + 1, 'every irqchip route is kept');
  assert.deepEqual(last.at(-1), { gsi: 24, kind: 'msi', address: 0xfee00000n, data: 0x30 });
  r.setRoute(b, 0xfee01000n, 0x31);
  r.setRoute(a, 0xfee00000n, 0x32);
  assert.equal(sets.length, 3);
  assert.deepEqual(sets[2]!.filter((e) => e.kind === 'msi').map((e) => e.gsi), [24, 25]);
  r.release(a);
  assert.deepEqual(sets.at(-1)!.filter((e) => e.kind === 'msi').map((e) => e.gsi), [25], 'released route dropped');
  assert.equal(r.alloc(), 24, 'GSI reused');
  const small = new MsiRouter(() => {}, 25);
  small.alloc();
  assert.throws(() => small.alloc(), /no free GSI/);
});
