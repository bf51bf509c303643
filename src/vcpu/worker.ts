/**
 * The body of one vCPU thread: KVM_RUN in a loop. It knows no devices:
 * I/O exits go through the mailbox to the main thread; rare events are
 * posted as messages. A kick (SIG_KICK + immediate_exit) makes KVM_RUN
 * return so the thread can pause or stop.
 */
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { libc, errno, setThreadName, EINTR, EAGAIN } from '../host/libc.js';
import { KVM, EXIT, EXIT_NAMES, RUN } from '../kvm/abi.js';
import { mapKvmRun, VcpuFd } from '../kvm/kvm.js';
import { saveVcpu } from '../snapshot/kvm-state.js';
import { StateWriter } from '../snapshot/state.js';
import { ShadowRegisters } from './shadow.js';
import { UserApic } from './user-apic.js';
import { IOAPIC_ADDR } from '../x86/layout.js';
import { IOAPIC_EOI_OFFSET } from '../x86/apic/ioapic.js';
import {
  MB, DB, MbState, MbKind, CtlReq, CtlState, RING_ENTRIES, RING_WORDS, RING_SEQ, newMailbox,
  type CaptureRequest, type VcpuEvent, type VcpuWorkerData,
} from './mailbox.js';

const wd = workerData as VcpuWorkerData;
const post = (e: VcpuEvent) => parentPort!.postMessage(e);
const mb = newMailbox(wd.mailbox);
const w = mb.words;
const doorbell = new Int32Array(wd.doorbell);
const run = mapKvmRun(wd.vcpuFd, wd.runSize);
const runBytes = new Uint8Array(run.buffer);
const shadow = new ShadowRegisters(wd.shadow);
/** the port all queued posted writes go to; -1 none queued, -2 several or MMIO */
let queuedPort = -1;
let head = 0;

setThreadName(`vcpu${wd.index}`);
Atomics.store(w, MB.TID, libc.gettid());
post({ type: 'started', index: wd.index, tid: Atomics.load(w, MB.TID), ready: performance.now() });

/** x86.irqchip=user: this vCPU's local APIC, served here */
const apic = wd.apic && new UserApic({
  index: wd.index, vcpuFd: wd.vcpuFd, runSize: wd.runSize, run, pages: wd.apic.pages, vcpuFds: wd.apic.vcpuFds,
  // to the IOAPIC on the device thread, in order with this vCPU's other writes
  levelEoi: (vector) => access(MbKind.MMIO, 1, IOAPIC_ADDR + IOAPIC_EOI_OFFSET, 4, new Uint8Array([vector, 0, 0, 0])),
});

/** Wait until the device thread has served every posted write. */
function drainPosted(): void {
  if (queuedPort === -1) return;
  for (let i = 0; i < 2000 && Atomics.load(w, MB.TAIL) !== head; i++);
  for (let t; (t = Atomics.load(w, MB.TAIL)) !== head;) Atomics.wait(w, MB.TAIL, t, 1000);
  queuedPort = -1;
}

function ring(): void {
  Atomics.add(doorbell, DB.RING, 1);
  Atomics.notify(doorbell, DB.RING);
}

/** Queue a write for the device thread and return to the guest at once. */
function postWrite(kind: MbKind, addr: number, size: number, data: Uint8Array): void {
  // Full ring: wait for the device thread to make room.
  for (let t; head - (t = Atomics.load(w, MB.TAIL)) >= RING_ENTRIES;) Atomics.wait(w, MB.TAIL, t, 1000);
  const wasEmpty = Atomics.load(w, MB.TAIL) === head;
  const o = MB.RING + (head % RING_ENTRIES) * RING_WORDS;
  // Number and publish the write under the lock all vCPUs share, so that
  // the device thread can put every vCPU's writes back in guest order. The
  // section is a few stores: spin, and only then sleep.
  for (let i = 0; Atomics.compareExchange(doorbell, DB.LOCK, 0, 1) !== 0; i++) {
    if (i > 1000) Atomics.wait(doorbell, DB.LOCK, 1, 1);
  }
  w[o + RING_SEQ] = doorbell[DB.SEQ]!;
  doorbell[DB.SEQ] = (doorbell[DB.SEQ]! + 1) | 0;
  w[o] = (kind << 8) | size;
  w[o + 1] = addr | 0; w[o + 2] = Math.floor(addr / 0x100000000) | 0;
  const dv = new DataView(data.buffer, data.byteOffset, size);
  w[o + 3] = size >= 4 ? dv.getInt32(0, true) : size === 2 ? dv.getUint16(0, true) : dv.getUint8(0);
  w[o + 4] = size === 8 ? dv.getInt32(4, true) : 0;
  head++;
  Atomics.store(w, MB.HEAD, head);
  Atomics.store(doorbell, DB.LOCK, 0);
  Atomics.notify(doorbell, DB.LOCK, 1);
  const port = kind === MbKind.PIO ? addr : -2;
  queuedPort = wasEmpty || queuedPort === -1 ? port : queuedPort === port ? port : -2;
  // Always notify: skipping it while the ring looked busy loses the wake-up
  // when the device thread goes to sleep in between.
  ring();
}

