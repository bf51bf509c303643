/**
 * The virtio-blk I/O thread (one per disk). It views guest RAM through the
 * main thread's mapping (the same pages the vCPUs see, shared memfd or a
 * restore's copy-on-write image), blocks in
 * epoll on the queue's notify eventfd (a KVM ioeventfd: a guest notify
 * wakes this thread straight from the kernel) and on a control eventfd, and
 * serves requests with the same VirtioBlk code as the main thread would:
 * the queue checks every chain, data moves with preadv/pwritev straight
 * into guest memory, used entries and interrupts are batched per wake-up.
 * An interrupt is a write to the vector's irqfd when the transport allows
 * it (directIrq), else a message to the main thread.
 *
 * Control (messages on `port`, each followed by a write to ctlFd):
 *   activate {gen, state, features}  start serving this queue
 *   reset {seq}                      stop serving; ack
 *   quiesce {gen}                    stop taking requests; reply quiesced {gen, state}
 *   unquiesce                        go on
 *   stop {seq}                       close the disk; ack; end the thread
 * Acks: ack[0] = seq, then Atomics.notify (the main thread may wait on it).
 */
import { workerData, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { setFlagsFromString } from 'node:v8';
import { libc, errno, viewAt, setThreadName } from '../../host/libc.js';
import { signalEventfd } from '../../host/eventfd.js';
import { GuestMemory } from '../../memory/guest-memory.js';
import { Virtqueue, type VirtqueueState } from '../../virtio/queue.js';
import type { VirtioInterrupt } from '../../virtio/device.js';
import { VirtioBlk, type VirtioBlkOptions } from './device.js';
import { warmUpBlkRequestPath } from './warm-up.js';

export interface BlkWorkerData {
  port: MessagePort;
  ack: SharedArrayBuffer;
  directIrq: SharedArrayBuffer;
  /** one word: queue notifications taken (VirtioOffload.served) */
  served: SharedArrayBuffer;
  notifyFd: number;
  ctlFd: number;
  /** the main thread's mapping of guest RAM: the same pages the vCPUs use, shared or copy-on-write */
  hostAddr: bigint;
  ramSize: number;
  /** guest regions as offsets into that mapping */
  regions: { gpa: number; offset: number; size: number }[];
  opts: Omit<VirtioBlkOptions, 'backend' | 'onError'>;
  /** the thread's name, for people looking at the process's threads */
  name: string;
}

export type ToWorker =
  | { t: 'activate'; gen: number; state: VirtqueueState; features: string }
  | { t: 'reset'; seq: number }
  | { t: 'quiesce'; gen: number }
  | { t: 'unquiesce' }
  | { t: 'stop'; seq: number };

export type FromWorker =
  | { t: 'irq'; gen: number; q: number }
  | { t: 'config'; gen: number }
  | { t: 'needsReset'; gen: number; reason: string }
  | { t: 'quiesced'; gen: number; state: VirtqueueState | undefined }
  | { t: 'log'; msg: string }
  | { t: 'fatal'; msg: string };

// For measuring when V8 optimizes the request path (bench/README.md): V8
// flags set before this thread's code first runs, e.g. '--always-sparkplug
// --interrupt-budget=8192'. Flags are process-wide; not set by default.
if (process.env.TSHYVE_V8_FLAGS) setFlagsFromString(process.env.TSHYVE_V8_FLAGS);
/** Requests the I/O thread serves on scratch memory first (warm-up.ts); TSHYVE_BLK_WARMUP=0 turns it off. */
const WARMUP_REQUESTS = Math.max(0, Number(process.env.TSHYVE_BLK_WARMUP ?? 512) || 0);
const d = workerData as BlkWorkerData;
const port = d.port;
const ack = new Int32Array(d.ack);
const directIrq = new Int32Array(d.directIrq);
const served = new Int32Array(d.served);

function acknowledge(seq: number): void {
  Atomics.store(ack, 0, seq);
  Atomics.notify(ack, 0);
}

function main(): void {
  setThreadName(d.name);
  const base = d.hostAddr;
  const all = new Uint8Array(viewAt(base, d.ramSize));
  const mem = new GuestMemory(d.regions.map((r) => ({
    gpa: r.gpa, bytes: all.subarray(r.offset, r.offset + r.size), hostAddr: base + BigInt(r.offset),
  })));
  const dev = new VirtioBlk({ ...d.opts, onError: (msg) => port.postMessage({ t: 'log', msg } satisfies FromWorker) });

  const ep = libc.epollCreate1(0o2000000);
  if (ep < 0) throw new Error(`epoll_create1: errno ${errno()}`);
  const ev = Buffer.alloc(12);
  for (const [i, fd] of [d.notifyFd, d.ctlFd].entries()) {
    ev.writeUInt32LE(1, 0); ev.writeUInt32LE(i, 4); ev.writeUInt32LE(0, 8);
    if (libc.epollCtl(ep, 1, fd, ev) < 0) throw new Error(`epoll_ctl: errno ${errno()}`);
  }
  const events = Buffer.alloc(2 * 12);
  const scratch = Buffer.alloc(8);

  let vq: Virtqueue | undefined;
  let gen = 0;
  let quiesced = false;
  let broken = false;
  /** set while the warm-up runs: its (unexpected) errors are its own */
  let warming = false;
  const interrupt: VirtioInterrupt = {
    signalUsed: (q) => {
      if (!vq || !vq.needsNotification()) return false;
      const fd = Atomics.load(directIrq, q);
      if (fd < 0 || !signalEventfd(fd)) port.postMessage({ t: 'irq', gen, q } satisfies FromWorker);
      return true;
    },
    signalConfig: () => port.postMessage({ t: 'config', gen } satisfies FromWorker),
    needsReset: (r) => {
      if (warming) return; // the warm-up checks its own queue
      broken = true;
      port.postMessage({ t: 'needsReset', gen, reason: r instanceof Error ? r.message : String(r) } satisfies FromWorker);
    },
  };

  // Optimize the request path before the guest's first request (warm-up.ts),
  // with the real interrupt object, which signals nothing while vq is unset.
  // A control message (the guest activating the queue) ends it early.
  let pendingControl = false;
  if (WARMUP_REQUESTS > 0) {
    warming = true;
    try {
      const w = warmUpBlkRequestPath(WARMUP_REQUESTS, interrupt, () => (pendingControl = libc.read(d.ctlFd, scratch, 8) === 8));
      if (process.env.TSHYVE_BLK_WARMUP_LOG) {
        port.postMessage({ t: 'log', msg: `warm-up: ${w.requests} requests in ${w.ms.toFixed(0)} ms${w.stopped ? ' (stopped: the guest wants the disk)' : ''}` } satisfies FromWorker);
      }
    } catch (e) {
      port.postMessage({ t: 'log', msg: `request path warm-up skipped: ${e instanceof Error ? e.message : String(e)}` } satisfies FromWorker);
    } finally {
      warming = false;
    }
  }

  for (;;) {
    const n = libc.epollWait(ep, events, 2, pendingControl ? 0 : 1000);
    let kick = false, control = pendingControl; // a ctlFd count the warm-up took stands for a message
    pendingControl = false;
    for (let i = 0; i < n; i++) {
      const idx = events.readUInt32LE(i * 12 + 4);
      libc.read(idx === 0 ? d.notifyFd : d.ctlFd, scratch, 8); // reset the counter (non-blocking fds)
      if (idx === 0) kick = true; else control = true;
    }
    // every control message is followed by a ctlFd write: look at the port only then
    if (n === 0) control = true; // (and on the idle timeout, to be safe)
    for (let m = control ? receiveMessageOnPort(port) : undefined; m; m = receiveMessageOnPort(port)) {
      const msg = m.message as ToWorker;
      switch (msg.t) {
        case 'activate':
          dev.reset();
          gen = msg.gen;
          broken = false;
          quiesced = false;
          try {
            vq = Virtqueue.fromState(mem, msg.state);
            dev.activate([vq], mem, interrupt, BigInt(msg.features));
            kick = true; // requests published before we were ready
          } catch (e) {
            vq = undefined;
            interrupt.needsReset(e);
          }
          break;
        case 'reset':
          dev.reset();
          vq = undefined;
          acknowledge(msg.seq);
          break;
        case 'quiesce':
          quiesced = true;
          port.postMessage({ t: 'quiesced', gen: msg.gen, state: vq?.getState() } satisfies FromWorker);
          break;
        case 'unquiesce':
          quiesced = false;
          kick = true;
          break;
        case 'stop':
          dev.destroy();
          libc.close(ep);
          acknowledge(msg.seq);
          port.close();
          return;
      }
    }
    if (kick && vq && !quiesced && !broken) {
      Atomics.add(served, 0, 1);
      dev.queueNotify(0);
    }
  }
}

try {
  main();
} catch (e) {
  port.postMessage({ t: 'fatal', msg: e instanceof Error ? e.message : String(e) } satisfies FromWorker);
  acknowledge(0x7fffffff); // nobody waits on a dead thread
}
