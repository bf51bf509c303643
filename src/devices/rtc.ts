/**
 * MC146818 RTC + CMOS at ports 0x70 (index, offset 0) and 0x71 (data,
 * offset 1), after bhyve's vrtc.c/rtc.c. Time registers are computed from
 * the host clock plus an offset on every read, so nothing ticks in the
 * background; a guest that sets the time only moves the offset.
 *
 * - Register B selects BCD/binary (DM) and 12/24 h; reads follow it at once.
 * - SET in register B freezes the time registers (the guest "owns" them);
 *   clearing SET turns what the guest wrote into the new offset.
 * - UIP (register A) reads 1 only in the last 244 us of each second, as on
 *   the chip, so a reader polling for UIP=0 waits at most that long.
 * - Register C: UF/AF are raised at second boundaries (lazily when read; by
 *   a timer when UIE/AIE are enabled and an IRQ line was given), and IRQF
 *   drives the optional IRQ8 line until C is read. Periodic interrupts
 *   (PIE/PF) are not emulated.
 */
import { ByteRegisterDevice, type IrqLine } from '../bus/bus.js';
import type { Snapshottable, StateWriter, StateReader } from '../snapshot/state.js';
import { registerPlatformDevice } from './platform.js';
import { LOW_RAM_MAX } from '../x86/layout.js';

const SEC = 0x00, SEC_ALARM = 0x01, MIN = 0x02, MIN_ALARM = 0x03, HOUR = 0x04, HOUR_ALARM = 0x05;
const DOW = 0x06, DAY = 0x07, MON = 0x08, YEAR = 0x09;
const REG_A = 0x0a, REG_B = 0x0b, REG_C = 0x0c, REG_D = 0x0d;
const CENTURY = 0x32;
const LMEM_LSB = 0x34, LMEM_MSB = 0x35, HMEM_LSB = 0x5b, HMEM_SB = 0x5c, HMEM_MSB = 0x5d;
const TIME_REGS = new Set([SEC, MIN, HOUR, DOW, DAY, MON, YEAR, CENTURY]);

const A_UIP = 0x80, A_DV_MASK = 0x70, A_DV_NORMAL = 0x20;
const B_SET = 0x80, B_AIE = 0x20, B_UIE = 0x10, B_DM_BINARY = 0x04, B_24H = 0x02;
const C_IRQF = 0x80, C_AF = 0x20, C_UF = 0x10;
const D_VRT = 0x80;
const HOUR_PM = 0x80;
const UIP_WINDOW_MS = 0.244;

const M16 = 16 * 1024 * 1024;
const K64 = 64 * 1024;

export interface RtcOptions {
  /** The RTC holds UTC (bhyve -u); otherwise host local time. Default false. */
  utc?: boolean;
  /** Total guest RAM, bytes; split at LOW_RAM_MAX (3 GiB) like the RAM layout. */
  memBytes?: number;
  /** Guest RAM below 4 GiB, bytes (for CMOS 0x34/0x35); overrides memBytes' split. */
  lowMem?: number;
  /** Guest RAM above 4 GiB, bytes (for CMOS 0x5b-0x5d); overrides memBytes' split. */
  highMem?: number;
  /** IRQ8, for update-ended and alarm interrupts. */
  irq?: IrqLine | null;
  /** Host clock in ms since the epoch (may be fractional). Tests inject one. */
  clock?: () => number;
}

interface Fields { sec: number; min: number; hour: number; dow: number; day: number; mon: number; year: number }

const defaultClock = (): number => performance.timeOrigin + performance.now();

export class Rtc extends ByteRegisterDevice implements Snapshottable {
  private readonly cmos = new Uint8Array(128);
  private index = 0;
  private regB = B_24H; // 24 h, BCD: what Linux and FreeBSD expect from a BIOS
  private regC = 0;
  private offsetMs = 0;
  private lastSec: number;
  private irqLevel = false;
  private timer: NodeJS.Timeout | null = null;
  private readonly utc: boolean;
  private readonly irq: IrqLine | null;
  private readonly clock: () => number;

  constructor(opts: RtcOptions = {}) {
    super();
    this.utc = opts.utc ?? false;
    this.irq = opts.irq ?? null;
    this.clock = opts.clock ?? defaultClock;
    this.cmos[REG_A] = A_DV_NORMAL | 0x06; // 32.768 kHz divider, 1024 Hz rate: the PC BIOS default
    const total = opts.memBytes ?? 0;
    const lowMem = opts.lowMem ?? Math.min(total, LOW_RAM_MAX);
    const highMem = opts.highMem ?? Math.max(0, total - LOW_RAM_MAX);
    // bhyve's rtc_init: 64 KiB units above 16 MiB, and above 4 GiB.
    const lo = Math.min(0xffff, Math.max(0, Math.floor((lowMem - M16) / K64)));
    const hi = Math.min(0xffffff, Math.max(0, Math.floor(highMem / K64)));
    this.cmos[LMEM_LSB] = lo & 0xff;
    this.cmos[LMEM_MSB] = lo >>> 8;
    this.cmos[HMEM_LSB] = hi & 0xff;
    this.cmos[HMEM_SB] = (hi >>> 8) & 0xff;
    this.cmos[HMEM_MSB] = hi >>> 16;
    this.lastSec = Math.floor(this.guestMs() / 1000);
  }

