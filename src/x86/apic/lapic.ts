/**
 * A local APIC in user space (x86.irqchip=user), as its own vCPU's thread
 * sees it: register reads and writes, the priority logic that says which
 * interrupt the vCPU takes next, EOI, the ICR's IPIs, and the timer
 * (one-shot and periodic at KVM's 1 GHz bus clock). Its state is the shared
 * page of lapic-page.ts; time comes from `now()` (ns) so tests can fake it.
 */
import { LAPIC_PAGE_BYTES, LW, REG, highestVector, vecBit, vecWord } from './lapic-page.js';
import type { ApicMessage } from './router.js';

/** KVM's version register: 0x14, max LVT entry 5 (six LVTs). */
export const LAPIC_VERSION = 0x50014;
const MASKED = 0x10000;
const LVTS = [REG.LVT_TIMER, REG.LVT_THERMAL, REG.LVT_PERF, REG.LVT_LINT0, REG.LVT_LINT1, REG.LVT_ERROR, REG.LVT_CMCI];
/** writable bits of each LVT (vector, delivery mode, polarity, trigger, mask, timer mode) */
const LVT_BITS: Record<number, number> = {
  [REG.LVT_TIMER]: 0x700ff, [REG.LVT_THERMAL]: 0x107ff, [REG.LVT_PERF]: 0x107ff, [REG.LVT_LINT0]: 0x1a7ff,
  [REG.LVT_LINT1]: 0x1a7ff, [REG.LVT_ERROR]: 0x100ff, [REG.LVT_CMCI]: 0x107ff,
};
const TIMER_PERIODIC = 1;
/** A periodic timer never fires more often than this (ns): a guest's tiny period is not a host-thread storm. */
const MIN_PERIOD_NS = 10_000;

/** A page's power-on registers: APIC ID `index`, flat logical mode, software-disabled, every LVT masked. */
export function resetLapicPage(w: Int32Array, index: number): void {
  for (let i = 0; i < LAPIC_PAGE_BYTES >> 2; i++) Atomics.store(w, i, 0);
  const set = (off: number, v: number) => Atomics.store(w, off >> 2, v | 0);
  set(REG.ID, index << 24);
  set(REG.VERSION, LAPIC_VERSION);
  set(REG.DFR, 0xffffffff);
  set(REG.SVR, 0xff);
  for (const r of LVTS) set(r, MASKED);
}

export interface LapicHooks {
  /** an IPI from the ICR */
  send(m: ApicMessage): void;
  /** EOI of a level-triggered vector: the IOAPIC clears its remote IRR */
  levelEoi(vector: number): void;
}

export class Lapic {
  /** when the timer fires next (ns on now()'s clock), Infinity when it is stopped */
  deadline = Infinity;
  private period = 0;

  constructor(readonly w: Int32Array, readonly index: number, private readonly now: () => number, private readonly hooks: LapicHooks) {}

  private get(off: number): number { return Atomics.load(this.w, off >> 2) >>> 0; }
  private set(off: number, v: number): void { Atomics.store(this.w, off >> 2, v | 0); }

  /** INIT: the power-on state, timer stopped. */
  reset(): void {
    resetLapicPage(this.w, this.index);
    this.deadline = Infinity;
    this.period = 0;
  }

  get tpr(): number { return this.get(REG.TPR) & 0xff; }
  set tpr(v: number) { this.set(REG.TPR, v & 0xff); }

  private ppr(): number {
    const tpr = this.tpr;
    const isr = highestVector(this.w, REG.ISR);
    const isrv = isr < 0 ? 0 : isr & 0xf0;
    return (tpr & 0xf0) >= isrv ? tpr : isrv;
  }

  /** The vector the vCPU should take next (the highest IRR above the PPR's class), or -1. */
  pending(): number {
    const v = highestVector(this.w, REG.IRR);
    return v >= 0 && (v & 0xf0) > (this.ppr() & 0xf0) ? v : -1;
  }

  /** The vCPU took `vector`: IRR to ISR. */
  accept(vector: number): void {
    const bit = vecBit(vector);
    Atomics.and(this.w, vecWord(REG.IRR, vector), ~bit);
    Atomics.or(this.w, vecWord(REG.ISR, vector), bit);
  }

  private eoi(): void {
    const v = highestVector(this.w, REG.ISR);
    if (v < 0) return;
    Atomics.and(this.w, vecWord(REG.ISR, v), ~vecBit(v));
    if ((Atomics.load(this.w, vecWord(REG.TMR, v)) & vecBit(v)) !== 0) this.hooks.levelEoi(v);
  }

