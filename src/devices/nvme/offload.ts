/**
 * The I/O queues on the controller's I/O thread (io-thread.ts), as the
 * controller on the main thread drives them: each IoQueueControl method is
 * a synchronous call (message, eventfd, bounded wait for the answer), MMIO
 * doorbell values go through shared memory and a kick eventfd, and
 * interrupts the thread may not send itself (a masked vector, no irqfd)
 * come back as messages. A checkpoint's work on the disk is a call too: the
 * thread's instance owns the image.
 */
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import { createEventfd, signalEventfd } from '../../host/eventfd.js';
import { libc } from '../../host/libc.js';
import type { SharedGuestRam } from '../io-thread/index.js';
import type { DiskCheckpointOp, DiskState } from '../../snapshot/disks.js';
import { DNR, SC } from './constants.js';
import type { IoQueueDriver } from './controller.js';
import type { DiskInit } from './disk.js';
import { FATAL_DOORBELL, type IoQueuesState } from './io-queues.js';

export type NvmeCall =
  | { t: 'createCq'; qid: number; base: number; size: number; vector: number; ien: boolean }
  | { t: 'createSq'; qid: number; base: number; size: number; cqid: number }
  | { t: 'deleteSq' | 'deleteCq'; qid: number }
  | { t: 'setDbbuf'; dbs: number; eis: number }
  | { t: 'restore'; state: IoQueuesState }
  | { t: 'disk'; op: DiskCheckpointOp }
  | { t: 'reset' | 'save' | 'quiesce' | 'unquiesce' | 'stop' };

/** The thread's answer to `disk`: what the checkpoint made of the disk, or why it failed (one line). */
export type NvmeDiskAnswer = { state: DiskState } | { error: string };

export type NvmeThreadEvent = { t: 'irq'; vector: number } | { t: 'fatal' } | { t: 'log'; msg: string };

export interface NvmeThreadData {
  port: MessagePort;
  reply: MessagePort;
  ack: SharedArrayBuffer;
  /** [0] the queues are fatal, [1] kicks served (activity for the halt check) */
  shared: SharedArrayBuffer;
  /** one word per doorbell register (2 per qid): an MMIO value not yet taken, or -1 */
  doorbells: SharedArrayBuffer;
  /** one word per MSI-X vector: the irqfd the thread may write, or -1 */
  directIrq: SharedArrayBuffer;
  kickFd: number;
  ctlFd: number;
  ram: SharedGuestRam;
  name: string;
  disk: DiskInit;
}

/** How long a control call waits for the thread (one command's I/O at most, normally). */
const WAIT_MS = 10_000;
/** ... and a checkpoint's work on the disk (a flush, and a qcow2 snapshot's metadata or a new overlay). */
const DISK_WAIT_MS = 120_000;

export class IoThreadQueues implements IoQueueDriver {
  readonly kickFd = createEventfd();
  private readonly ctlFd = createEventfd();
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly reply: MessagePort;
  private readonly ack = new Int32Array(new SharedArrayBuffer(4));
  private readonly shared = new Int32Array(new SharedArrayBuffer(8));
  private readonly doorbells: Int32Array;
  readonly directIrq: Int32Array;
  private seq = 0;
  private dead: string | undefined;
  private stopped = false;

  constructor(disk: DiskInit, ram: SharedGuestRam, name: string, private readonly signal: (vector: number) => void,
    private readonly onError: (msg: string) => void) {
    this.doorbells = new Int32Array(new SharedArrayBuffer(8 * (disk.limits.maxq + 1))).fill(-1);
    this.directIrq = new Int32Array(new SharedArrayBuffer(4 * disk.limits.vectors)).fill(-1);
    const ch = new MessageChannel(), rc = new MessageChannel();
    this.port = ch.port1;
    this.reply = rc.port1;
    const data: NvmeThreadData = {
      port: ch.port2, reply: rc.port2, ack: this.ack.buffer as SharedArrayBuffer, shared: this.shared.buffer as SharedArrayBuffer,
      doorbells: this.doorbells.buffer as SharedArrayBuffer, directIrq: this.directIrq.buffer as SharedArrayBuffer,
      kickFd: this.kickFd, ctlFd: this.ctlFd, ram, name, disk,
    };
    this.worker = new Worker(new URL('./io-thread.js', import.meta.url), { workerData: data, transferList: [ch.port2, rc.port2] });
    this.worker.unref();
    this.worker.on('error', (e) => { this.dead = e.message; onError(`nvme I/O thread failed: ${e.message}`); });
    this.port.on('message', (m: NvmeThreadEvent) => {
      if (m.t === 'irq') this.signal(m.vector);
      else if (m.t === 'fatal') onError(FATAL_DOORBELL);
      else if (m.t === 'log') { if (m.msg.startsWith('I/O thread failed')) this.dead = m.msg; onError(`nvme ${m.msg}`); }
    });
    this.port.unref();
  }

