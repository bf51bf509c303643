/**
 * The I/O thread's side of IoThreadHost (host.ts): a device's worker entry
 * module calls runIoThread with a factory for its model. The thread views
 * guest RAM through the main thread's mapping (the same pages the vCPUs see),
 * blocks in epoll on every
 * queue's notify eventfd (a KVM ioeventfd: a guest notify wakes this thread
 * straight from the kernel) and on a control eventfd, and serves each kicked
 * queue with the same model code as the main thread would. An interrupt is
 * a write to the queue's irqfd when the transport allows it (directIrq),
 * else a message to the main thread. The control protocol is in protocol.ts.
 *
 * A model may have fds of its own to wait on (pollFds: a network backend);
 * they are waited on edge-triggered and passed on with onReadable.
 *
 * The loop allocates nothing per wake-up (a control message aside): the
 * epoll buffer, the per-queue kick flags and the interrupt object are made
 * once.
 */
import { workerData, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { setFlagsFromString } from 'node:v8';
import { libc, errno, viewAt, setThreadName } from '../../host/libc.js';
import { signalEventfd } from '../../host/eventfd.js';
import { GuestMemory } from '../../memory/guest-memory.js';
import { Virtqueue } from '../../virtio/queue.js';
import type { VirtioInterrupt } from '../../virtio/device.js';
import type { FromIoThread, IoThreadData, IoThreadModel, ToIoThread } from './protocol.js';

export interface IoThreadDevice<I> {
  /** The model, from the host's init data; `onError` lines go to the main thread's log. */
  create(init: I, onError: (msg: string) => void): IoThreadModel;
  /**
   * Optional, before the thread first waits: run the request path on scratch
   * state so that V8 has optimized it before the guest's first request. It
   * gets the init data, the thread's own interrupt object (which signals nothing until a
   * queue is active, and ignores needsReset meanwhile) and `stop`, true once
   * a control message came (the guest wants the device: end early). Returns
   * a line to log, if any; a throw is logged and the thread goes on.
   */
  warmUp?(init: I, interrupt: VirtioInterrupt, stop: () => boolean): string | undefined;
}

/** EPOLL_CLOEXEC */
const EPOLL_CLOEXEC = 0o2000000;
const EPOLL_CTL_ADD = 1;
const EPOLLIN = 1;
const EPOLLET = 1 << 31;
/** struct epoll_event is packed on x86-64: u32 events, u64 data */
const EPOLL_EVENT_BYTES = 12;

/** Run the I/O thread for the device `spec` describes; returns when the host stops it. */
export function runIoThread<I>(spec: IoThreadDevice<I>): void {
  const d = workerData as IoThreadData<I>;
  const ack = new Int32Array(d.ack);
  try {
    serve(spec, d, ack);
  } catch (e) {
    d.port.postMessage({ t: 'fatal', msg: e instanceof Error ? e.message : String(e) } satisfies FromIoThread);
    acknowledge(ack, 0x7fffffff); // nobody waits on a dead thread
  }
}

function acknowledge(ack: Int32Array, seq: number): void {
  Atomics.store(ack, 0, seq);
  Atomics.notify(ack, 0);
}

/**
 * Before the model exists (openWhenTold): block until the host says 'open'
 * (true) or 'stop' (false: acknowledged, the thread ends). `pending`: a
 * ctlFd count was already taken for a message on the port.
 */
function waitForOpen(port: MessagePort, ctlFd: number, ack: Int32Array, scratch: Buffer, pending: boolean): boolean {
  const ep = libc.epollCreate1(EPOLL_CLOEXEC);
  if (ep < 0) throw new Error(`epoll_create1: errno ${errno()}`);
  try {
    const ev = Buffer.alloc(EPOLL_EVENT_BYTES);
    ev.writeUInt32LE(EPOLLIN, 0);
    if (libc.epollCtl(ep, EPOLL_CTL_ADD, ctlFd, ev) < 0) throw new Error(`epoll_ctl: errno ${errno()}`);
    for (;;) {
      if (!pending) {
        libc.epollWait(ep, ev, 1, 1000);
        libc.read(ctlFd, scratch, 8);
      }
      pending = false;
      for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) {
        const msg = m.message as ToIoThread;
        switch (msg.t) {
          case 'open': return true;
          case 'stop': acknowledge(ack, msg.seq); port.close(); return false;
          case 'reset': acknowledge(ack, msg.seq); break;
          case 'quiesce': port.postMessage({ t: 'quiesced', gen: msg.gen, states: [] } satisfies FromIoThread); break;
          default: throw new Error(`'${msg.t}' before the device was opened`);
        }
      }
    }
  } finally {
    libc.close(ep);
  }
}

