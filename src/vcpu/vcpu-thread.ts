/**
 * Main-thread handle of one vCPU thread: starts the worker, kicks it out of
 * KVM_RUN (SIG_KICK to its tid plus kvm_run.immediate_exit, so a kick that
 * lands just before KVM_RUN is not lost), pauses, resumes and stops it.
 */
import { Worker } from 'node:worker_threads';
import { libc, SIG_KICK } from '../host/libc.js';
import { RUN } from '../kvm/abi.js';
import { mapKvmRun } from '../kvm/kvm.js';
import { wakeOwner } from '../x86/apic/lapic-page.js';
import { MB, CtlReq, CtlState, newMailbox, type CaptureRequest, type Mailbox, type VcpuEvent, type VcpuWorkerData } from './mailbox.js';

let kickHandlerInstalled = false;
/** SIG_KICK needs a handler (a no-op) so that it interrupts rather than kills. */
function installKickHandler(): void {
  if (kickHandlerInstalled) return;
  process.on('SIGUSR2', () => {});
  kickHandlerInstalled = true;
}

export class VcpuThread {
  readonly mailbox: Mailbox = newMailbox();
  private readonly run: DataView;
  private exited: Promise<void> | undefined;
  private worker: Worker | undefined;
  /** told the 'state' the thread posts for request captureSeq */
  private stateWaiter: ((e: Extract<VcpuEvent, { type: 'state' }>) => void) | undefined;
  private captureSeq = 0;

  constructor(
    readonly index: number,
    readonly vcpuFd: number,
    private readonly runSize: number,
    private readonly doorbell: SharedArrayBuffer,
    private readonly shadow: SharedArrayBuffer,
    private readonly posting: { enabled: boolean; unpostedMmio: readonly number[] },
    private readonly onEvent: (e: VcpuEvent) => void,
    /** x86.irqchip=user: the VM's local APIC pages and vCPU fds (VcpuWorkerData.apic) */
    private readonly apic?: VcpuWorkerData['apic'],
  ) {
    this.run = mapKvmRun(vcpuFd, runSize);
  }

  /** Start the thread; `parked`: it parks before it ever enters the guest (pause() then finds it parked). */
  start(parked = false): Promise<void> {
    installKickHandler();
    if (parked) Atomics.store(this.mailbox.words, MB.CTL_REQ, CtlReq.PAUSE);
    const wd: VcpuWorkerData = {
      index: this.index, vcpuFd: this.vcpuFd, runSize: this.runSize,
      mailbox: this.mailbox.words.buffer as SharedArrayBuffer, doorbell: this.doorbell,
      shadow: this.shadow, postWrites: this.posting.enabled, unpostedMmio: this.posting.unpostedMmio,
      ...(this.apic && { apic: this.apic }),
    };
    performance.mark(`vcpu${this.index}:spawn`);
    const worker = this.worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: wd, stdout: false, stderr: false });
    let started!: () => void;
    const ready = new Promise<void>((res) => { started = res; });
    worker.on('message', (e: VcpuEvent) => {
      if (e.type === 'state') { if (e.seq === this.captureSeq) this.stateWaiter?.(e); return; }
      if (e.type === 'started') {
        // a worker's performance clock is the process's
        performance.mark(`vcpu${this.index}:loaded`, { startTime: e.ready });
        performance.mark(`vcpu${this.index}:started`);
        started();
      }
      this.onEvent(e);
    });
    worker.on('error', (err) => this.onEvent({ type: 'error', index: this.index, message: `vCPU thread crashed: ${err.message}` }));
    this.exited = new Promise((res) => worker.once('exit', () => res()));
    return ready;
  }

  get state(): CtlState { return Atomics.load(this.mailbox.words, MB.CTL_STATE) as CtlState; }

  kick(): void {
    this.run.setUint8(RUN.IMMEDIATE_EXIT, 1);
    // a vCPU halted in user space waits on its APIC page, not in KVM_RUN
    if (this.apic) wakeOwner(new Int32Array(this.apic.pages[this.index]!));
    const tid = Atomics.load(this.mailbox.words, MB.TID);
    if (tid > 0 && this.state !== CtlState.STOPPED) libc.tgkill(process.pid, tid, SIG_KICK);
  }

  private async waitState(want: CtlState, timeoutMs: number): Promise<boolean> {
    const w = this.mailbox.words;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = Atomics.load(w, MB.CTL_STATE);
      if (s === want || s === CtlState.STOPPED) return s === want;
      if (Date.now() > deadline) return false;
      // re-kick: a kick can race a vCPU that was between checks
      this.kick();
      const r = Atomics.waitAsync(w, MB.CTL_STATE, s, 20);
      if (r.async) await r.value;
    }
  }

  /** Stop running guest code; resolves when the vCPU is parked. */
  async pause(timeoutMs = 5000): Promise<boolean> {
    Atomics.store(this.mailbox.words, MB.CTL_REQ, CtlReq.PAUSE);
    this.kick();
    return this.waitState(CtlState.PAUSED, timeoutMs);
  }

  /**
   * This vCPU's KVM state (saveVcpu's fields, `msrs` among the MSRs), read
   * on its own thread: `parked` (it must be: a switchover) it stays parked;
   * else it is read between two exits and the vCPU runs on (a rehearsal).
   * undefined when the thread did not answer within timeoutMs (a pause or
   * resume replaced the request); throws what the thread's read threw.
   */
  async captureState(msrs: number[], parked: boolean, timeoutMs: number): Promise<Record<string, unknown> | undefined> {
    if (!this.worker || this.stateWaiter) return undefined;
    const req: CaptureRequest = { seq: ++this.captureSeq, msrs };
    this.worker.postMessage(req);
    let timer: NodeJS.Timeout | undefined;
    const got = new Promise<Extract<VcpuEvent, { type: 'state' }> | undefined>((resolve) => {
      this.stateWaiter = resolve;
      timer = setTimeout(() => resolve(undefined), timeoutMs);
    });
    const want = parked ? CtlReq.CAPTURE : CtlReq.REHEARSE;
    if (Atomics.compareExchange(this.mailbox.words, MB.CTL_REQ, parked ? CtlReq.PAUSE : CtlReq.RUN, want) !== (parked ? CtlReq.PAUSE : CtlReq.RUN)) {
      this.stateWaiter = undefined;
      clearTimeout(timer);
      return undefined;
    }
    if (parked) Atomics.notify(this.mailbox.words, MB.CTL_REQ); else this.kick();
    const e = await got;
    clearTimeout(timer);
    this.stateWaiter = undefined;
    if (e?.error !== undefined) throw new Error(e.error);
    return e?.state;
  }

  resume(): void {
    Atomics.store(this.mailbox.words, MB.CTL_REQ, CtlReq.RUN);
    Atomics.notify(this.mailbox.words, MB.CTL_REQ);
  }

  /**
   * End the thread; resolves true when it has left KVM_RUN and exited. A
   * vCPU that cannot be kicked (some emulated KVMs do not interrupt a halt
   * with interrupts off) is given up on after timeoutMs: it can no longer
   * touch devices, and process exit ends it.
   */
  async stop(timeoutMs = 1000): Promise<boolean> {
    const w = this.mailbox.words;
    Atomics.store(w, MB.CTL_REQ, CtlReq.STOP);
    Atomics.notify(w, MB.CTL_REQ);
    const t0 = Date.now();
    while (this.state !== CtlState.STOPPED && Date.now() - t0 < timeoutMs) {
      this.kick();
      await new Promise((r) => setTimeout(r, 5));
    }
    if (this.state !== CtlState.STOPPED) return false;
    await this.exited;
    return true;
  }
}
