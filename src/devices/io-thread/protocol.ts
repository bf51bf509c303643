/**
 * What the main thread (host.ts) and a device's I/O thread (runtime.ts) share:
 * the worker's start-up data and the control messages both ways.
 *
 * Control (messages on `port`, each followed by a write to ctlFd):
 *   activate {gen, states, features}  serve these queues (one state per queue, by number)
 *   reset {seq}                       stop serving; ack
 *   quiesce {gen}                     stop taking requests; reply quiesced {gen, states}
 *   unquiesce                         go on
 *   disk {seq, op}                    (quiesced) a checkpoint's work on the model's disk;
 *                                     reply diskDone {seq, state | error (one line)}
 *   stop {seq}                        destroy the model; ack; end the thread
 *   open                              (openWhenTold) make the model now: its storage is ours
 * Acks: ack[0] = seq, then Atomics.notify (the main thread may wait on it).
 */
import type { MessagePort } from 'node:worker_threads';
import type { VirtioDevice } from '../../virtio/device.js';
import type { VirtqueueState } from '../../virtio/queue.js';
import type { DiskCheckpointOp, DiskState } from '../../snapshot/disks.js';

/** Guest RAM as an I/O thread sees it: the process's own mapping (host address) and where each region lives in it. */
export interface SharedGuestRam {
  hostAddr: bigint;
  size: number;
  regions: { gpa: number; offset: number; size: number }[];
  /** the VM's map of pages tshyve wrote, one byte per page (GuestMemory's `dirty`) */
  dirty?: SharedArrayBuffer;
}

/**
 * A device model as the I/O thread runs it; destroy() (if any) runs at VM
 * teardown. A model with host fds of its own to serve (a network backend)
 * lists them in pollFds(): the thread waits on them too, edge-triggered,
 * and calls onReadable(i) for pollFds()[i] while the queues are served
 * (and once at each activation and unquiesce), so the model must read until
 * EAGAIN, or until it has nowhere to put the data and will go on by itself
 * (e.g. at the guest's next notify).
 */
export type IoThreadModel = VirtioDevice & {
  destroy?(): void;
  /** A model with a disk: a checkpoint's work on it (snapshot/disks.ts); throws one line. */
  checkpointDisk?(op: DiskCheckpointOp): DiskState;
  pollFds?(): readonly number[];
  onReadable?(i: number): void;
};

export interface IoThreadData<I> {
  port: MessagePort;
  ack: SharedArrayBuffer;
  /** one word per queue: VirtioOffload.directIrq */
  directIrq: SharedArrayBuffer;
  /** one word: queue notifications taken (VirtioOffload.served) */
  served: SharedArrayBuffer;
  /** one eventfd per queue (KVM ioeventfds once the transport binds them) */
  notifyFds: number[];
  ctlFd: number;
  /** the main thread's mapping of guest RAM: the same pages the vCPUs use, shared or copy-on-write */
  ram: SharedGuestRam;
  /** the thread's name, for people looking at the process's threads */
  name: string;
  /** the device's own start-up data, for its factory */
  init: I;
  /**
   * make the model (which opens its storage) only at an 'open' message: an
   * incoming migration's VM is built before the source lets go of its disks
   */
  openWhenTold?: boolean;
}

export type ToIoThread =
  | { t: 'activate'; gen: number; states: VirtqueueState[]; features: string }
  | { t: 'reset'; seq: number }
  | { t: 'quiesce'; gen: number }
  | { t: 'unquiesce' }
  | { t: 'disk'; seq: number; op: DiskCheckpointOp }
  | { t: 'stop'; seq: number }
  | { t: 'open' };

export type FromIoThread =
  | { t: 'irq'; gen: number; q: number }
  | { t: 'config'; gen: number }
  | { t: 'needsReset'; gen: number; reason: string }
  /** the ready queues' states, by queue number (undefined: not served) */
  | { t: 'quiesced'; gen: number; states: (VirtqueueState | undefined)[] }
  | { t: 'diskDone'; seq: number; state?: DiskState; error?: string }
  | { t: 'log'; msg: string }
  | { t: 'fatal'; msg: string };