function serve<I>(spec: IoThreadDevice<I>, d: IoThreadData<I>, ack: Int32Array): void {
  // For measuring when V8 optimizes the request path (bench/README.md): V8
  // flags set before the thread's request code first runs, e.g.
  // '--always-sparkplug --interrupt-budget=8192'. Flags are process-wide; not set by default.
  if (process.env.TSHYVE_V8_FLAGS) setFlagsFromString(process.env.TSHYVE_V8_FLAGS);
  setThreadName(d.name);
  const port = d.port;
  const directIrq = new Int32Array(d.directIrq);
  const served = new Int32Array(d.served);
  const base = d.ram.hostAddr;
  const all = new Uint8Array(viewAt(base, d.ram.size));
  const mem = new GuestMemory(d.ram.regions.map((r) => ({
    gpa: r.gpa, bytes: all.subarray(r.offset, r.offset + r.size), hostAddr: base + BigInt(r.offset), ramOffset: r.offset,
  })), d.ram.dirty && new Uint8Array(d.ram.dirty));
  const numQueues = d.notifyFds.length;
  const scratch = Buffer.alloc(8);
  const kicks = new Uint8Array(numQueues);

  /** the queues being served, by number (all undefined while inactive) */
  const queues: (Virtqueue | undefined)[] = new Array<Virtqueue | undefined>(numQueues).fill(undefined);
  let gen = 0;
  /** some queue is being served */
  let serving = false;
  let quiesced = false;
  let broken = false;
  /** set while the warm-up runs: its (unexpected) errors are its own */
  let warming = false;
  const interrupt: VirtioInterrupt = {
    signalUsed: (q) => {
      const vq = queues[q];
      if (!vq || !vq.needsNotification()) return false;
      const fd = Atomics.load(directIrq, q);
      if (fd < 0 || !signalEventfd(fd)) port.postMessage({ t: 'irq', gen, q } satisfies FromIoThread);
      return true;
    },
    signalConfig: () => port.postMessage({ t: 'config', gen } satisfies FromIoThread),
    needsReset: (r) => {
      if (warming) return; // the warm-up checks its own queues
      broken = true;
      port.postMessage({ t: 'needsReset', gen, reason: r instanceof Error ? r.message : String(r) } satisfies FromIoThread);
    },
  };

  // The warm-up uses the real interrupt object, which signals nothing while no
  // queue is set. A control message (the guest activating the device) ends it
  // early; the ctlFd count it took then stands for that message.
  let pendingControl = false;
  const warmUp = (): void => {
    if (!spec.warmUp) return;
    warming = true;
    try {
      const line = spec.warmUp(d.init, interrupt, () => (pendingControl = libc.read(d.ctlFd, scratch, 8) === 8));
      if (line !== undefined) port.postMessage({ t: 'log', msg: line } satisfies FromIoThread);
    } catch (e) {
      port.postMessage({ t: 'log', msg: `request path warm-up skipped: ${e instanceof Error ? e.message : String(e)}` } satisfies FromIoThread);
    } finally {
      warming = false;
    }
  };
  // An incoming migration's device: warm up while the source still uses the storage, make the model once told.
  if (d.openWhenTold) {
    warmUp();
    if (!waitForOpen(port, d.ctlFd, ack, scratch, pendingControl)) return;
    pendingControl = true; // what came after 'open'
  }
  const dev = spec.create(d.init, (msg) => port.postMessage({ t: 'log', msg } satisfies FromIoThread));

  // epoll data: the queue number for a notify fd, numQueues for the control
  // fd, numQueues + 1 + i for the model's own fd i (edge-triggered: the
  // model reads it, not this loop)
  const ownFds = dev.pollFds?.() ?? [];
  const fds = [...d.notifyFds, d.ctlFd, ...ownFds];
  const ep = libc.epollCreate1(EPOLL_CLOEXEC);
  if (ep < 0) throw new Error(`epoll_create1: errno ${errno()}`);
  const ev = Buffer.alloc(EPOLL_EVENT_BYTES);
  for (const [i, fd] of fds.entries()) {
    ev.writeUInt32LE((i > numQueues ? EPOLLIN | EPOLLET : EPOLLIN) >>> 0, 0); ev.writeUInt32LE(i, 4); ev.writeUInt32LE(0, 8);
    if (libc.epollCtl(ep, EPOLL_CTL_ADD, fd, ev) < 0) throw new Error(`epoll_ctl: errno ${errno()}`);
  }
  const events = Buffer.alloc(fds.length * EPOLL_EVENT_BYTES);
  const numOwn = ownFds.length;
  /** the model's fds that became readable (an edge not yet passed on) */
  const readable = new Uint8Array(numOwn);
  if (!d.openWhenTold) warmUp();

  for (;;) {
    const n = libc.epollWait(ep, events, fds.length, pendingControl ? 0 : 1000);
    let control = pendingControl;
    pendingControl = false;
    for (let i = 0; i < n; i++) {
      const idx = events.readUInt32LE(i * EPOLL_EVENT_BYTES + 4);
      if (idx > numQueues) { readable[idx - numQueues - 1] = 1; continue; }
      libc.read(fds[idx]!, scratch, 8); // reset the counter (non-blocking fds)
      if (idx < numQueues) kicks[idx] = 1; else control = true;
    }
    // every control message is followed by a ctlFd write: look at the port only then
    if (n === 0) control = true; // (and on the idle timeout, to be safe)
    for (let m = control ? receiveMessageOnPort(port) : undefined; m; m = receiveMessageOnPort(port)) {
      const msg = m.message as ToIoThread;
      switch (msg.t) {
        case 'activate':
          dev.reset();
          queues.fill(undefined);
          gen = msg.gen;
          broken = false;
          quiesced = false;
          try {
            const qs = msg.states.map((s) => Virtqueue.fromState(mem, s));
            dev.activate(qs, mem, interrupt, BigInt(msg.features));
            qs.forEach((q, i) => { if (q.ready && i < numQueues) queues[i] = q; });
            serving = queues.some((q) => q !== undefined);
            kicks.fill(1); // requests published before we were ready
            readable.fill(1); // and data that came meanwhile (its edge is gone)
          } catch (e) {
            queues.fill(undefined);
            serving = false;
            interrupt.needsReset(e);
          }
          break;
        case 'reset':
          dev.reset();
          queues.fill(undefined);
          serving = false;
          acknowledge(ack, msg.seq);
          break;
        case 'quiesce':
          quiesced = true;
          port.postMessage({ t: 'quiesced', gen: msg.gen, states: queues.map((q) => q?.getState()) } satisfies FromIoThread);
          break;
        case 'disk': {
          let reply: FromIoThread;
          try {
            if (!dev.checkpointDisk) throw new Error('this device has no disk');
            reply = { t: 'diskDone', seq: msg.seq, state: dev.checkpointDisk(msg.op) };
          } catch (e) {
            reply = { t: 'diskDone', seq: msg.seq, error: (e instanceof Error ? e.message : String(e)).split('\n')[0] };
          }
          port.postMessage(reply);
          break;
        }
        case 'unquiesce':
          quiesced = false;
          kicks.fill(1);
          readable.fill(1);
          break;
        case 'stop':
          dev.destroy?.();
          libc.close(ep);
          acknowledge(ack, msg.seq);
          port.close();
          return;
      }
    }
    for (let q = 0; q < numQueues; q++) {
      if (kicks[q] === 0) continue;
      kicks[q] = 0;
      if (queues[q] === undefined || quiesced || broken) continue;
      Atomics.add(served, 0, 1);
      dev.queueNotify(q);
    }
    for (let i = 0; i < numOwn; i++) {
      if (readable[i] === 0 || quiesced || broken || !serving) continue;
      readable[i] = 0;
      dev.onReadable?.(i);
    }
  }
}
