/**
 * A vCPU thread's side of x86.irqchip=user (no in-kernel local APIC): its
 * local APIC's MMIO, served in this thread; interrupt injection before each
 * KVM_RUN (KVM_INTERRUPT when the guest can take one, else an interrupt
 * window); HLT, which KVM now returns to user space, and the wait for SIPI
 * of an application processor, both as waits on the APIC page's wake word;
 * INIT, SIPI and NMI; the APIC timer, whose deadline a POSIX timer signals
 * so that KVM_RUN returns on time.
 */
import { libc, SIG_KICK } from '../host/libc.js';
import { ThreadTimer } from '../host/thread-timer.js';
import { RUN, type Regs, type Sregs } from '../kvm/abi.js';
import { VcpuFd } from '../kvm/kvm.js';
import { LAPIC_ADDR, LAPIC_SIZE } from '../x86/layout.js';
import { Lapic } from '../x86/apic/lapic.js';
import { EV, LW, RunState } from '../x86/apic/lapic-page.js';
import { ApicRouter } from '../x86/apic/router.js';
import { apicKicker } from './apic-kick.js';

/** How often a timer signal that found the thread outside KVM_RUN is sent again (ns). */
const TIMER_REPEAT_NS = 1_000_000;
const nowNs = (): number => performance.now() * 1e6;

export interface UserApicSetup {
  index: number;
  vcpuFd: number;
  runSize: number;
  run: DataView;
  /** every vCPU's APIC page, and vCPU fd (this one's at `index`) */
  pages: SharedArrayBuffer[];
  vcpuFds: number[];
  /** an EOI of a level-triggered vector, for the IOAPIC */
  levelEoi(vector: number): void;
}

export class UserApic {
  readonly lapic: Lapic;
  private readonly w: Int32Array;
  private readonly vcpu: VcpuFd;
  private readonly run: DataView;
  private readonly timer: ThreadTimer;
  private armed = Infinity;
  private state: RunState;
  /** an AP's reset registers, for INIT */
  private readonly resetState: { regs: Regs; sregs: Sregs } | undefined;

  constructor(s: UserApicSetup) {
    const pages = s.pages.map((p) => new Int32Array(p));
    this.w = pages[s.index]!;
    this.run = s.run;
    this.vcpu = new VcpuFd(s.vcpuFd);
    const router = new ApicRouter(pages, apicKicker(pages, s.vcpuFds, s.runSize, s.index));
    this.lapic = new Lapic(this.w, s.index, nowNs, { send: (m) => router.deliver(m), levelEoi: s.levelEoi });
    const tid = libc.gettid();
    this.timer = new ThreadTimer(tid, SIG_KICK);
    // Without an in-kernel APIC, KVM does not hold application processors
    // until SIPI: their threads do.
    this.state = s.index === 0 ? RunState.RUNNING : RunState.WAIT_SIPI;
    this.resetState = s.index === 0 ? undefined : { regs: this.vcpu.getRegs(), sregs: this.vcpu.getSregs() };
    Atomics.store(this.w, LW.RUN_STATE, this.state);
    this.lapic.publishTid(tid);
  }

  private setState(s: RunState): void {
    this.state = s;
    Atomics.store(this.w, LW.RUN_STATE, s);
  }

  /**
   * Before KVM_RUN: take posted events, fire the timer, wait while halted or
   * waiting for SIPI, inject what is deliverable. False when `stopRequested`
   * ended a wait (the caller parks or stops, then calls again).
   */
  beforeRun(stopRequested: () => boolean): boolean {
    for (;;) {
      const seen = Atomics.load(this.w, LW.WAKE);
      this.events();
      const next = this.lapic.tick();
      if (this.state === RunState.HALTED && this.lapic.pending() >= 0) this.setState(RunState.RUNNING);
      if (this.state === RunState.RUNNING) {
        this.inject();
        this.arm(next);
        return true;
      }
      if (stopRequested()) return false;
      this.arm(Infinity);
      const ms = next === Infinity ? undefined : Math.max(0, (next - nowNs()) / 1e6);
      Atomics.wait(this.w, LW.WAKE, seen, ms);
    }
  }

