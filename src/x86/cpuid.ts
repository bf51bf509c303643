/**
 * The guest CPUID policy: what the host's KVM supports, with the topology
 * of `-c` written in (APIC IDs, leaf 0xB, AMD core counts), the hypervisor
 * bit set, and per-vendor leaves kept consistent.
 */
import type { CpuidEntry } from '../kvm/abi.js';

export interface Topology { cpus: number; sockets: number; cores: number; threads: number }

const bitsFor = (n: number): number => (n <= 1 ? 0 : Math.ceil(Math.log2(n)));

export function vendorOf(entries: CpuidEntry[]): string {
  const e = entries.find((x) => x.function === 0);
  if (!e) return 'unknown';
  const b = Buffer.alloc(12);
  b.writeUInt32LE(e.ebx, 0); b.writeUInt32LE(e.edx, 4); b.writeUInt32LE(e.ecx, 8);
  return b.toString('latin1');
}

export interface CpuidOptions {
  /** hide CMPXCHG16B: software-emulated KVMs cannot run it */
  hideCx16?: boolean;
  /**
   * Offer the TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER): KVM emulates
   * it in the in-kernel LAPIC but leaves the bit out of its supported list.
   * Linux then skips calibrating the LAPIC timer at boot, as under QEMU.
   */
  tscDeadline?: boolean;
  /**
   * The local APIC is tshyve's (x86.irqchip=user): no x2APIC (its MSRs are
   * not emulated) and none of KVM's paravirtual features that need KVM's
   * own APIC (PV EOI, PV unhalt, PV IPIs and yield, async page faults by
   * interrupt, halt-poll control).
   */
  userApic?: boolean;
}

/** KVM_CPUID_FEATURES (0x40000001) EAX bits that need the in-kernel local APIC: async PF (4), PV EOI (6), PV unhalt (7), async PF vmexit (10), PV send IPI (11), poll control (12), PV sched yield (13), async PF int (14). */
const KVM_FEATURES_IN_KERNEL_APIC = (1 << 4) | (1 << 6) | (1 << 7) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14);

/** CPUID entries for vCPU `index` of a VM with topology `topo`. */
export function guestCpuid(supported: CpuidEntry[], index: number, topo: Topology, opts: CpuidOptions = {}): CpuidEntry[] {
  const amd = vendorOf(supported) === 'AuthenticAMD';
  const threadBits = bitsFor(topo.threads);
  const coreBits = bitsFor(topo.cores);
  const perPkg = topo.threads * topo.cores;
  const apicId = index; // APIC IDs are dense 0..n-1, matching the MADT
  const out: CpuidEntry[] = [];
  for (const src of supported) {
    const e = { ...src };
    switch (e.function) {
      case 1:
        e.ebx = (e.ebx & 0x0000ffff) | ((Math.min(perPkg, 255) & 0xff) << 16) | ((apicId & 0xff) << 24);
        e.ecx |= 1 << 31; // running under a hypervisor
        if (opts.hideCx16) e.ecx &= ~(1 << 13);
        if (opts.tscDeadline) e.ecx |= 1 << 24;
        if (opts.userApic) e.ecx &= ~((1 << 21) | (1 << 24)); // x2APIC, TSC-deadline
        if (perPkg > 1) e.edx |= 1 << 28; else e.edx &= ~(1 << 28);
        break;
      case 4: // Intel deterministic cache parameters: cores per package
        if (!amd && (e.eax & 0x1f) !== 0) {
          e.eax = (e.eax & 0x3ffffff) | (((topo.cores - 1) & 0x3f) << 26);
          // logical processors sharing the cache: keep L1/L2 per core, L3 per package
          const level = (e.eax >> 5) & 7;
          const sharing = level >= 3 ? perPkg : topo.threads;
          e.eax = (e.eax & ~(0xfff << 14)) | (((sharing - 1) & 0xfff) << 14);
        }
        break;
      case 0xb:
      case 0x1f:
        if (e.index === 0) {
          e.eax = threadBits; e.ebx = topo.threads; e.ecx = (1 << 8) | 0;
        } else if (e.index === 1) {
          e.eax = threadBits + coreBits; e.ebx = perPkg; e.ecx = (2 << 8) | 1;
        } else {
          e.eax = 0; e.ebx = 0; e.ecx = e.index & 0xff;
        }
        e.edx = apicId;
        break;
      case 0x40000001:
        if (opts.userApic) e.eax &= ~KVM_FEATURES_IN_KERNEL_APIC;
        break;
      case 0x80000001:
        if (amd && perPkg > 1) e.ecx |= 1 << 1; // CmpLegacy
        break;
      case 0x80000008:
        if (amd) e.ecx = (e.ecx & ~0xf0ff) | ((perPkg - 1) & 0xff) | ((threadBits + coreBits) << 12);
        break;
      case 0x8000001e:
        if (amd) {
          e.eax = apicId;
          e.ebx = (e.ebx & ~0xffff) | (((topo.threads - 1) & 0xff) << 8) | ((apicId >> threadBits) & 0xff);
          e.ecx = (e.ecx & ~0xff) | Math.floor(index / perPkg);
        }
        break;
      default:
        break;
    }
    out.push(e);
  }
  // Leaf 0xB must exist for x2APIC topology; add it when the host list lacks it.
  if (!out.some((e) => e.function === 0xb)) {
    out.push({ function: 0xb, index: 0, flags: 1, eax: threadBits, ebx: topo.threads, ecx: 1 << 8, edx: apicId });
    out.push({ function: 0xb, index: 1, flags: 1, eax: threadBits + coreBits, ebx: perPkg, ecx: (2 << 8) | 1, edx: apicId });
  }
  return out;
}

/**
 * XCR0 as a bootloader leaves it for Linux: every user state component the
 * guest's CPUID offers (leaf 0xD.0 EDX:EAX, x87 always); undefined without
 * XSAVE. KVM sizes leaf 0xD.0 EBX (the save area for the components XCR0
 * enables) from the vCPU's XCR0 as it knows it, and Linux checks that size
 * against the components the leaf lists. In the nested lab KVM does not see
 * the guest's own XSETBV: EBX stayed at the reset value's 576 bytes against
 * the 2696 of x87|SSE|AVX|PKRU, and the guest, under QEMU as under tshyve,
 * warned "XSAVE consistency problem" and turned XSAVE off.
 */
export function bootXcr0(cpuid: readonly CpuidEntry[]): bigint | undefined {
  const l1 = cpuid.find((e) => e.function === 1);
  const xsave = cpuid.find((e) => e.function === 0xd && e.index === 0);
  if (!l1 || (l1.ecx & (1 << 26)) === 0 || !xsave) return undefined;
  return (BigInt(xsave.edx >>> 0) << 32n) | BigInt(xsave.eax >>> 0) | 1n;
}
