/**
 * Interrupt messages to user-space local APICs: the destination a message
 * names (physical or logical, shorthands), posted into each target's page,
 * which is then woken and kicked out of KVM_RUN. One per thread that sends:
 * the device thread (IOAPIC, MSIs) and each vCPU thread (IPIs).
 */
import { EV, LW, REG, postEvent, postVector, wakeOwner } from './lapic-page.js';

export const DELIVERY = { FIXED: 0, LOWEST: 1, SMI: 2, NMI: 4, INIT: 5, SIPI: 6, EXTINT: 7 } as const;

export interface ApicMessage {
  /** 8-bit destination (xAPIC) */
  dest: number;
  logical: boolean;
  /** DELIVERY value */
  mode: number;
  vector: number;
  /** level-triggered (TMR set: the EOI goes back to the IOAPIC) */
  level: boolean;
  /** ICR shorthand: 0 none, 1 self, 2 all including self, 3 all excluding self */
  shorthand?: number;
  /** the sending vCPU, for shorthands */
  source?: number;
}

export class ApicRouter {
  /** messages delivered (for stats and the halt check's activity) */
  delivered = 0;

  /** `kick(i)`: make vCPU i leave KVM_RUN (a no-op for the calling vCPU itself). */
  constructor(readonly pages: readonly Int32Array[], private readonly kick: (i: number) => void) {}

  /** Does vCPU i's APIC accept destination `dest` in this mode? */
  private matches(i: number, dest: number, logical: boolean): boolean {
    const w = this.pages[i]!;
    if (!logical) return dest === 0xff || (Atomics.load(w, REG.ID >> 2) >>> 24) === dest;
    const ldr = Atomics.load(w, REG.LDR >> 2) >>> 24;
    if ((Atomics.load(w, REG.DFR >> 2) >>> 28) === 0xf) return (ldr & dest) !== 0; // flat
    // cluster: high nibble the cluster (0xf: all), low nibble the members
    const cluster = dest >> 4;
    return (cluster === 0xf || cluster === ldr >> 4) && (ldr & dest & 0xf) !== 0;
  }

  /** The vCPUs a message goes to. */
  targets(m: ApicMessage): number[] {
    const n = this.pages.length;
    const all = Array.from({ length: n }, (_, i) => i);
    switch (m.shorthand ?? 0) {
      case 1: return m.source !== undefined ? [m.source] : [];
      case 2: return all;
      case 3: return all.filter((i) => i !== m.source);
      default: break;
    }
    const t = all.filter((i) => this.matches(i, m.dest & 0xff, m.logical));
    // lowest priority: one of them (the first; KVM's arbitration is not architectural either)
    return m.mode === DELIVERY.LOWEST && t.length > 1 ? [t[0]!] : t;
  }

  deliver(m: ApicMessage): void {
    for (const i of this.targets(m)) {
      const w = this.pages[i]!;
      switch (m.mode) {
        case DELIVERY.FIXED: case DELIVERY.LOWEST:
          if (!postVector(w, m.vector, m.level)) continue;
          break;
        case DELIVERY.NMI: postEvent(w, EV.NMI); break;
        case DELIVERY.INIT: postEvent(w, EV.INIT); break;
        case DELIVERY.SIPI: postEvent(w, EV.SIPI, m.vector); break;
        default: continue; // SMI, ExtINT: no SMM, no PIC
      }
      this.delivered++;
      wakeOwner(w);
      this.kick(i);
    }
  }

  /** An MSI write (address 0xfeeXXXXX, data): Intel SDM 11.11. */
  msi(address: bigint | number, data: number): void {
    const a = Number(BigInt(address) & 0xffffffffn);
    if ((a >>> 20) !== 0xfee) return; // not an interrupt message: dropped, as a DMA write nowhere
    this.deliver({
      dest: (a >>> 12) & 0xff, logical: (a & 4) !== 0, mode: (data >> 8) & 7, vector: data & 0xff, level: ((data >> 15) & 1) === 1,
    });
  }
}

/** The tid to kick for vCPU i's page, 0 when its thread is not running. */
export const ownerTid = (w: Int32Array): number => Atomics.load(w, LW.TID);