const unposted = wd.unpostedMmio;
/** A write to an MMIO range that must not be posted (see Bus.register). */
function unpostedMmio(addr: number): boolean {
  for (let i = 0; i < unposted.length; i += 2) if (addr >= unposted[i]! && addr < unposted[i + 1]!) return true;
  return false;
}

/** Hand one access to the device thread; reads wait for the answer, writes are posted (but for unposted ranges). */
function access(kind: MbKind, dir: number, addr: number, size: number, data: Uint8Array): void {
  if (dir === 1 && wd.postWrites && !(kind === MbKind.MMIO && unposted.length > 0 && unpostedMmio(addr))) { postWrite(kind, addr, size, data); return; }
  if (kind === MbKind.PIO && dir === 0 && size === 1) {
    const v = shadow.lookup(addr, Atomics.load(w, MB.TAIL) === head ? -1 : queuedPort);
    if (v !== undefined) { data[0] = v; return; }
  }
  drainPosted();
  w[MB.KIND] = kind; w[MB.DIR] = dir; w[MB.SIZE] = size;
  w[MB.ADDR_LO] = addr | 0; w[MB.ADDR_HI] = Math.floor(addr / 0x100000000) | 0;
  if (dir === 1) mb.data.set(data.subarray(0, size));
  Atomics.store(w, MB.STATE, MbState.REQUEST);
  ring();
  // A short spin first: the answer usually comes within microseconds, and
  // sleeping costs a thread wake-up on each side.
  for (let i = 0; i < 2000 && Atomics.load(w, MB.STATE) === MbState.REQUEST; i++);
  while (Atomics.load(w, MB.STATE) === MbState.REQUEST) Atomics.wait(w, MB.STATE, MbState.REQUEST, 1000);
  if (dir === 0) data.set(mb.data.subarray(0, size));
  Atomics.store(w, MB.STATE, MbState.IDLE);
}

function handleIo(): void {
  const dir = run.getUint8(RUN.IO_DIRECTION);
  const size = run.getUint8(RUN.IO_SIZE);
  const port = run.getUint16(RUN.IO_PORT, true);
  const count = run.getUint32(RUN.IO_COUNT, true);
  const off = Number(run.getBigUint64(RUN.IO_DATA_OFFSET, true));
  for (let i = 0; i < count; i++) {
    access(MbKind.PIO, dir, port, size, runBytes.subarray(off + i * size, off + (i + 1) * size));
  }
}

function handleMmio(): void {
  const addr = Number(run.getBigUint64(RUN.MMIO_PHYS_ADDR, true));
  const len = run.getUint32(RUN.MMIO_LEN, true);
  const isWrite = run.getUint8(RUN.MMIO_IS_WRITE);
  if (apic?.mmio(addr, isWrite === 1, Math.min(len, 8), runBytes.subarray(RUN.MMIO_DATA, RUN.MMIO_DATA + 8))) return;
  access(MbKind.MMIO, isWrite ? 1 : 0, addr, Math.min(len, 8), runBytes.subarray(RUN.MMIO_DATA, RUN.MMIO_DATA + 8));
}

let request: CaptureRequest = { seq: 0, msrs: [] };
/**
 * Read this vCPU's KVM state here, on its own thread (all vCPUs at once,
 * with code this thread has run before), and post it; `then` is the request
 * that follows unless the main thread has made another meanwhile.
 */
