import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rtc } from './rtc.js';
import type { IrqLine } from '../bus/bus.js';

const bcd = (v: number) => ((v >> 4) * 10) + (v & 0x0f);
const tobcd = (v: number) => ((Math.floor(v / 10)) << 4) | (v % 10);

function rd(rtc: Rtc, i: number): number { rtc.write(0, 1, i); return rtc.read(1, 1); }
function wr(rtc: Rtc, i: number, v: number): void { rtc.write(0, 1, i); rtc.write(1, 1, v); }

/** Linux's mc146818_get_time, simplified: wait for UIP clear, read, BCD per register B. */
function linuxReadTime(rtc: Rtc): Date {
  let spins = 0;
  while (rd(rtc, 0x0a) & 0x80) { if (++spins > 1e6) throw new Error('UIP never cleared'); }
  const b = rd(rtc, 0x0b);
  const conv = (v: number) => (b & 0x04 ? v : bcd(v));
  const sec = conv(rd(rtc, 0)), min = conv(rd(rtc, 2));
  let hourRaw = rd(rtc, 4);
  let hour: number;
  if (b & 0x02) hour = conv(hourRaw);
  else { const pm = hourRaw & 0x80; hourRaw &= 0x7f; hour = conv(hourRaw) % 12 + (pm ? 12 : 0); }
  const day = conv(rd(rtc, 7)), mon = conv(rd(rtc, 8)), year = conv(rd(rtc, 9)), cent = conv(rd(rtc, 0x32));
  return new Date(Date.UTC(cent * 100 + year, mon - 1, day, hour, min, sec));
}

test('UTC time in BCD 24h by default, within a few seconds of the host', () => {
  const rtc = new Rtc({ utc: true });
  assert.equal(rd(rtc, 0x0b), 0x02);
  assert.equal(rd(rtc, 0x0d) & 0x80, 0x80, 'VRT');
  const t = linuxReadTime(rtc);
  assert.ok(Math.abs(t.getTime() - Date.now()) < 3000, `${t.toISOString()} vs host`);
});

test('local time mode holds host local time', () => {
  const rtc = new Rtc({ utc: false });
  const t = linuxReadTime(rtc); // fields as if UTC
  const now = new Date();
  const localAsUtc = Date.UTC(now.getFullYear(), now.getMonth(), now.getDate(), now.getHours(), now.getMinutes(), now.getSeconds());
  assert.ok(Math.abs(t.getTime() - localAsUtc) < 3000);
});

test('binary and 12-hour modes follow register B', () => {
  const fixed = Date.UTC(2031, 11, 24, 15, 42, 7, 100); // 15:42:07 -> 3 PM
  const rtc = new Rtc({ utc: true, clock: () => fixed });
  assert.equal(rd(rtc, 0x04), 0x15);
  assert.equal(rd(rtc, 0x00), 0x07);
  assert.equal(rd(rtc, 0x09), 0x31);
  assert.equal(rd(rtc, 0x32), 0x20);
  assert.equal(rd(rtc, 0x06), 0x04, 'Wednesday (Sunday = 1)');
  wr(rtc, 0x0b, 0x06); // binary, 24h
  assert.equal(rd(rtc, 0x04), 15);
  assert.equal(rd(rtc, 0x02), 42);
  assert.equal(rd(rtc, 0x08), 12);
  wr(rtc, 0x0b, 0x04); // binary, 12h
  assert.equal(rd(rtc, 0x04), 0x80 | 3);
  wr(rtc, 0x0b, 0x00); // BCD, 12h
  assert.equal(rd(rtc, 0x04), 0x83);
  assert.equal(linuxReadTime(rtc).getTime(), fixed - 100);
});

test('guest setting the time moves an offset, host clock untouched', () => {
  let now = Date.UTC(2024, 0, 1, 0, 0, 0);
  const rtc = new Rtc({ utc: true, clock: () => now });
  // Linux's mc146818_set_time: SET, write fields, clear SET.
  wr(rtc, 0x0b, 0x02 | 0x80);
  assert.equal(rd(rtc, 0x0a) & 0x80, 0, 'no UIP while SET');
  const fields: Array<[number, number]> = [[0, 30], [2, 15], [4, 23], [7, 29], [8, 2], [9, 28], [0x32, 20]];
  for (const [i, v] of fields) wr(rtc, i, tobcd(v));
  now += 5000; // halted: time does not move
  assert.equal(rd(rtc, 0), 0x30);
  wr(rtc, 0x0b, 0x02);
  assert.equal(linuxReadTime(rtc).toISOString(), '2028-02-29T23:15:30.000Z');
  now += 61_000;
  assert.equal(linuxReadTime(rtc).toISOString(), '2028-02-29T23:16:31.000Z');
  // A single field written while running.
  wr(rtc, 0x02, 0x45);
  assert.equal(linuxReadTime(rtc).toISOString(), '2028-02-29T23:45:31.000Z');
  // Invalid dates are ignored.
  const before = rtc.offset;
  wr(rtc, 0x0b, 0x82); wr(rtc, 0x07, 0x31); wr(rtc, 0x08, 0x02); wr(rtc, 0x0b, 0x02);
  assert.equal(rtc.offset, before, '31 February rejected');
  wr(rtc, 0x00, 0x9a); // bad BCD
  wr(rtc, 0x09, 0x29); // 2029-02-29 does not exist
  assert.equal(rtc.offset, before);
});

