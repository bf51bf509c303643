/**
 * A virtio device whose queues are served by an I/O thread of its own (a
 * worker running the device's entry module, which calls runIoThread): the
 * main thread keeps the device config and the VirtioCore state machine
 * through `inner`; at DRIVER_OK the validated queues go to the worker, which
 * from then on takes the guest's notifies from each queue's eventfd (bound
 * as a KVM ioeventfd) and completes requests through the irqfds, so a
 * request never touches the main thread.
 *
 * Reset waits (synchronously, bounded) until the worker has let go of the
 * queues: after the driver's status write returns, the device no longer
 * touches guest memory. quiesce() stops the worker taking requests and
 * copies its ring progress back into the main thread's Virtqueues, for
 * save/restore. A thread that died or does not answer in time sets
 * NEEDS_RESET rather than stalling the VM.
 *
 * Device state beyond the queues lives on the worker and is not saved, so a
 * model with saveState() cannot be hosted here, unless that state lives on
 * the main thread's model (`mainThreadState`).
 */
import { Worker, MessageChannel } from 'node:worker_threads';
import { createEventfd, signalEventfd } from '../../host/eventfd.js';
import { libc } from '../../host/libc.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { VirtioDevice, VirtioInterrupt, VirtioOffload } from '../../virtio/device.js';
import type { Virtqueue } from '../../virtio/queue.js';
import type { StateReader, StateWriter } from '../../snapshot/state.js';
import type { DiskCheckpointOp, DiskState } from '../../snapshot/disks.js';
import type { FromIoThread, IoThreadData, IoThreadModel, SharedGuestRam, ToIoThread } from './protocol.js';

export interface IoThreadHostOptions<I> {
  /** The device's worker entry: a module that calls runIoThread (runtime.ts). */
  worker: URL;
  /** The device's start-up data for its factory on the worker (structured-cloned). */
  init: I;
  ram: SharedGuestRam;
  /** Names the device in error lines ('virtio-blk'). */
  label: string;
  /** The thread's name, as `ps -L` shows it ('blk-io@4'). */
  threadName: string;
  /** Told about the worker's log lines and failures (the caller rate-limits). */
  onError: (msg: string) => void;
  /** How long reset and teardown wait for the worker; default WAIT_MS. */
  waitMs?: number;
  /**
   * The worker makes its model (opening the device's storage) only once this
   * resolves (DeviceContext.storageGate); it warms up meanwhile.
   */
  openAfter?: Promise<void>;
  /**
   * `inner`'s saveState/restoreState keep state that lives on this thread
   * (its config space, say), none of the worker's: save and restore them.
   */
  mainThreadState?: boolean;
}

/** How long reset and teardown wait for the worker (one request's I/O at most, normally). */
const WAIT_MS = 10_000;

export class IoThreadHost<I> implements VirtioDevice {
  readonly deviceType: number;
  readonly numQueues: number;
  readonly maxQueueSize: number | readonly number[];
  readonly features: bigint;
  readonly configSize: number;
  readonly offload: VirtioOffload;
  readonly saveState?: (w: StateWriter) => void;
  readonly restoreState?: (r: StateReader) => void;

  private readonly worker: Worker;
  private readonly port;
  private readonly label: string;
  private readonly waitMs: number;
  private readonly ack = new Int32Array(new SharedArrayBuffer(4));
  private readonly notifyFds: number[] = [];
  private readonly ctlFd: number;
  private seq = 0;
  private gen = 0;
  private queues: readonly Virtqueue[] = [];
  private interrupt: VirtioInterrupt | undefined;
  private active = false;
  private quiesceWaiters: { gen: number; resolve: () => void; reject: (e: Error) => void }[] = [];
  private readonly diskWaiters = new Map<number, { resolve: (s: DiskState) => void; reject: (e: Error) => void }>();
  private dead: string | undefined;
  private stopped = false;

