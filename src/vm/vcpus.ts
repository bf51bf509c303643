/**
 * A VM's vCPUs: their boot setup (CPUID, MSRs, FPU, LAPIC), their threads
 * parked and let go by whoever needs them still, and bhyve's halt check.
 */
import { CAP, type Kvm, type VcpuFd } from '../kvm/kvm.js';
import { MP_STATE, type CpuidEntry } from '../kvm/abi.js';
import { log } from '../log.js';
import { bootXcr0, guestCpuid, type Topology } from '../x86/cpuid.js';
import { LAPIC_ADDR } from '../x86/layout.js';
import type { VcpuThread } from '../vcpu/vcpu-thread.js';
import type { HostReport } from './host-check.js';
import type { IrqchipMode } from './irqchip.js';
import { RunState, LW } from '../x86/apic/lapic-page.js';

const APIC_BASE_ENABLE = 1n << 11n;
const APIC_BASE_BSP = 1n << 8n;

const MSR = {
  SYSENTER_CS: 0x174, SYSENTER_ESP: 0x175, SYSENTER_EIP: 0x176,
  STAR: 0xc0000081, LSTAR: 0xc0000082, CSTAR: 0xc0000083, SYSCALL_MASK: 0xc0000084, KERNEL_GS_BASE: 0xc0000102,
  TSC: 0x10, MISC_ENABLE: 0x1a0, MTRR_DEF_TYPE: 0x2ff,
} as const;

/** The CPUID vCPU `i` is given on this host (a migration compares vCPU 0's on both sides). */
export function vcpuCpuid(kvm: Kvm, i: number, topo: Topology, host: HostReport, irqchip: IrqchipMode, supported = kvm.supportedCpuid()): CpuidEntry[] {
  const user = irqchip === 'user';
  return guestCpuid(supported, i, topo, { hideCx16: host.emulated, tscDeadline: !user && kvm.checkExtension(CAP.TSC_DEADLINE_TIMER) > 0, userApic: user });
}

/**
 * CPUID, the MSRs a BIOS would leave, FPU defaults, LINT0 ExtINT and LINT1
 * NMI, on every vCPU; for a Linux kernel, XCR0 as a bootloader leaves it.
 */
export function setupVcpus(kvm: Kvm, fds: readonly VcpuFd[], topo: Topology, host: HostReport, linux: boolean, irqchip: IrqchipMode): void {
  const supported = kvm.supportedCpuid();
  fds.forEach((v, i) => {
    const cpuid = vcpuCpuid(kvm, i, topo, host, irqchip, supported);
    v.setCpuid(cpuid);
    const xcr0 = linux ? bootXcr0(cpuid) : undefined;
    if (xcr0 !== undefined) setXcr0(v, i, xcr0);
    const msrs = [
      { index: MSR.SYSENTER_CS, data: 0n }, { index: MSR.SYSENTER_ESP, data: 0n }, { index: MSR.SYSENTER_EIP, data: 0n },
      { index: MSR.STAR, data: 0n }, { index: MSR.LSTAR, data: 0n }, { index: MSR.CSTAR, data: 0n },
      { index: MSR.SYSCALL_MASK, data: 0n }, { index: MSR.KERNEL_GS_BASE, data: 0n },
      { index: MSR.TSC, data: 0n },
      { index: MSR.MISC_ENABLE, data: 1n }, // fast strings
      { index: MSR.MTRR_DEF_TYPE, data: (1n << 11n) | 6n }, // MTRRs on, default write-back
    ];
    const n = v.setMsrs(msrs);
    if (n !== msrs.length) log('debug', `vCPU ${i}: KVM accepted ${n} of ${msrs.length} boot MSRs`);
    const fpu = Buffer.alloc(416);
    fpu.writeUInt16LE(0x37f, 128); // fcw
    fpu.writeUInt32LE(0x1f80, 408); // mxcsr
    v.setFpu(fpu);
    if (irqchip === 'user') {
      // KVM leaves IA32_APIC_BASE at 0 without its own APIC; firmware finds
      // the APIC there (EDK2's LocalApicLib): the reset value, enabled, BSP flag on vCPU 0.
      const s = v.getSregs();
      s.apicBase = BigInt(LAPIC_ADDR) | APIC_BASE_ENABLE | (i === 0 ? APIC_BASE_BSP : 0n);
      v.setSregs(s);
      return; // LINT0/LINT1: the user-space APIC pages start so (vm/irqchip.ts)
    }
    const lapic = v.getLapic();
    const LVT_LINT0 = 0x350, LVT_LINT1 = 0x360;
    lapic.writeUInt32LE((lapic.readUInt32LE(LVT_LINT0) & ~0x700) | 0x700, LVT_LINT0); // ExtINT
    lapic.writeUInt32LE((lapic.readUInt32LE(LVT_LINT1) & ~0x700) | 0x400, LVT_LINT1); // NMI
    v.setLapic(lapic);
  });
}