test('UIP is set only in the last 244 us of a second and never hangs a reader', () => {
  let now = Date.UTC(2024, 0, 1) + 999.9;
  const rtc = new Rtc({ utc: true, clock: () => now });
  assert.equal(rd(rtc, 0x0a), 0x80 | 0x26);
  now += 0.2;
  assert.equal(rd(rtc, 0x0a), 0x26);
  // Real clock: a polling reader finishes quickly.
  const real = new Rtc();
  const t0 = performance.now();
  for (let k = 0; k < 200; k++) while (rd(real, 0x0a) & 0x80) { /* spin */ }
  assert.ok(performance.now() - t0 < 500);
  // Divider held in reset: no updates, no UIP.
  now = Date.UTC(2024, 0, 1) + 999.9;
  wr(rtc, 0x0a, 0x76);
  assert.equal(rd(rtc, 0x0a), 0x76);
});

test('CMOS: NVRAM, NMI bit masked, memory size fields', () => {
  const rtc = new Rtc({ memBytes: 6 * 1024 ** 3 });
  // low = 3 GiB: (3 GiB - 16 MiB) / 64 KiB = 0xbf00; high = 3 GiB / 64 KiB = 0xc000
  assert.equal(rd(rtc, 0x34) | (rd(rtc, 0x35) << 8), 0xbf00);
  assert.equal(rd(rtc, 0x5b) | (rd(rtc, 0x5c) << 8) | (rd(rtc, 0x5d) << 16), 0xc000);
  const small = new Rtc({ memBytes: 8 * 1024 * 1024 });
  assert.equal(rd(small, 0x34), 0);
  assert.equal(rd(small, 0x5b), 0);
  rtc.write(0, 1, 0x80 | 0x40); // NMI disable + index 0x40
  rtc.write(1, 1, 0xab);
  assert.equal(rd(rtc, 0x40), 0xab);
  assert.equal(rtc.read(0, 1), 0xff, 'index port is write-only');
  wr(rtc, 0x0d, 0); wr(rtc, 0x0c, 0xff);
  assert.equal(rd(rtc, 0x0d), 0x80);
});

test('register C: update flag, IRQ8 with UIE, cleared by reading C', () => {
  let now = Date.UTC(2024, 0, 1, 0, 0, 0, 500);
  const levels: boolean[] = [];
  const irq: IrqLine = { set: (l) => { levels.push(l); } };
  const rtc = new Rtc({ utc: true, irq, clock: () => now });
  assert.equal(rd(rtc, 0x0c), 0);
  now += 1000;
  assert.equal(rd(rtc, 0x0c), 0x10, 'UF without UIE, no IRQF');
  wr(rtc, 0x0b, 0x02 | 0x10 | 0x20); // UIE + AIE
  wr(rtc, 0x01, 0xc0); wr(rtc, 0x03, 0xc0); wr(rtc, 0x05, 0xc0); // alarm every second
  now += 1000;
  assert.equal(rd(rtc, 0x0c), 0x80 | 0x20 | 0x10);
  assert.deepEqual(levels, [true, false]);
  rtc.close();
});

test('hostile guest: 1e5 random accesses never throw', () => {
  const rtc = new Rtc({ irq: { set: () => undefined } });
  let seed = 99;
  const rnd = () => { seed = (seed * 1103515245 + 12345) >>> 0; return seed; };
  for (let i = 0; i < 100_000; i++) {
    const off = (rnd() % 4) - 1;
    const size = [1, 2, 4][rnd() % 3]!;
    if (rnd() & 1) rtc.read(off, size); else rtc.write(off, size, rnd());
  }
  rtc.close();
  // Still a sane clock device afterwards.
  wr(rtc, 0x0b, 0x02); wr(rtc, 0x0a, 0x26);
  assert.equal(rd(rtc, 0x0d), 0x80);
});