function capture(req: CtlReq, then: CtlReq): void {
  for (let m; (m = receiveMessageOnPort(parentPort!)) !== undefined;) request = m.message as CaptureRequest;
  const { seq } = request;
  try {
    const sw = new StateWriter();
    saveVcpu(sw, new VcpuFd(wd.vcpuFd), request.msrs);
    post({ type: 'state', index: wd.index, seq, state: sw.obj });
  } catch (e) {
    post({ type: 'state', index: wd.index, seq, error: (e as Error).message });
  }
  Atomics.compareExchange(w, MB.CTL_REQ, req, then);
}

/** Honour pause/stop/capture requests; returns false when the thread must end. */
function control(): boolean {
  for (;;) {
    const req = Atomics.load(w, MB.CTL_REQ);
    if (req === CtlReq.RUN) { run.setUint8(RUN.IMMEDIATE_EXIT, 0); return true; }
    if (req === CtlReq.REHEARSE) { capture(req, CtlReq.RUN); continue; }
    drainPosted(); // a paused or stopped vCPU has no write in flight

    if (req === CtlReq.STOP) return false;
    // Enter KVM_RUN once with immediate_exit set: KVM completes a port or
    // MMIO read we just answered (it is in kvm_run, not yet in the guest's
    // registers) and returns at once, so a paused vCPU's state is whole.
    run.setUint8(RUN.IMMEDIATE_EXIT, 1);
    libc.ioctlInt(wd.vcpuFd, KVM.RUN, 0);
    Atomics.store(w, MB.CTL_STATE, CtlState.PAUSED);
    Atomics.notify(w, MB.CTL_STATE);
    for (let r; (r = Atomics.load(w, MB.CTL_REQ)) === CtlReq.PAUSE || r === CtlReq.CAPTURE;) {
      if (r === CtlReq.CAPTURE) capture(r, CtlReq.PAUSE); // still parked
      else Atomics.wait(w, MB.CTL_REQ, CtlReq.PAUSE);
    }
    Atomics.store(w, MB.CTL_STATE, CtlState.RUNNING);
    Atomics.notify(w, MB.CTL_STATE);
  }
}

const stopRequested = (): boolean => Atomics.load(w, MB.CTL_REQ) !== CtlReq.RUN;

function loop(): void {
  while (control()) {
    if (apic && !apic.beforeRun(stopRequested)) continue;
    const r = libc.ioctlInt(wd.vcpuFd, KVM.RUN, 0);
    apic?.afterRun();
    if (r < 0) {
      const e = errno();
      if (e === EINTR || e === EAGAIN) continue;
      post({ type: 'error', index: wd.index, message: `KVM_RUN failed: errno ${e}` });
      return;
    }
    const reason = run.getUint32(RUN.EXIT_REASON, true);
    switch (reason) {
      case EXIT.IO: handleIo(); break;
      case EXIT.MMIO: handleMmio(); break;
      case EXIT.HLT: apic?.halt(); break;
      case EXIT.INTR: case EXIT.IRQ_WINDOW_OPEN: break;
      case EXIT.SHUTDOWN: post({ type: 'shutdown', index: wd.index }); return;
      case EXIT.SYSTEM_EVENT:
        post({ type: 'system-event', index: wd.index, event: run.getUint32(RUN.SYSTEM_EVENT_TYPE, true) });
        return;
      case EXIT.INTERNAL_ERROR: {
        const sub = run.getUint32(RUN.INTERNAL_SUBERROR, true);
        const n = Math.min(run.getUint32(RUN.INTERNAL_NDATA, true), 16);
        const data: string[] = [];
        for (let i = 0; i < n; i++) data.push('0x' + run.getBigUint64(RUN.INTERNAL_DATA + i * 8, true).toString(16));
        post({
          type: 'error', index: wd.index,
          message: `KVM internal error, suberror ${sub}${sub === 1 ? ' (instruction emulation failed)' : ''}${data.length ? ` data ${data.join(' ')}` : ''}`,
        });
        return;
      }
      case EXIT.FAIL_ENTRY:
        post({ type: 'error', index: wd.index, message: `VM entry failed, hardware reason 0x${run.getBigUint64(RUN.FAIL_ENTRY_REASON, true).toString(16)}` });
        return;
      default:
        post({ type: 'error', index: wd.index, message: `unhandled KVM exit ${EXIT_NAMES[reason] ?? reason}` });
        return;
    }
  }
}

loop();
apic?.close();
Atomics.store(w, MB.CTL_STATE, CtlState.STOPPED);
Atomics.notify(w, MB.CTL_STATE);
post({ type: 'stopped', index: wd.index });
