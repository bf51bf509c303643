/**
 * The shared state of one user-space local APIC (x86.irqchip=user): the
 * 1 KiB xAPIC register page laid out as KVM's `struct kvm_lapic_state`
 * (register at offset R in word R/4), then a few control words. The vCPU
 * that owns it reads and writes registers (lapic.ts); any thread may post
 * an interrupt into it: set the IRR (and TMR) bit atomically, then wake and
 * kick the owner (router.ts).
 */

export const LAPIC_PAGE_BYTES = 1024;
/** the page and the control words */
export const LAPIC_SAB_BYTES = LAPIC_PAGE_BYTES + 64;

/** Register offsets in the page (Intel SDM vol. 3, table 11-1). */
export const REG = {
  ID: 0x20, VERSION: 0x30, TPR: 0x80, APR: 0x90, PPR: 0xa0, EOI: 0xb0, RRD: 0xc0, LDR: 0xd0, DFR: 0xe0, SVR: 0xf0,
  ISR: 0x100, TMR: 0x180, IRR: 0x200, ESR: 0x280, LVT_CMCI: 0x2f0, ICR_LO: 0x300, ICR_HI: 0x310,
  LVT_TIMER: 0x320, LVT_THERMAL: 0x330, LVT_PERF: 0x340, LVT_LINT0: 0x350, LVT_LINT1: 0x360, LVT_ERROR: 0x370,
  TIMER_INIT: 0x380, TIMER_CUR: 0x390, TIMER_DIV: 0x3e0,
} as const;

/** Control words (Int32 indexes) after the page. */
export const enum LW {
  /** bumped and notified whenever something for the owner arrives (its halt waits on it) */
  WAKE = 256,
  /** the owner thread's kernel tid while it runs (0 before and after), for kicks */
  TID = 257,
  /** EV bits posted to the owner */
  EVENTS = 258,
  /** the vector of the last SIPI */
  SIPI_VECTOR = 259,
  /** the owner's RunState */
  RUN_STATE = 260,
}

export const EV = { INIT: 1, SIPI: 2, NMI: 4 } as const;

/** RUNNING; HALTED (HLT with interrupts on); WAIT_SIPI (an AP before its start-up IPI); HALTED_CLI (HLT with interrupts off) */
export const enum RunState { RUNNING = 0, HALTED = 1, WAIT_SIPI = 2, HALTED_CLI = 3 }

export const newLapicPage = (): Int32Array => new Int32Array(new SharedArrayBuffer(LAPIC_SAB_BYTES));

/** word index of the 32-vector group holding `vector` in the bitmap register at `base` (ISR, TMR, IRR) */
export const vecWord = (base: number, vector: number): number => (base + (vector >> 5) * 16) >> 2;
export const vecBit = (vector: number): number => 1 << (vector & 31);

/** The highest vector set in the bitmap register at `base`, or -1. */
export function highestVector(w: Int32Array, base: number): number {
  for (let g = 7; g >= 0; g--) {
    const v = Atomics.load(w, (base + g * 16) >> 2) >>> 0;
    if (v !== 0) return g * 32 + 31 - Math.clz32(v);
  }
  return -1;
}

/**
 * Post a fixed interrupt from any thread: IRR (and TMR for level) set
 * atomically. Vectors 0-15 are illegal (the SDM's "received illegal
 * vector") and a software-disabled APIC accepts none: both are dropped.
 */
export function postVector(w: Int32Array, vector: number, level: boolean): boolean {
  if (vector < 16 || vector > 255) return false;
  if ((Atomics.load(w, REG.SVR >> 2) & 0x100) === 0) return false;
  const tmr = vecWord(REG.TMR, vector), bit = vecBit(vector);
  if (level) Atomics.or(w, tmr, bit); else Atomics.and(w, tmr, ~bit);
  Atomics.or(w, vecWord(REG.IRR, vector), bit);
  return true;
}

/** Post INIT, SIPI (with its vector) or NMI from any thread. */
export function postEvent(w: Int32Array, ev: number, sipiVector = 0): void {
  if (ev === EV.SIPI) Atomics.store(w, LW.SIPI_VECTOR, sipiVector & 0xff);
  Atomics.or(w, LW.EVENTS, ev);
}

/** Wake the owner if it waits (halted, or waiting for SIPI). */
export function wakeOwner(w: Int32Array): void {
  Atomics.add(w, LW.WAKE, 1);
  Atomics.notify(w, LW.WAKE);
}
