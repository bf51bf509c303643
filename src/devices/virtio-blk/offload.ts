/**
 * virtio-blk with its queue served by an I/O thread (worker-thread.ts): the
 * main thread keeps the device config and the VirtioCore state machine; at
 * DRIVER_OK it hands the validated queue to the worker, which from then on
 * takes the guest's notifies from the KVM ioeventfd and completes requests
 * through the irqfd, so a request never touches the main thread.
 *
 * Reset waits (synchronously, bounded) until the worker has let go of the
 * queue: after the driver's status write returns, the device no longer
 * touches guest memory. quiesce() stops the worker taking requests and
 * copies its ring progress back into the main thread's Virtqueue, for
 * save/restore.
 */
import { Worker, MessageChannel } from 'node:worker_threads';
import { createEventfd, signalEventfd } from '../../host/eventfd.js';
import { libc } from '../../host/libc.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { VirtioDevice, VirtioInterrupt, VirtioOffload } from '../../virtio/device.js';
import type { Virtqueue } from '../../virtio/queue.js';
import type { VirtioBlk, VirtioBlkOptions } from './device.js';
import type { BlkWorkerData, FromWorker, ToWorker } from './worker-thread.js';

/** Guest RAM as the worker sees it: the process's own mapping (host address) and where each region lives in it. */
export interface SharedGuestRam {
  hostAddr: bigint;
  size: number;
  regions: { gpa: number; offset: number; size: number }[];
}

/** How long reset and teardown wait for the worker (one request's I/O at most, normally). */
const WAIT_MS = 10_000;

export class OffloadedVirtioBlk implements VirtioDevice {
  readonly deviceType: number;
  readonly numQueues = 1;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly configSize: number;
  readonly offload: VirtioOffload;

  private readonly worker: Worker;
  private readonly port;
  private readonly ack = new Int32Array(new SharedArrayBuffer(4));
  private readonly notifyFd = createEventfd();
  private readonly ctlFd = createEventfd();
  private seq = 0;
  private gen = 0;
  private queue: Virtqueue | undefined;
  private interrupt: VirtioInterrupt | undefined;
  private active = false;
  private quiesceWaiters: { gen: number; resolve: () => void; reject: (e: Error) => void }[] = [];
  private dead: string | undefined;
  private stopped = false;

  /** `inner` serves the config on this thread; the worker opens `opts.path` again with the same settings. */
  constructor(readonly inner: VirtioBlk, opts: VirtioBlkOptions, ram: SharedGuestRam, onError: (msg: string) => void, name = 'blk-io') {
    this.deviceType = inner.deviceType;
    this.maxQueueSize = inner.maxQueueSize;
    this.features = inner.features;
    this.configSize = inner.configSize;
    const directIrq = new Int32Array(new SharedArrayBuffer(4 * this.numQueues)).fill(-1);
    const served = new Int32Array(new SharedArrayBuffer(4));
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    const data: BlkWorkerData = {
      port: port2, ack: this.ack.buffer as SharedArrayBuffer, directIrq: directIrq.buffer as SharedArrayBuffer, served: served.buffer as SharedArrayBuffer,
      notifyFd: this.notifyFd, ctlFd: this.ctlFd, hostAddr: ram.hostAddr, ramSize: ram.size, regions: ram.regions, name,
      opts: {
        path: opts.path, readonly: inner.readonly, sectorSize: inner.sectorSize, physicalSectorSize: inner.physicalSectorSize,
        serial: inner.serial, nodelete: opts.nodelete, direct: opts.direct, nocache: opts.nocache, queueSize: inner.maxQueueSize,
      },
    };
    this.worker = new Worker(new URL('./worker-thread.js', import.meta.url), { workerData: data, transferList: [port2] });
    this.worker.unref();
    this.worker.on('error', (e) => { this.dead = e.message; onError(`virtio-blk I/O thread failed: ${e.message}`); });
    port1.on('message', (m: FromWorker) => this.onMessage(m, onError));
    port1.unref();
    this.offload = {
      notifyFd: () => this.notifyFd,
      directIrq,
      served,
      quiesce: () => this.quiesce(),
      unquiesce: () => this.unquiesce(),
    };
  }

