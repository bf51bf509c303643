/**
 * The controller's I/O thread (a worker started by offload.ts): it opens
 * the disk again with the main thread's settings and serves the I/O
 * queues. It waits on two eventfds: `kick` (MMIO doorbell writes passed on
 * by the main thread with their value in `doorbells`, and, once the shadow
 * doorbells are configured, the doorbells' KVM ioeventfds) and `ctl` (a
 * control call on `port`). Interrupts go straight to a vector's irqfd when
 * the main thread says it may (`directIrq`), else as a message.
 *
 * Control calls are synchronous for the main thread: each is answered on
 * `reply`, then acknowledged in `ack` (Atomics.notify), so the admin
 * command that creates or deletes a queue completes after the queue exists
 * or is gone. A checkpoint's work on the disk is done here, by the instance
 * that owns the image (devices/block/checkpoint.ts), the queues quiesced.
 */
import { workerData, receiveMessageOnPort } from 'node:worker_threads';
import { libc, errno, viewAt, setThreadName } from '../../host/libc.js';
import { signalEventfd } from '../../host/eventfd.js';
import { GuestMemory } from '../../memory/guest-memory.js';
import { checkpointImage } from '../block/index.js';
import type { DiskCheckpointOp } from '../../snapshot/disks.js';
import { SC } from './constants.js';
import { imageOptions, ioQueuesOver, namespaceOver, openBackend } from './disk.js';
import type { Namespace } from './io.js';
import type { IoQueues } from './io-queues.js';
import type { NvmeCall, NvmeDiskAnswer, NvmeThreadData, NvmeThreadEvent } from './offload.js';

const EPOLL_CLOEXEC = 0o2000000, EPOLL_CTL_ADD = 1, EPOLLIN = 1, EPOLL_EVENT_BYTES = 12;

/** A checkpoint's work on the namespace's image: what it made of the disk, or the one-line error. */
function checkpoint(ns: Namespace, d: NvmeThreadData, op: DiskCheckpointOp): NvmeDiskAnswer {
  try {
    return { state: checkpointImage(ns, imageOptions(d.disk, 'nvme'), op) };
  } catch (e) {
    return { error: (e instanceof Error ? e.message : String(e)).split('\n')[0]! };
  }
}

function answer(q: IoQueues, m: NvmeCall, state: { quiesced: boolean }, doorbells: Int32Array, disk: (op: DiskCheckpointOp) => NvmeDiskAnswer): unknown {
  switch (m.t) {
    case 'createCq': return q.createCq(m.qid, m.base, m.size, m.vector, m.ien);
    case 'createSq': return q.createSq(m.qid, m.base, m.size, m.cqid);
    case 'deleteSq': return q.deleteSq(m.qid);
    case 'deleteCq': return q.deleteCq(m.qid);
    case 'setDbbuf': return q.setDbbuf(m.dbs, m.eis);
    case 'reset': q.reset(); return SC.SUCCESS;
    case 'save':
      // doorbells rung but not yet taken (quiesced): part of the queues' state
      for (let i = 2; i < doorbells.length; i++) {
        const v = Atomics.exchange(doorbells, i, -1);
        if (v >= 0) q.setDoorbell(i, v);
      }
      return q.save();
    case 'restore':
      try { q.restore(m.state); return ''; } catch (e) { return (e as Error).message; }
    case 'quiesce': state.quiesced = true; return SC.SUCCESS;
    case 'unquiesce': state.quiesced = false; return SC.SUCCESS;
    case 'disk': return disk(m.op);
    case 'stop': return SC.SUCCESS;
  }
}

function run(d: NvmeThreadData): void {
  setThreadName(d.name);
  const all = new Uint8Array(viewAt(d.ram.hostAddr, d.ram.size));
  const mem = new GuestMemory(d.ram.regions.map((r) => ({
    gpa: r.gpa, bytes: all.subarray(r.offset, r.offset + r.size), hostAddr: d.ram.hostAddr + BigInt(r.offset), ramOffset: r.offset,
  })), d.ram.dirty && new Uint8Array(d.ram.dirty));
  const directIrq = new Int32Array(d.directIrq), doorbells = new Int32Array(d.doorbells), shared = new Int32Array(d.shared);
  const event = (e: NvmeThreadEvent): void => d.port.postMessage(e);
  const ns = namespaceOver(openBackend(d.disk, 'nvme'), d.disk);
  const queues = ioQueuesOver(mem, ns, d.disk, (v) => {
    const fd = Atomics.load(directIrq, v);
    if (fd < 0 || !signalEventfd(fd)) event({ t: 'irq', vector: v });
  }, () => { Atomics.store(shared, 0, 1); event({ t: 'fatal' }); });
  const ep = libc.epollCreate1(EPOLL_CLOEXEC);
  if (ep < 0) throw new Error(`epoll_create1: errno ${errno()}`);
  const ev = Buffer.alloc(EPOLL_EVENT_BYTES);
  for (const [i, fd] of [d.kickFd, d.ctlFd].entries()) {
    ev.writeUInt32LE(EPOLLIN, 0); ev.writeUInt32LE(i, 4); ev.writeUInt32LE(0, 8);
    if (libc.epollCtl(ep, EPOLL_CTL_ADD, fd, ev) < 0) throw new Error(`epoll_ctl: errno ${errno()}`);
  }
  const events = Buffer.alloc(2 * EPOLL_EVENT_BYTES), scratch = Buffer.alloc(8), ack = new Int32Array(d.ack);
  const state = { quiesced: false };
  let kicked = false;
  for (;;) {
    const n = libc.epollWait(ep, events, 2, kicked && !state.quiesced ? 0 : 1000);
    let control = n === 0;
    for (let i = 0; i < n; i++) {
      const idx = events.readUInt32LE(i * EPOLL_EVENT_BYTES + 4);
      libc.read(idx === 0 ? d.kickFd : d.ctlFd, scratch, 8);
      if (idx === 0) kicked = true; else control = true;
    }
    for (let m = control ? receiveMessageOnPort(d.port) : undefined; m; m = receiveMessageOnPort(d.port)) {
      const call = m.message as NvmeCall & { seq: number };
      if (call.t === 'reset') Atomics.store(shared, 0, 0);
      // closed before the answer: once answered, the caller may reopen the image, or exit
      if (call.t === 'stop') ns.backend.close();
      d.reply.postMessage(answer(queues, call, state, doorbells, (op) => checkpoint(ns, d, op)));
      Atomics.store(ack, 0, call.seq);
      Atomics.notify(ack, 0);
      if (call.t === 'stop') { libc.close(ep); d.port.close(); d.reply.close(); return; }
      if (call.t === 'unquiesce' || call.t === 'restore') kicked = true;
    }
    if (!kicked || state.quiesced) continue;
    Atomics.add(shared, 1, 1);
    for (let i = 2; i < doorbells.length; i++) {
      const v = Atomics.exchange(doorbells, i, -1);
      if (v >= 0) queues.doorbell(i, v);
    }
    kicked = queues.serve(); // work left: look at the control fd, then go on at once
  }
}

const d = workerData as NvmeThreadData;
try {
  run(d);
} catch (e) {
  d.port.postMessage({ t: 'log', msg: `I/O thread failed: ${e instanceof Error ? e.message : String(e)}` } satisfies NvmeThreadEvent);
  const ack = new Int32Array(d.ack);
  Atomics.store(ack, 0, 0x7fffffff); // nobody waits on a dead thread
  Atomics.notify(ack, 0);
}
