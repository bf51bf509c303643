import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Bus } from '../bus/bus.js';
import { attachAcpiPm, PWRBTN_STS, SCI_EN, SLP_EN } from './acpi-pm.js';
import { PM1A_CNT, PM1A_EVT, PM_TMR, RESET_PORT, PM_TIMER_HZ } from '../x86/acpi/pm-ports.js';

function setup(opts: { timer32?: boolean } = {}) {
  const pio = new Bus('pio');
  const calls: string[] = [];
  const sci: boolean[] = [];
  let ns = 0n;
  const pm = attachAcpiPm(pio, { onPowerOff: () => calls.push('off'), onReset: () => calls.push('reset') }, {
    sci: { set: (l) => sci.push(l) },
    now: () => ns,
    ...(opts.timer32 === undefined ? {} : { ports: { pm1aEvt: PM1A_EVT, pm1aCnt: PM1A_CNT, pmTmr: PM_TMR, reset: RESET_PORT, timer32: opts.timer32 } }),
  });
  return { pio, pm, calls, sci, advance: (d: bigint) => { ns += d; } };
}

test('PM1a control: SCI_EN always reads set; SLP_EN is write-only', () => {
  const { pio } = setup();
  assert.equal(pio.read(PM1A_CNT, 2) & SCI_EN, SCI_EN);
  pio.write(PM1A_CNT, 2, 0);
  assert.equal(pio.read(PM1A_CNT, 2), SCI_EN);
  pio.write(PM1A_CNT, 2, 3 << 10); // SLP_TYP 3 without SLP_EN
  assert.equal(pio.read(PM1A_CNT, 2), (3 << 10) | SCI_EN);
  assert.equal(pio.read(PM1A_CNT + 1, 1), (3 << 10) >> 8);
});

test('PM1a control: SLP_TYP=5 with SLP_EN powers off; other states do not', () => {
  const { pio, calls } = setup();
  pio.write(PM1A_CNT, 2, (5 << 10) | SCI_EN); // ACPICA writes SLP_TYP first
  assert.deepEqual(calls, []);
  pio.write(PM1A_CNT, 2, (1 << 10) | SLP_EN | SCI_EN);
  assert.deepEqual(calls, []);
  pio.write(PM1A_CNT, 2, (5 << 10) | SLP_EN | SCI_EN);
  assert.deepEqual(calls, ['off']);
  assert.equal(pio.read(PM1A_CNT, 2) & SLP_EN, 0);
  // a byte write to the high half works too
  pio.write(PM1A_CNT + 1, 1, ((5 << 10) | SLP_EN) >> 8);
  assert.deepEqual(calls, ['off', 'off']);
});

test('PM1a event block: status is write-1-to-clear, enable is read/write, SCI follows', () => {
  const { pio, pm, sci } = setup();
  assert.equal(pio.read(PM1A_EVT, 4), 0);
  pm.pressPowerButton();
  assert.equal(pio.read(PM1A_EVT, 2), PWRBTN_STS);
  assert.equal(sci.at(-1), false); // not enabled yet
  pio.write(PM1A_EVT + 2, 2, PWRBTN_STS); // PWRBTN_EN
  assert.equal(pio.read(PM1A_EVT + 2, 2), PWRBTN_STS);
  assert.equal(sci.at(-1), true);
  assert.equal(pio.read(PM1A_EVT, 4), PWRBTN_STS | (PWRBTN_STS << 16));
  pio.write(PM1A_EVT, 2, 0); // writing 0 clears nothing
  assert.equal(pio.read(PM1A_EVT, 2), PWRBTN_STS);
  pio.write(PM1A_EVT, 2, PWRBTN_STS);
  assert.equal(pio.read(PM1A_EVT, 2), 0);
  assert.equal(sci.at(-1), false);
  assert.equal(pio.read(PM1A_EVT + 2, 2), PWRBTN_STS); // enable unaffected
  // a 32-bit write touches both halves
  pm.pressPowerButton();
  pio.write(PM1A_EVT, 4, PWRBTN_STS);
  assert.equal(pio.read(PM1A_EVT, 4), 0);
});

test('PM timer counts at 3.579545 MHz and wraps at 32 bits', () => {
  const { pio, advance } = setup();
  assert.equal(pio.read(PM_TMR, 4), 0);
  advance(1_000_000_000n);
  assert.equal(pio.read(PM_TMR, 4), PM_TIMER_HZ);
  assert.equal(pio.read(PM_TMR, 2), PM_TIMER_HZ & 0xffff);
  advance(1_200_000_000_000n); // 20 minutes: past 2^32 ticks
  const ticks = (1_201_000_000_000n * BigInt(PM_TIMER_HZ)) / 1_000_000_000n;
  assert.equal(pio.read(PM_TMR, 4), Number(ticks & 0xffffffffn));
  pio.write(PM_TMR, 4, 0); // read-only
  assert.equal(pio.read(PM_TMR, 4), Number(ticks & 0xffffffffn));
});

test('PM timer can be 24-bit', () => {
  const { pio, advance } = setup({ timer32: false });
  advance(10_000_000_000n);
  assert.equal(pio.read(PM_TMR, 4), (PM_TIMER_HZ * 10) & 0xffffff);
});

test('the real clock moves the timer forward', () => {
  const pio = new Bus('pio');
  attachAcpiPm(pio, { onPowerOff() {}, onReset() {} });
  const a = pio.read(PM_TMR, 4);
  const until = Date.now() + 5;
  while (Date.now() < until) { /* spin */ }
  assert.ok(pio.read(PM_TMR, 4) > a);
});

test('reset register at 0xCF9: bit 2 resets', () => {
  const { pio, calls } = setup();
  pio.write(RESET_PORT, 1, 0x02);
  assert.deepEqual(calls, []);
  assert.equal(pio.read(RESET_PORT, 1), 0x02);
  pio.write(RESET_PORT, 1, 0x06);
  pio.write(RESET_PORT, 1, 0x0e);
  assert.deepEqual(calls, ['reset', 'reset']);
  // 0xCF8 is not ours: PCI config address stays free
  assert.equal(pio.read(0xcf8, 4), 0xffffffff);
});

test('keyboard controller: 0xFE on port 0x64 resets; status reads 0', () => {
  const { pio, calls } = setup();
  assert.equal(pio.read(0x64, 1), 0);
  pio.write(0x64, 1, 0xd1);
  assert.deepEqual(calls, []);
  pio.write(0x64, 1, 0xfe);
  assert.deepEqual(calls, ['reset']);
});

test('keyboard reset port can be left to another device', () => {
  const pio = new Bus('pio');
  attachAcpiPm(pio, { onPowerOff() {}, onReset() {} }, { keyboardReset: false });
  pio.register(0x64, 1, { read: () => 0x1c, write: () => {} }, 'i8042');
  assert.equal(pio.read(0x64, 1), 0x1c);
});