  private onMessage(m: FromWorker, onError: (msg: string) => void): void {
    switch (m.t) {
      case 'irq': if (m.gen === this.gen && this.active) this.interrupt?.raise?.(m.q); break;
      case 'config': if (m.gen === this.gen && this.active) this.interrupt?.signalConfig(); break;
      case 'needsReset': if (m.gen === this.gen && this.active) this.interrupt?.needsReset(m.reason); break;
      case 'log': onError(m.msg); break;
      case 'fatal':
        this.dead = m.msg;
        onError(`virtio-blk I/O thread failed: ${m.msg}`);
        if (this.active) this.interrupt?.needsReset(`I/O thread failed: ${m.msg}`);
        break;
      case 'quiesced': {
        const waiting = this.quiesceWaiters;
        this.quiesceWaiters = [];
        for (const w of waiting) {
          if (w.gen !== m.gen) { w.resolve(); continue; } // the queue was reset meanwhile: nothing in flight
          try {
            if (m.state && this.queue) this.queue.adoptProgress(m.state);
            w.resolve();
          } catch (e) {
            w.reject(e as Error);
          }
        }
        break;
      }
    }
  }

  private post(m: ToWorker): void {
    this.port.postMessage(m);
    signalEventfd(this.ctlFd);
  }

  /** Post `m` (built with a fresh seq) and wait until the worker acknowledged it. */
  private postAndWait(make: (seq: number) => ToWorker): boolean {
    const seq = ++this.seq;
    this.post(make(seq));
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const cur = Atomics.load(this.ack, 0);
      if (cur >= seq || this.dead) return cur >= seq;
      const left = deadline - Date.now();
      if (left <= 0) return false;
      Atomics.wait(this.ack, 0, cur, Math.min(left, 100));
    }
  }

  // ---- VirtioDevice: config from the main thread's model ----

  queueMaxChainLen(q: number): number | undefined { return this.inner.queueMaxChainLen(q); }
  readConfig(offset: number, size: number): number { return this.inner.readConfig(offset, size); }
  writeConfig(offset: number, size: number, value: number): void { this.inner.writeConfig(offset, size, value); }

  activate(queues: readonly Virtqueue[], _mem: GuestMemory, interrupt: VirtioInterrupt, features: bigint): void {
    const q = queues[0];
    this.interrupt = interrupt;
    if (!q || !q.ready) return;
    if (this.dead) throw new Error(`I/O thread failed: ${this.dead}`);
    this.queue = q;
    this.gen++;
    this.active = true;
    this.post({ t: 'activate', gen: this.gen, state: q.getState(), features: features.toString() });
  }

  /** A notify that arrived as an exit (no ioeventfd here): pass it on. */
  queueNotify(q: number): void {
    if (q === 0 && this.active) signalEventfd(this.notifyFd);
  }

  reset(): void {
    const wasActive = this.active;
    this.active = false;
    this.gen++;
    this.queue = undefined;
    for (const w of this.quiesceWaiters.splice(0)) w.resolve();
    if (wasActive && !this.postAndWait((seq) => ({ t: 'reset', seq }))) {
      // Only a stuck host disk gets here; the worker will still let go when its I/O returns.
      this.interrupt?.needsReset('virtio-blk I/O thread did not stop in time');
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

  /** fdatasync on this thread's descriptor of the same file flushes what the worker wrote. */
  syncForSave(): void { this.inner.syncForSave(); }

  /** VM teardown: stop the thread (it closes its disk), then the fds and the main thread's model. */
  destroy(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.active = false;
    if (!this.dead && !this.postAndWait((seq) => ({ t: 'stop', seq }))) void this.worker.terminate();
    libc.close(this.notifyFd);
    libc.close(this.ctlFd);
    this.port.close();
    this.inner.destroy();
  }
}
