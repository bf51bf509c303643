import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Lapic, LAPIC_VERSION, resetLapicPage } from './lapic.js';
import { EV, LW, REG, newLapicPage } from './lapic-page.js';
import { ApicRouter, DELIVERY, type ApicMessage } from './router.js';
import { Ioapic, IOAPIC_EOI_OFFSET } from './ioapic.js';

/** n APICs on a fake clock, IPIs routed between them; kicks and level EOIs recorded. */
function rig(n = 2) {
  let t = 0;
  const pages = Array.from({ length: n }, (_, i) => { const w = newLapicPage(); resetLapicPage(w, i); return w; });
  const kicks: number[] = [];
  const eois: number[] = [];
  const router = new ApicRouter(pages, (i) => kicks.push(i));
  const apics = pages.map((w, i) => new Lapic(w, i, () => t, { send: (m) => router.deliver(m), levelEoi: (v) => eois.push(v) }));
  for (const a of apics) a.write(REG.SVR, 0x1ff); // software-enabled, spurious vector 0xff
  return { apics, pages, router, kicks, eois, advance: (ns: number) => { t += ns; }, now: () => t };
}

test('power-on registers as KVM has them', () => {
  const { apics } = rig();
  const a = apics[1]!;
  assert.equal(a.read(REG.ID), 1 << 24);
  assert.equal(a.read(REG.VERSION), LAPIC_VERSION);
  assert.equal(a.read(REG.DFR), 0xffffffff);
  assert.equal(a.read(REG.LVT_TIMER), 0x10000);
  assert.equal(a.pending(), -1);
});

test('priorities: the highest IRR above the PPR is taken; TPR and ISR hold lower classes back', () => {
  const { apics, router } = rig(1);
  const a = apics[0]!;
  router.msi(0xfee00000n, 0x41);
  router.msi(0xfee00000n, 0x52);
  assert.equal(a.pending(), 0x52);
  a.accept(0x52);
  assert.equal(a.read(REG.PPR), 0x50);
  assert.equal(a.pending(), -1, '0x41 is below the in-service class');
  a.write(REG.EOI, 0);
  assert.equal(a.pending(), 0x41);
  a.tpr = 0x40;
  assert.equal(a.pending(), -1, 'TPR class 4 masks vector 0x41');
  a.tpr = 0x30;
  assert.equal(a.pending(), 0x41);
});

test('a software-disabled APIC and vectors below 16 take no fixed interrupt', () => {
  const { apics, router } = rig(1);
  router.msi(0xfee00000n, 0x05);
  assert.equal(apics[0]!.pending(), -1);
  apics[0]!.write(REG.SVR, 0xff);
  assert.equal(apics[0]!.read(REG.LVT_LINT0) & 0x10000, 0x10000, 'LVTs masked when disabled');
  router.msi(0xfee00000n, 0x40);
  assert.equal(apics[0]!.pending(), -1);
});

test('timer: one-shot, periodic and the current count at a 1 GHz bus with the divider', () => {
  const { apics, advance } = rig(1);
  const a = apics[0]!;
  a.write(REG.TIMER_DIV, 0xb); // divide by 1
  a.write(REG.LVT_TIMER, 0x30);
  a.write(REG.TIMER_INIT, 1_000_000);
  advance(400_000);
  assert.equal(a.read(REG.TIMER_CUR), 600_000);
  assert.equal(a.tick(), 1_000_000);
  assert.equal(a.pending(), -1);
  advance(600_000);
  assert.equal(a.tick(), Infinity, 'one-shot: stopped after firing');
  assert.equal(a.pending(), 0x30);
  assert.equal(a.read(REG.TIMER_CUR), 0);

  a.accept(0x30); a.write(REG.EOI, 0);
  a.write(REG.TIMER_DIV, 0x3); // divide by 16
  a.write(REG.LVT_TIMER, 0x20031); // periodic
  a.write(REG.TIMER_INIT, 1000);
  assert.equal(a.deadline, 1_000_000 + 16_000);
  advance(16_000);
  assert.equal(a.tick(), 1_000_000 + 32_000, 'periodic: the next period');
  assert.equal(a.pending(), 0x31);
  advance(10_000_000); // away for long: no burst of missed periods
  const next = a.tick();
  assert.ok(next > 1_000_000 + 10_016_000 && next <= 1_000_000 + 10_032_000);
  a.write(REG.LVT_TIMER, 0x10031); // masked: counts, posts nothing
  a.accept(0x31); a.write(REG.EOI, 0);
  advance(16_000); a.tick();
  assert.equal(a.pending(), -1);
  a.write(REG.TIMER_INIT, 0);
  assert.equal(a.tick(), Infinity);
});

test('TSC-deadline mode is not offered: the count-down timer stays stopped', () => {
  const { apics, advance } = rig(1);
  const a = apics[0]!;
  a.write(REG.LVT_TIMER, 0x40030);
  a.write(REG.TIMER_INIT, 100);
  advance(1000);
  assert.equal(a.tick(), Infinity);
  assert.equal(a.pending(), -1);
});