  /** Guest RTC time minus host time. */
  get offset(): number { return this.offsetMs; }

  /** The time the guest currently sees. */
  guestTime(): Date { return new Date(Math.floor(this.guestMs())); }

  /** Stop the interrupt timer (VM teardown). */
  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  // The guest's offset from host time is kept, as QEMU does: a restored
  // guest's RTC reads the current time, not the time of the snapshot.
  saveState(w: StateWriter): void {
    w.b64('cmos', this.cmos).u8('index', this.index).u8('regB', this.regB).u8('regC', this.regC)
      .int('offsetMs', Math.round(this.offsetMs));
  }

  restoreState(r: StateReader): void {
    const cmos = r.b64('cmos', 128);
    const index = r.u8('index', 0x7f), regB = r.u8('regB'), regC = r.u8('regC');
    // ~300 years either way: more than a guest can set (years 2000-2099), well inside what a Date holds.
    const off = r.int('offsetMs', -1e13, 1e13);
    this.cmos.set(cmos);
    this.index = index; this.regB = regB; this.regC = regC; this.offsetMs = off;
    this.lastSec = Math.floor(this.guestMs() / 1000);
    this.irqLevel = (this.regC & C_IRQF) === 0; // the opposite of the restored level, so updateIrq drives the line
    this.updateIrq();
    this.schedule();
  }

  protected readByte(port: number): number {
    if (port !== 1) return 0xff; // the index port is write-only
    const i = this.index;
    if (TIME_REGS.has(i)) return this.halted() ? this.cmos[i]! : this.encodeTime(this.regB)[i]!;
    switch (i) {
      case REG_A: return (this.cmos[REG_A]! & ~A_UIP) | (this.uip() ? A_UIP : 0);
      case REG_B: return this.regB;
      case REG_C: {
        this.tick();
        const v = this.regC;
        this.regC = 0; // read clears flags and releases IRQ8
        this.updateIrq();
        return v;
      }
      case REG_D: return D_VRT;
      default: return this.cmos[i]!;
    }
  }

  protected writeByte(port: number, v: number): void {
    if (port === 0) { this.index = v & 0x7f; return; } // bit 7 is NMI disable, not ours
    if (port !== 1) return;
    const i = this.index;
    if (TIME_REGS.has(i)) {
      if (this.halted()) { this.cmos[i] = v; return; }
      const raw = this.encodeTime(this.regB);
      raw[i] = v;
      this.setFromRaw(raw, this.regB);
      return;
    }
    switch (i) {
      case REG_A: this.cmos[REG_A] = v & ~A_UIP; return;
      case REG_B: this.writeRegB(v); return;
      case REG_C: case REG_D: return; // read-only
      default: this.cmos[i] = v;
    }
  }

  private writeRegB(v: number): void {
    if (v & B_SET) v &= ~B_UIE; // the chip clears UIE while SET is on
    const wasHalted = this.halted();
    if (!wasHalted && v & B_SET) {
      // Latch the current time in the new format; the guest edits these bytes.
      const raw = this.encodeTime(v);
      for (const r of TIME_REGS) this.cmos[r] = raw[r]!;
    } else if (wasHalted && !(v & B_SET)) {
      this.setFromRaw(this.cmos, v);
      this.lastSec = Math.floor(this.guestMs() / 1000);
    }
    this.regB = v;
    this.schedule();
  }

  // ---- time ----

  private guestMs(): number { return this.clock() + this.offsetMs; }
  private halted(): boolean { return (this.regB & B_SET) !== 0; }

  private uip(): boolean {
    if (this.halted() || (this.cmos[REG_A]! & A_DV_MASK) !== A_DV_NORMAL) return false;
    const frac = ((this.guestMs() % 1000) + 1000) % 1000;
    return frac >= 1000 - UIP_WINDOW_MS;
  }

  private fields(ms: number): Fields {
    const d = new Date(Math.floor(ms));
    return this.utc
      ? { sec: d.getUTCSeconds(), min: d.getUTCMinutes(), hour: d.getUTCHours(), dow: d.getUTCDay() + 1,
          day: d.getUTCDate(), mon: d.getUTCMonth() + 1, year: d.getUTCFullYear() }
      : { sec: d.getSeconds(), min: d.getMinutes(), hour: d.getHours(), dow: d.getDay() + 1,
          day: d.getDate(), mon: d.getMonth() + 1, year: d.getFullYear() };
  }

  /** The 128-byte register image of the current time (only time indexes filled) in format `b`. */
  private encodeTime(b: number): Uint8Array {
    const f = this.fields(this.guestMs());
    const raw = new Uint8Array(128);
    const bcd = !(b & B_DM_BINARY);
    raw[SEC] = enc(f.sec, bcd);
    raw[MIN] = enc(f.min, bcd);
    raw[HOUR] = encHour(f.hour, bcd, (b & B_24H) !== 0);
    raw[DOW] = enc(f.dow, bcd);
    raw[DAY] = enc(f.day, bcd);
    raw[MON] = enc(f.mon, bcd);
    const y = ((f.year % 10000) + 10000) % 10000;
    raw[YEAR] = enc(y % 100, bcd);
    raw[CENTURY] = enc(Math.floor(y / 100), bcd);
    return raw;
  }