  /** After KVM_RUN: the guest's CR8 is the TPR's priority class. */
  afterRun(): void {
    const cr8 = this.run.getUint32(RUN.CR8, true) & 0xf;
    if (this.lapic.tpr >> 4 !== cr8) this.lapic.tpr = cr8 << 4;
  }

  /** A HLT exit: wait for an interrupt (with IF clear, only for NMI, INIT or SIPI). */
  halt(): void {
    this.setState(this.run.getUint8(RUN.IF_FLAG) ? RunState.HALTED : RunState.HALTED_CLI);
  }

  /** Serve an MMIO exit in the local APIC's page; false when it is elsewhere. */
  mmio(addr: number, isWrite: boolean, len: number, data: Uint8Array): boolean {
    if (addr < LAPIC_ADDR || addr >= LAPIC_ADDR + LAPIC_SIZE) return false;
    const off = addr - LAPIC_ADDR;
    const reg = off & 0xff0, shift = (off & 3) * 8;
    if ((off & 0xc) !== 0) { if (!isWrite) data.fill(0, 0, len); return true; } // registers are 16-byte aligned dwords
    const dv = new DataView(data.buffer, data.byteOffset, 8);
    if (isWrite) {
      if (len >= 4 && shift === 0) this.lapic.write(reg, dv.getUint32(0, true)); // narrower writes: ignored, as by KVM
    } else {
      const v = this.lapic.read(reg) >>> shift;
      data.fill(0, 0, len);
      for (let i = 0; i < Math.min(len, 4); i++) data[i] = (v >>> (i * 8)) & 0xff;
    }
    return true;
  }

  private events(): void {
    const ev = Atomics.exchange(this.w, LW.EVENTS, 0);
    if (ev === 0) return;
    // INIT to the bootstrap processor is ignored: it would restart the firmware under the running guest.
    if ((ev & EV.INIT) !== 0 && this.resetState) {
      this.vcpu.setRegs(this.resetState.regs);
      this.vcpu.setSregs(this.resetState.sregs);
      this.lapic.reset();
      this.setState(RunState.WAIT_SIPI);
    }
    if ((ev & EV.SIPI) !== 0 && this.state === RunState.WAIT_SIPI) {
      const v = Atomics.load(this.w, LW.SIPI_VECTOR) & 0xff;
      const s = this.vcpu.getSregs();
      s.cs = { ...s.cs, selector: v << 8, base: BigInt(v << 12) };
      this.vcpu.setSregs(s);
      this.vcpu.setRegs({ ...this.vcpu.getRegs(), rip: 0n });
      this.setState(RunState.RUNNING);
    }
    if ((ev & EV.NMI) !== 0 && this.state !== RunState.WAIT_SIPI) {
      this.vcpu.nmi();
      this.setState(RunState.RUNNING);
    }
  }

  private inject(): void {
    const r = this.run;
    r.setUint32(RUN.CR8, this.lapic.tpr >> 4, true);
    r.setUint32(RUN.CR8 + 4, 0, true);
    const v = this.lapic.pending();
    if (v >= 0 && r.getUint8(RUN.READY_FOR_INTERRUPT_INJECTION) && r.getUint8(RUN.IF_FLAG) && this.vcpu.interrupt(v)) {
      this.lapic.accept(v);
      // KVM holds that one now; it can hold no other until the guest takes it
      r.setUint8(RUN.READY_FOR_INTERRUPT_INJECTION, 0);
    }
    r.setUint8(RUN.REQUEST_INTERRUPT_WINDOW, this.lapic.pending() >= 0 ? 1 : 0);
  }

  /** Have the POSIX timer signal this thread at `deadline` (ns), or not at all. */
  private arm(deadline: number): void {
    if (deadline === this.armed) return;
    this.armed = deadline;
    this.timer.set(deadline === Infinity ? 0 : Math.max(1000, deadline - nowNs()), TIMER_REPEAT_NS);
  }

  /** The thread ends: no more kicks or timer signals for it. */
  close(): void {
    this.lapic.publishTid(0);
    this.timer.delete();
  }
}