  get fatal(): boolean { return this.dead !== undefined || Atomics.load(this.shared, 0) !== 0; }
  /** Doorbell kicks the thread has served. */
  get served(): number { return Atomics.load(this.shared, 1); }

  /** A control call: the thread's answer, or undefined when it is dead or did not answer in time. */
  private call(m: NvmeCall, waitMs = WAIT_MS): unknown {
    if (this.dead) return undefined;
    const seq = ++this.seq;
    this.port.postMessage({ ...m, seq });
    signalEventfd(this.ctlFd);
    const deadline = Date.now() + waitMs;
    for (;;) {
      const cur = Atomics.load(this.ack, 0);
      if (cur >= seq) return cur === 0x7fffffff ? undefined : receiveMessageOnPort(this.reply)?.message;
      const left = deadline - Date.now();
      if (left <= 0) { this.dead = 'it did not answer in time'; this.onError('nvme I/O thread did not answer in time'); return undefined; }
      Atomics.wait(this.ack, 0, cur, Math.min(left, 100));
    }
  }

  private status(m: NvmeCall): number {
    const r = this.call(m);
    return typeof r === 'number' ? r : SC.INTERNAL | DNR;
  }

  createCq(qid: number, base: number, size: number, vector: number, ien: boolean): number {
    return this.status({ t: 'createCq', qid, base, size, vector, ien });
  }
  createSq(qid: number, base: number, size: number, cqid: number): number { return this.status({ t: 'createSq', qid, base, size, cqid }); }
  deleteSq(qid: number): number { return this.status({ t: 'deleteSq', qid }); }
  deleteCq(qid: number): number { return this.status({ t: 'deleteCq', qid }); }
  setDbbuf(dbs: number, eis: number): number { return this.status({ t: 'setDbbuf', dbs, eis }); }
  reset(): void { this.call({ t: 'reset' }); }

  save(): IoQueuesState {
    const s = this.call({ t: 'save' });
    if (!s) throw new Error(`nvme I/O thread: ${this.dead ?? 'no state'}`);
    return s as IoQueuesState;
  }

  restore(state: IoQueuesState): void {
    const r = this.call({ t: 'restore', state });
    if (r !== '') throw new Error(typeof r === 'string' ? r : `nvme I/O thread: ${this.dead ?? 'no answer'}`);
  }

  /** A checkpoint's work on the disk (the queues quiesced); rejects with the thread's one-line error. */
  checkpointDisk(op: DiskCheckpointOp): Promise<DiskState> {
    const r = this.call({ t: 'disk', op }, DISK_WAIT_MS) as NvmeDiskAnswer | undefined;
    if (!r) return Promise.reject(new Error(`nvme I/O thread: ${this.dead ?? 'no answer'}`));
    return 'state' in r ? Promise.resolve(r.state) : Promise.reject(new Error(r.error));
  }

  doorbell(idx: number, value: number): void {
    if (idx >= this.doorbells.length) return;
    Atomics.store(this.doorbells, idx, Math.min(value, 0xffff));
    signalEventfd(this.kickFd);
  }

  /** Look at the queues again (after a restore). */
  kick(): void { signalEventfd(this.kickFd); }
  quiesce(): void { this.call({ t: 'quiesce' }); }
  unquiesce(): void { this.call({ t: 'unquiesce' }); }

  destroy(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.call({ t: 'stop' }) === undefined) void this.worker.terminate();
    libc.close(this.kickFd);
    libc.close(this.ctlFd);
    this.port.close();
    this.reply.close();
  }
}