/** struct kvm_xcrs with XCR0 alone; a KVM that refuses it leaves the reset value (the guest may then turn XSAVE off). */
function setXcr0(v: VcpuFd, i: number, value: bigint): void {
  const b = Buffer.alloc(392);
  b.writeUInt32LE(1, 0); // nr_xcrs; xcrs[0].xcr = 0 (XCR0)
  b.writeBigUInt64LE(value, 16);
  try {
    v.setXcrs(b);
  } catch (e) {
    log('debug', `vCPU ${i}: KVM refused XCR0 0x${value.toString(16)}: ${(e as Error).message}`);
  }
}

/**
 * The vCPU threads, and who wants them parked: the user (pause), a save,
 * the halt check. They run again only when the last of them lets go, so a
 * halt check that ends during a save cannot set the guest running under it.
 */
export class VcpuHolds {
  threads: VcpuThread[] = [];
  private holds = 0;

  /** `apicPages`: x86.irqchip=user's local APIC pages, whose run states say who is halted */
  constructor(readonly fds: readonly VcpuFd[], private readonly ending: () => boolean, private readonly apicPages?: readonly SharedArrayBuffer[]) {}

  /** vCPU i cannot run: halted with interrupts off, or never started. */
  private stuck(i: number): boolean {
    const page = this.apicPages?.[i];
    if (page) {
      const s = Atomics.load(new Int32Array(page), LW.RUN_STATE);
      return s === RunState.HALTED_CLI || s === RunState.WAIT_SIPI;
    }
    const v = this.fds[i]!;
    const mp = v.getMpState();
    if (mp === MP_STATE.UNINITIALIZED) return true; // never started: cannot run
    return mp === MP_STATE.HALTED && (v.getRegs().rflags & 0x200n) === 0n;
  }

  async hold(timeoutMs?: number): Promise<boolean> {
    this.holds++;
    const ok = await Promise.all(this.threads.map((v) => v.pause(timeoutMs)));
    return !ok.includes(false);
  }

  release(): void {
    if (this.holds > 0) this.holds--;
    if (this.holds === 0 && !this.ending()) for (const v of this.threads) v.resume();
  }

  /** Every vCPU halted with interrupts off (or never started)? Parks them to look. */
  async allHaltedWithInterruptsOff(): Promise<boolean> {
    const parked = await this.hold(500);
    try {
      // A vCPU that cannot be parked (an emulated KVM's halt) tells nothing.
      if (!parked || this.ending()) return false;
      return this.fds.every((_, i) => this.stuck(i));
    } finally {
      this.release();
    }
  }

  /**
   * Where a vCPU stood, for the triple-fault message: its thread has left
   * KVM_RUN, so its registers are what the guest last had.
   */
  describe(i: number): string {
    try {
      const v = this.fds[i]!, r = v.getRegs(), s = v.getSregs();
      const h = (x: bigint | number) => `0x${x.toString(16)}`;
      const ev = v.getVcpuEvents();
      return `rip ${h(r.rip)} rsp ${h(r.rsp)} rflags ${h(r.rflags)} cs ${h(s.cs.selector)} ss ${h(s.ss.selector)} cr0 ${h(s.cr0)} cr2 ${h(s.cr2)} `
        + `cr3 ${h(s.cr3)} cr4 ${h(s.cr4)} efer ${h(s.efer)} idt ${h(s.idt.base)}/${h(s.idt.limit)} gdt ${h(s.gdt.base)}/${h(s.gdt.limit)} `
        + `tr ${h(s.tr.selector)}@${h(s.tr.base)} events ${ev.subarray(0, 32).toString('hex')}`;
    } catch (err) {
      return `registers unreadable: ${(err as Error).message}`;
    }
  }
}

/** What the halt check asks of the VM. */
export interface HaltWatch {
  /** exits, and the work devices do without them (ioeventfd notifies, queues served on their own threads) */
  activity(): number;
  /** false while the user has paused the VM or a save runs */
  mayCheck(): boolean;
  ending(): boolean;
  onHalted(): void;
}

/**
 * bhyve exits 2 when every vCPU has halted with interrupts off (Linux's
 * `halt`). KVM halts in the kernel, so look while the guest is quiet: every
 * `everyMs`, when its activity has not moved, park the vCPUs, read their MP
 * state and IF, and go on. A vCPU halted with interrupts off makes no
 * activity, and a VM busy with disk I/O is not parked every few seconds for
 * nothing.
 */
export function watchForHalt(vcpus: VcpuHolds, everyMs: number, w: HaltWatch): void {
  if (!(everyMs > 0)) return;
  let last = -1, checking = false;
  const check = async () => {
    if (w.ending()) return;
    const now = w.activity();
    if (now === last && !checking && w.mayCheck()) {
      checking = true;
      try {
        if (await vcpus.allHaltedWithInterruptsOff()) { w.onHalted(); return; }
      } finally { checking = false; }
    }
    last = now;
    if (!w.ending()) setTimeout(() => void check(), everyMs).unref();
  };
  setTimeout(() => void check(), everyMs).unref();
}