  /** Guest-written time registers become the new offset; nonsense values are ignored (offset kept). */
  private setFromRaw(raw: Uint8Array, b: number): void {
    const bcd = !(b & B_DM_BINARY);
    const sec = dec(raw[SEC]!, bcd), min = dec(raw[MIN]!, bcd);
    const hour = decHour(raw[HOUR]!, bcd, (b & B_24H) !== 0);
    const day = dec(raw[DAY]!, bcd), mon = dec(raw[MON]!, bcd);
    const yy = dec(raw[YEAR]!, bcd), cc = dec(raw[CENTURY]!, bcd);
    if (!(sec <= 59 && min <= 59 && hour <= 23 && day >= 1 && day <= 31 && mon >= 1 && mon <= 12 && yy <= 99 && cc <= 99)) return;
    const year = cc * 100 + yy;
    const d = this.utc ? new Date(Date.UTC(2000, mon - 1, day, hour, min, sec)) : new Date(2000, mon - 1, day, hour, min, sec);
    if (this.utc) d.setUTCFullYear(year, mon - 1, day); else d.setFullYear(year, mon - 1, day); // years < 100 too
    const check = this.utc ? d.getUTCDate() : d.getDate();
    if (Number.isNaN(d.getTime()) || check !== day) return; // e.g. 31 February
    this.offsetMs = d.getTime() - this.clock();
  }

  // ---- update/alarm flags ----

  /** Raise UF (and AF on an alarm match) if a second boundary passed since the last look. */
  private tick(): void {
    if (this.halted()) return;
    const now = Math.floor(this.guestMs() / 1000);
    if (now === this.lastSec) return;
    this.lastSec = now;
    let flags = C_UF;
    const raw = this.encodeTime(this.regB);
    const match = (alarm: number, cur: number): boolean => (this.cmos[alarm]! & 0xc0) === 0xc0 || this.cmos[alarm] === raw[cur];
    if (match(SEC_ALARM, SEC) && match(MIN_ALARM, MIN) && match(HOUR_ALARM, HOUR)) flags |= C_AF;
    this.regC |= flags;
    if (this.regC & this.regB & (C_UF | C_AF)) this.regC |= C_IRQF; // UF/AF line up with UIE/AIE bits
    this.updateIrq();
  }

  private updateIrq(): void {
    const level = (this.regC & C_IRQF) !== 0;
    if (level === this.irqLevel || !this.irq) return;
    this.irqLevel = level;
    this.irq.set(level);
  }

  /** A timer only while the guest wants update/alarm interrupts delivered. */
  private schedule(): void {
    this.close();
    if (!this.irq || this.halted() || !(this.regB & (B_UIE | B_AIE))) return;
    const ms = this.guestMs();
    const wait = 1000 - (((ms % 1000) + 1000) % 1000) + 1;
    this.timer = setTimeout(() => { this.timer = null; this.tick(); this.schedule(); }, wait);
    this.timer.unref();
  }
}

function enc(v: number, bcd: boolean): number {
  return bcd ? ((Math.floor(v / 10) % 10) << 4) | (v % 10) : v & 0xff;
}

/** NaN for an invalid BCD byte, so range checks fail. */
function dec(v: number, bcd: boolean): number {
  if (!bcd) return v;
  const hi = v >> 4, lo = v & 0x0f;
  return hi > 9 || lo > 9 ? NaN : hi * 10 + lo;
}

function encHour(h: number, bcd: boolean, h24: boolean): number {
  if (h24) return enc(h, bcd);
  return enc(h % 12 === 0 ? 12 : h % 12, bcd) | (h >= 12 ? HOUR_PM : 0);
}

function decHour(v: number, bcd: boolean, h24: boolean): number {
  if (h24) return dec(v, bcd);
  const h = dec(v & ~HOUR_PM, bcd);
  if (!(h >= 1 && h <= 12)) return NaN;
  return (h % 12) + (v & HOUR_PM ? 12 : 0);
}

export const RTC_PORT_BASE = 0x70;
export const RTC_PORT_COUNT = 2;

registerPlatformDevice({
  name: 'rtc', kind: 'rtc', node: 'rtc',
  // bhyve's rtc.use_localtime (default true; `-u` sets it false). A restored
  // guest keeps its offset from host time, so it does not describe the guest.
  hostOnlyKeys: ['use_localtime'],
  create: (ctx, node) => {
    const rtc = new Rtc({ utc: !node.getBool('use_localtime', true), memBytes: ctx.memBytes, irq: ctx.irq(8) });
    ctx.pio.register(RTC_PORT_BASE, RTC_PORT_COUNT, rtc, 'rtc');
    return rtc;
  },
});
