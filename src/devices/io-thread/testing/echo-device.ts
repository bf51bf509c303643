/**
 * A tiny two-queue virtio device for the I/O-thread host's tests: each chain
 * gets its queue number and then its readable bytes written back. A chain
 * whose first byte is HOLD blocks the thread until `gate` word 0 is set (at
 * most 10 s), standing in for a stuck host call. With `ownFd` it also has
 * an fd of its own for the thread to wait on (pollFds/onReadable).
 */
import { libc } from '../../../host/libc.js';
import type { GuestMemory } from '../../../memory/guest-memory.js';
import type { VirtioDevice, VirtioInterrupt } from '../../../virtio/device.js';
import type { Virtqueue } from '../../../virtio/queue.js';

export const HOLD = 0xff;

export interface EchoInit {
  gate?: SharedArrayBuffer;
  /** the factory throws this */
  fail?: string;
  /** warm up until a control message comes (at most 10 s), then log 'echo warm-up stopped' */
  warmUp?: boolean;
  /** an eventfd of the model's own (pollFds): onReadable drains it and adds 1 to `seen` word 0 */
  ownFd?: number;
  seen?: SharedArrayBuffer;
  /** word 0 is set to 1 when the model is made */
  created?: SharedArrayBuffer;
}

export class EchoDevice implements VirtioDevice {
  readonly deviceType = 0x7e;
  readonly numQueues = 2;
  readonly maxQueueSize = 16;
  readonly features = 0n;
  readonly configSize = 4;
  destroyed = false;
  private queues: readonly Virtqueue[] = [];
  private interrupt: VirtioInterrupt | undefined;

  constructor(private readonly init: EchoInit = {}) {
    if (init.fail) throw new Error(init.fail);
    if (init.created) Atomics.store(new Int32Array(init.created), 0, 1);
  }

  readConfig(): number { return 0xec40; }
  writeConfig(): void {}

  activate(queues: readonly Virtqueue[], _mem: GuestMemory, interrupt: VirtioInterrupt): void {
    this.queues = queues;
    this.interrupt = interrupt;
  }

  reset(): void {
    this.queues = [];
    this.interrupt = undefined;
  }

  destroy(): void { this.destroyed = true; }

  pollFds(): readonly number[] { return this.init.ownFd === undefined ? [] : [this.init.ownFd]; }

  onReadable(): void {
    libc.read(this.init.ownFd!, Buffer.alloc(8), 8);
    if (this.init.seen) Atomics.add(new Int32Array(this.init.seen), 0, 1);
  }

  queueNotify(q: number): void {
    const vq = this.queues[q], irq = this.interrupt;
    if (!vq?.ready || !irq) return;
    try {
      let pushed = false;
      for (let c = vq.popChain(); c; c = vq.popChain()) {
        const data = c.readAll(64);
        if (data[0] === HOLD && this.init.gate) Atomics.wait(new Int32Array(this.init.gate), 0, 0, 10_000);
        vq.pushUsed(c.head, c.write(Buffer.concat([Buffer.of(q), data])));
        pushed = true;
      }
      if (pushed) irq.signalUsed(q);
    } catch (e) {
      irq.needsReset(e);
    }
  }
}