test('ICR: fixed IPIs by physical and logical destination, shorthands, INIT, SIPI and NMI', () => {
  const { apics, pages, kicks } = rig(3);
  const [a0, a1, a2] = apics as [Lapic, Lapic, Lapic];
  const ipi = (from: Lapic, hi: number, lo: number) => { from.write(REG.ICR_HI, hi); from.write(REG.ICR_LO, lo); };
  ipi(a0, 2 << 24, 0x40);
  assert.equal(a2.pending(), 0x40);
  assert.deepEqual(kicks, [2]);
  assert.equal(a0.read(REG.ICR_LO) & 0x1000, 0, 'delivery status idle');
  // logical flat: LDR bits
  a1.write(REG.LDR, 0x02000000); a2.write(REG.LDR, 0x04000000);
  ipi(a0, 0x06 << 24, 0x800 | 0x45);
  assert.equal(a1.pending(), 0x45);
  assert.equal(a2.pending(), 0x45);
  // logical cluster
  a1.write(REG.DFR, 0x0fffffff); a1.write(REG.LDR, 0x21000000);
  ipi(a0, 0x21 << 24, 0x800 | 0x46);
  assert.equal(a1.pending(), 0x46);
  // all excluding self
  kicks.length = 0;
  ipi(a1, 0, (3 << 18) | 0x47);
  assert.deepEqual(kicks.sort(), [0, 2]);
  assert.equal(a0.pending(), 0x47);
  // self
  ipi(a2, 0, (1 << 18) | 0x48);
  assert.equal(a2.pending(), 0x48);
  // INIT (assert), INIT de-assert (ignored), SIPI, NMI
  ipi(a0, 1 << 24, 0x4500);
  ipi(a0, 1 << 24, 0x8500);
  ipi(a0, 1 << 24, 0x4600 | 0x9a);
  ipi(a0, 1 << 24, 0x400);
  assert.equal(Atomics.load(pages[1]!, LW.EVENTS), EV.INIT | EV.SIPI | EV.NMI);
  assert.equal(Atomics.load(pages[1]!, LW.SIPI_VECTOR), 0x9a);
  assert.ok(Atomics.load(pages[1]!, LW.WAKE) > 0, 'the target is woken');
});

test('lowest priority goes to one target; an MSI outside 0xfeeXXXXX is dropped', () => {
  const { apics, router } = rig(2);
  router.deliver({ dest: 0xff, logical: false, mode: DELIVERY.LOWEST, vector: 0x50, level: false } satisfies ApicMessage);
  assert.equal(apics.filter((a) => a.pending() === 0x50).length, 1);
  router.msi(0xfed00000n, 0x60);
  assert.ok(apics.every((a) => a.pending() !== 0x60));
});

test('EOI of a level-triggered vector goes to the IOAPIC; an edge one does not', () => {
  const { apics, router, eois } = rig(1);
  const a = apics[0]!;
  router.deliver({ dest: 0, logical: false, mode: 0, vector: 0x61, level: true });
  a.accept(0x61); a.write(REG.EOI, 0);
  router.msi(0xfee00000n, 0x62);
  a.accept(0x62); a.write(REG.EOI, 0);
  assert.deepEqual(eois, [0x61]);
});

test('IOAPIC: redirection table, edge pins, level pins with remote IRR re-sent at EOI while asserted', () => {
  const { apics, router } = rig(2);
  const io = new Ioapic(router);
  const wr = (reg: number, v: number) => { io.write(0, 4, reg); io.write(0x10, 4, v); };
  const rd = (reg: number) => { io.write(0, 4, reg); return io.read(0x10, 4); };
  assert.equal(rd(1), 0x170011);
  assert.equal(rd(0x10) & 0x10000, 0x10000, 'pins start masked');
  wr(0x10 + 2 * 4, 0x34); wr(0x11 + 2 * 4, 1 << 24); // pin 4: edge, vector 0x34, to APIC 1
  io.setIrq(4, true);
  assert.equal(apics[1]!.pending(), 0x34);
  apics[1]!.accept(0x34); apics[1]!.write(REG.EOI, 0);
  io.setIrq(4, true); // no new edge
  assert.equal(apics[1]!.pending(), -1);
  io.setIrq(4, false); io.setIrq(4, true);
  assert.equal(apics[1]!.pending(), 0x34);

  wr(0x10 + 2 * 9, 0x18039); // pin 9: level, masked, vector 0x39, to APIC 0
  io.setIrq(9, true);
  assert.equal(apics[0]!.pending(), -1);
  wr(0x10 + 2 * 9, 0x8039); // unmasking an asserted level pin sends it
  assert.equal(apics[0]!.pending(), 0x39);
  assert.equal(rd(0x10 + 2 * 9) & 0x4000, 0x4000, 'remote IRR');
  apics[0]!.accept(0x39);
  io.setIrq(9, true); // held off by remote IRR
  assert.equal(apics[0]!.pending(), -1);
  apics[0]!.write(REG.EOI, 0);
  io.write(IOAPIC_EOI_OFFSET, 4, 0x39); // the EOI while still asserted: sent again
  assert.equal(apics[0]!.pending(), 0x39);
  apics[0]!.accept(0x39);
  io.setIrq(9, false);
  apics[0]!.write(REG.EOI, 0);
  io.write(IOAPIC_EOI_OFFSET, 4, 0x39);
  assert.equal(rd(0x10 + 2 * 9) & 0x4000, 0);
  assert.equal(apics[0]!.pending(), -1);
});

test('hostile register values and offsets: no crash, nothing out of range', () => {
  const { apics, router } = rig(2);
  const io = new Ioapic(router);
  const values = [0, 1, 0xff, 0x7fffffff, 0x80000000, 0xffffffff, -1, 2 ** 32 + 5];
  for (let off = 0; off < 0x1000; off += 4) {
    for (const v of values) {
      apics[0]!.write(off, v);
      apics[0]!.read(off);
      io.write(off & 0xff, 4, v);
      io.write(0x10, 4, v);
      io.read(off & 0xff, 4);
      io.read(0x10, 1);
    }
  }
  for (const pin of [-1, 24, 1000, 3.5]) io.setIrq(pin, true);
  for (const v of values) router.msi(BigInt.asUintN(64, BigInt(v)) | 0xfee00000n, v);
  apics[0]!.tick();
  assert.ok(apics[0]!.pending() >= -1);
});