  /** `inner` serves the config on this thread; the worker builds its own model from `opts.init`. */
  constructor(readonly inner: IoThreadModel, opts: IoThreadHostOptions<I>) {
    if (inner.saveState && !opts.mainThreadState) throw new Error(`${opts.label}: device state would stay on its I/O thread, unsaved`);
    if (inner.saveState && inner.restoreState) {
      this.saveState = (w) => inner.saveState!(w);
      this.restoreState = (r) => inner.restoreState!(r);
    }
    this.deviceType = inner.deviceType;
    this.numQueues = inner.numQueues;
    this.maxQueueSize = inner.maxQueueSize;
    this.features = inner.features;
    this.configSize = inner.configSize;
    this.label = opts.label;
    this.waitMs = opts.waitMs ?? WAIT_MS;
    for (let q = 0; q < this.numQueues; q++) this.notifyFds.push(createEventfd());
    this.ctlFd = createEventfd();
    const directIrq = new Int32Array(new SharedArrayBuffer(4 * this.numQueues)).fill(-1);
    const served = new Int32Array(new SharedArrayBuffer(4));
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    const data: IoThreadData<I> = {
      port: port2, ack: this.ack.buffer as SharedArrayBuffer, directIrq: directIrq.buffer as SharedArrayBuffer,
      served: served.buffer as SharedArrayBuffer, notifyFds: this.notifyFds, ctlFd: this.ctlFd, ram: opts.ram,
      name: opts.threadName, init: opts.init, openWhenTold: opts.openAfter !== undefined,
    };
    const onError = opts.onError;
    this.worker = new Worker(opts.worker, { workerData: data, transferList: [port2] });
    this.worker.unref();
    this.worker.on('error', (e) => { this.dead = e.message; onError(`${this.label} I/O thread failed: ${e.message}`); });
    port1.on('message', (m: FromIoThread) => this.onMessage(m, onError));
    port1.unref();
    void opts.openAfter?.then(() => { if (!this.stopped) this.post({ t: 'open' }); });
    this.offload = {
      notifyFd: (q) => this.notifyFds[q] ?? -1,
      directIrq,
      served,
      quiesce: () => this.quiesce(),
      unquiesce: () => this.unquiesce(),
    };
  }

  private onMessage(m: FromIoThread, onError: (msg: string) => void): void {
    switch (m.t) {
      case 'irq': if (m.gen === this.gen && this.active) this.interrupt?.raise?.(m.q); break;
      case 'config': if (m.gen === this.gen && this.active) this.interrupt?.signalConfig(); break;
      case 'needsReset': if (m.gen === this.gen && this.active) this.interrupt?.needsReset(m.reason); break;
      case 'log': onError(m.msg); break;
      case 'diskDone': {
        const w = this.diskWaiters.get(m.seq);
        this.diskWaiters.delete(m.seq);
        if (m.state) w?.resolve(m.state); else w?.reject(new Error(m.error ?? 'failed'));
        break;
      }
      case 'fatal':
        this.dead = m.msg;
        for (const w of this.diskWaiters.values()) w.reject(new Error(`${this.label} I/O thread failed: ${m.msg}`));
        this.diskWaiters.clear();
        onError(`${this.label} I/O thread failed: ${m.msg}`);
        if (this.active) this.interrupt?.needsReset(`I/O thread failed: ${m.msg}`);
        break;
      case 'quiesced': {
        const waiting = this.quiesceWaiters;
        this.quiesceWaiters = [];
        for (const w of waiting) {
          if (w.gen !== m.gen) { w.resolve(); continue; } // the queues were reset meanwhile: nothing in flight
          try {
            this.queues.forEach((q, i) => {
              const s = m.states[i];
              if (s && q.ready) q.adoptProgress(s);
            });
            w.resolve();
          } catch (e) {
            w.reject(e as Error);
          }
        }
        break;
      }
    }
  }

  private post(m: ToIoThread): void {
    this.port.postMessage(m);
    signalEventfd(this.ctlFd);
  }

