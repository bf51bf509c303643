/**
 * An I/O APIC in user space (x86.irqchip=user), on the device thread's MMIO
 * bus at 0xfec00000: 24 pins, the redirection table, edge and level
 * triggering with remote IRR (a level pin still asserted at EOI is sent
 * again). Levels are logical (asserted or not), as KVM_IRQ_LINE's are.
 * Offset 0x40 is the EOI register of later I/O APICs: the vCPU threads send
 * a level-triggered EOI there (a posted write, in order with the vCPU's
 * other device writes); a guest's write there is that same harmless EOI.
 */
import type { ApicRouter } from './router.js';

export const IOAPIC_PINS = 24;
/** KVM's: version 0x11, 24 redirection entries */
const VERSION = 0x11 | ((IOAPIC_PINS - 1) << 16);
const MASKED = 0x10000n;
const REMOTE_IRR = 0x4000n;
const LEVEL = 0x8000n;
/** writable bits: vector, delivery and destination mode, polarity, trigger, mask, destination */
const WRITABLE = 0xff000000_0001afffn;
export const IOAPIC_EOI_OFFSET = 0x40;

export class Ioapic {
  private sel = 0;
  private id = 0;
  readonly redir: bigint[] = Array.from({ length: IOAPIC_PINS }, () => MASKED);
  /** the line levels (bit per pin) */
  private levels = 0;

  constructor(private readonly router: ApicRouter) {}

  read(offset: number, size: number): number {
    if (size !== 4) return 0xffffffff;
    if (offset === 0) return this.sel;
    if (offset !== 0x10) return 0;
    const r = this.sel;
    if (r === 0) return this.id;
    if (r === 1) return VERSION;
    if (r === 2) return this.id;
    const pin = (r - 0x10) >> 1;
    if (r < 0x10 || pin >= IOAPIC_PINS) return 0xffffffff;
    return Number((this.redir[pin]! >> ((r & 1) === 1 ? 32n : 0n)) & 0xffffffffn);
  }

  write(offset: number, size: number, value: number): void {
    if (size !== 4) return;
    if (offset === 0) { this.sel = value & 0xff; return; }
    if (offset === IOAPIC_EOI_OFFSET) { this.eoi(value & 0xff); return; }
    if (offset !== 0x10) return;
    const r = this.sel;
    if (r === 0) { this.id = value & 0x0f000000; return; }
    const pin = (r - 0x10) >> 1;
    if (r < 0x10 || pin >= IOAPIC_PINS) return;
    const old = this.redir[pin]!;
    const hi = (r & 1) === 1;
    const v = BigInt(value >>> 0);
    let e = hi ? (old & 0xffffffffn) | (v << 32n) : (old & 0xffffffff00000000n) | v;
    e = (e & WRITABLE) | (old & REMOTE_IRR);
    if ((e & LEVEL) === 0n) e &= ~REMOTE_IRR; // an edge pin has no remote IRR
    this.redir[pin] = e;
    // unmasking an asserted level pin delivers it now
    if ((e & LEVEL) !== 0n && this.asserted(pin)) this.service(pin);
  }

  private asserted(pin: number): boolean { return (this.levels & (1 << pin)) !== 0; }

  /** A device's line: `level` asserted or not. */
  setIrq(pin: number, level: boolean): void {
    if (!Number.isInteger(pin) || pin < 0 || pin >= IOAPIC_PINS) return;
    const was = this.asserted(pin);
    if (level) this.levels |= 1 << pin; else this.levels &= ~(1 << pin);
    const e = this.redir[pin]!;
    if ((e & LEVEL) !== 0n) { if (level) this.service(pin); } else if (level && !was) this.service(pin);
  }

  private service(pin: number): void {
    const e = this.redir[pin]!;
    if ((e & MASKED) !== 0n || (e & REMOTE_IRR) !== 0n) return;
    const level = (e & LEVEL) !== 0n;
    if (level) this.redir[pin] = e | REMOTE_IRR;
    const lo = Number(e & 0xffffffffn);
    this.router.deliver({ dest: Number(e >> 56n), logical: (lo & 0x800) !== 0, mode: (lo >> 8) & 7, vector: lo & 0xff, level });
  }

  /** A local APIC's EOI of a level-triggered `vector`: clear remote IRR, send again if still asserted. */
  eoi(vector: number): void {
    for (let pin = 0; pin < IOAPIC_PINS; pin++) {
      const e = this.redir[pin]!;
      if ((e & REMOTE_IRR) === 0n || Number(e & 0xffn) !== vector) continue;
      this.redir[pin] = e & ~REMOTE_IRR;
      if (this.asserted(pin)) this.service(pin);
    }
  }
}