  read(off: number): number {
    if ((off & 0xf) !== 0 || off >= 0x400) return 0;
    switch (off) {
      case REG.PPR: return this.ppr();
      case REG.TIMER_CUR: return this.currentCount();
      case REG.EOI: case REG.RRD: return 0;
      default: return this.get(off);
    }
  }

  write(off: number, value: number): void {
    const v = value >>> 0;
    if ((off & 0xf) !== 0 || off >= 0x400) return;
    switch (off) {
      case REG.ID: this.set(off, v & 0xff000000); break;
      case REG.TPR: this.tpr = v; break;
      case REG.EOI: this.eoi(); break;
      case REG.LDR: this.set(off, v & 0xff000000); break;
      case REG.DFR: this.set(off, v | 0x0fffffff); break;
      case REG.SVR:
        this.set(off, v & 0x13ff);
        // software-disabled: every LVT masked
        if ((v & 0x100) === 0) for (const r of LVTS) this.set(r, this.get(r) | MASKED);
        break;
      case REG.ESR: this.set(off, 0); break;
      case REG.ICR_HI: this.set(off, v & 0xff000000); break;
      case REG.ICR_LO: this.set(off, v & ~0x1000); this.ipi(v); break; // delivery status always idle
      case REG.TIMER_INIT: this.set(off, v); this.startTimer(); break;
      case REG.TIMER_DIV: this.set(off, v & 0xb); break;
      default:
        if (LVT_BITS[off] !== undefined) {
          const disabled = (this.get(REG.SVR) & 0x100) === 0;
          const timerModeChange = off === REG.LVT_TIMER && ((this.get(off) ^ v) & 0x60000) !== 0;
          this.set(off, (v & LVT_BITS[off]) | (disabled ? MASKED : 0) | (this.get(off) & 0x1000));
          if (timerModeChange) this.startTimer();
        }
        break; // read-only and reserved registers: writes ignored
    }
  }

  private ipi(lo: number): void {
    const mode = (lo >> 8) & 7;
    // INIT level de-assert (level 0, trigger level): legacy, no effect
    if (mode === 5 && (lo & 0x4000) === 0 && (lo & 0x8000) !== 0) return;
    this.hooks.send({
      dest: this.get(REG.ICR_HI) >>> 24, logical: (lo & 0x800) !== 0, mode, vector: lo & 0xff,
      level: false, shorthand: (lo >> 18) & 3, source: this.index,
    });
  }

  /** bus clock ticks per counter tick (divide configuration) */
  private divisor(): number {
    const d = this.get(REG.TIMER_DIV);
    const n = (d & 3) | ((d & 8) >> 1);
    return n === 7 ? 1 : 2 << n;
  }

  private timerMode(): number { return (this.get(REG.LVT_TIMER) >> 17) & 3; }

  private startTimer(): void {
    const count = this.get(REG.TIMER_INIT);
    const mode = this.timerMode();
    if (count === 0 || mode > TIMER_PERIODIC) { this.deadline = Infinity; this.period = 0; return; }
    const ns = count * this.divisor(); // 1 GHz bus: one tick per ns
    this.period = mode === TIMER_PERIODIC ? Math.max(ns, MIN_PERIOD_NS) : 0;
    this.deadline = this.now() + ns;
  }

  private currentCount(): number {
    if (this.deadline === Infinity) return 0;
    const left = this.deadline - this.now();
    return left <= 0 ? 0 : Math.min(Math.ceil(left / this.divisor()), this.get(REG.TIMER_INIT));
  }

  /** Fire the timer if its deadline has passed; returns the next deadline (or Infinity). */
  tick(): number {
    const now = this.now();
    if (now < this.deadline) return this.deadline;
    const lvt = this.get(REG.LVT_TIMER);
    if ((lvt & MASKED) === 0) this.postLocal(lvt & 0xff);
    if (this.period > 0) {
      this.deadline += this.period;
      // a vCPU that was away for long does not fire the missed periods in a burst
      if (this.deadline <= now) this.deadline = now + this.period;
    } else {
      this.deadline = Infinity;
    }
    return this.deadline;
  }

  /** A local interrupt (timer, LVT): edge, into the IRR. */
  private postLocal(vector: number): void {
    if (vector < 16) { this.set(REG.ESR, this.get(REG.ESR) | 0x40); return; }
    Atomics.and(this.w, vecWord(REG.TMR, vector), ~vecBit(vector));
    Atomics.or(this.w, vecWord(REG.IRR, vector), vecBit(vector));
  }

  /** The thread's kernel tid, published for kicks (0: not running). */
  publishTid(tid: number): void { Atomics.store(this.w, LW.TID, tid); }
}