  /** Post `m` (built with a fresh seq) and wait until the worker acknowledged it. */
  private postAndWait(make: (seq: number) => ToIoThread): boolean {
    const seq = ++this.seq;
    this.post(make(seq));
    const deadline = Date.now() + this.waitMs;
    for (;;) {
      const cur = Atomics.load(this.ack, 0);
      if (cur >= seq || this.dead) return cur >= seq;
      const left = deadline - Date.now();
      if (left <= 0) return false;
      Atomics.wait(this.ack, 0, cur, Math.min(left, 100));
    }
  }

  // ---- VirtioDevice: config from the main thread's model ----

  queueMaxChainLen(q: number): number | undefined { return this.inner.queueMaxChainLen?.(q); }
  readConfig(offset: number, size: number): number { return this.inner.readConfig(offset, size); }
  writeConfig(offset: number, size: number, value: number): void { this.inner.writeConfig(offset, size, value); }
  acceptFeatures(features: bigint): boolean { return this.inner.acceptFeatures?.(features) ?? true; }

  activate(queues: readonly Virtqueue[], _mem: GuestMemory, interrupt: VirtioInterrupt, features: bigint): void {
    this.interrupt = interrupt;
    if (!queues.some((q) => q.ready)) return;
    if (this.dead) throw new Error(`I/O thread failed: ${this.dead}`);
    this.queues = queues;
    this.gen++;
    this.active = true;
    this.post({ t: 'activate', gen: this.gen, states: queues.map((q) => q.getState()), features: features.toString() });
  }

  /** A notify that arrived as an exit (no ioeventfd here): pass it on. */
  queueNotify(q: number): void {
    const fd = this.notifyFds[q];
    if (fd !== undefined && this.active) signalEventfd(fd);
  }

  reset(): void {
    const wasActive = this.active;
    this.active = false;
    this.gen++;
    this.queues = [];
    for (const w of this.quiesceWaiters.splice(0)) w.resolve();
    if (wasActive && !this.postAndWait((seq) => ({ t: 'reset', seq }))) {
      // Only a stuck host call gets here; the worker will still let go when it returns.
      this.interrupt?.needsReset(`${this.label} I/O thread did not stop in time`);
    }
  }

  async quiesce(): Promise<void> {
    if (!this.active || this.dead) return;
    const gen = this.gen;
    const done = new Promise<void>((resolve, reject) => { this.quiesceWaiters.push({ gen, resolve, reject }); });
    this.port.ref(); // keep the process alive for the answer
    try {
      this.post({ t: 'quiesce', gen });
      await done;
    } finally {
      this.port.unref();
    }
  }

  unquiesce(): void {
    if (this.active && !this.dead) this.post({ t: 'unquiesce' });
  }

  /**
   * A checkpoint's work on the disk of the worker's model, which owns the
   * image (snapshot/disks.ts); the device is quiesced. Rejects with the
   * worker's one-line error.
   */
  async checkpointDisk(op: DiskCheckpointOp): Promise<DiskState> {
    if (this.dead) throw new Error(`${this.label} I/O thread failed: ${this.dead}`);
    const seq = ++this.seq;
    const done = new Promise<DiskState>((resolve, reject) => { this.diskWaiters.set(seq, { resolve, reject }); });
    this.port.ref(); // keep the process alive for the answer
    try {
      this.post({ t: 'disk', seq, op });
      return await done;
    } finally {
      this.port.unref();
    }
  }

  /** Before a snapshot: the main thread's model makes the worker's writes durable (e.g. fdatasync on the same file). */
  syncForSave(): void { this.inner.syncForSave?.(); }

  /** VM teardown: stop the thread (it destroys its model), then the fds and the main thread's model. */
  destroy(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.active = false;
    if (!this.dead && !this.postAndWait((seq) => ({ t: 'stop', seq }))) void this.worker.terminate();
    for (const fd of this.notifyFds) libc.close(fd);
    libc.close(this.ctlFd);
    this.port.close();
    this.inner.destroy?.();
  }
}
