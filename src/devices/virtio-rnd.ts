/**
 * virtio-rnd (entropy, virtio device 4): one queue; every writable buffer
 * the guest posts is filled from the host's CSPRNG. `-s N,virtio-rnd`.
 */
import { randomFillSync } from 'node:crypto';
import { VIRTIO_ID_RNG, VIRTIO_COMMON_FEATURES } from '../virtio/constants.js';
import type { VirtioDevice, VirtioInterrupt } from '../virtio/device.js';
import { type Virtqueue, VirtqueueError } from '../virtio/queue.js';
import { registerPciDevice } from '../pci/device.js';
import { VirtioPci, virtioPciOptions } from '../virtio/pci/transport.js';

/** Bound on bytes served per notify, so a guest cannot hold the device thread. */
const MAX_BYTES_PER_NOTIFY = 1 << 20;

export class VirtioRnd implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_RNG;
  readonly numQueues = 1;
  readonly maxQueueSize = 64;
  readonly features = VIRTIO_COMMON_FEATURES;
  readonly configSize = 0;
  private queue: Virtqueue | undefined;
  private irq: VirtioInterrupt | undefined;
  /** bytes handed to the guest, for stats and tests */
  served = 0;

  readConfig(): number { return 0; }
  writeConfig(): void {}

  activate(queues: readonly Virtqueue[], _mem: unknown, interrupt: VirtioInterrupt): void {
    this.queue = queues[0];
    this.irq = interrupt;
  }

  queueNotify(): void {
    const q = this.queue, irq = this.irq;
    if (!q || !irq) return;
    let budget = MAX_BYTES_PER_NOTIFY;
    let pushed = false;
    try {
      for (let chain = q.popChain(); chain; chain = budget > 0 ? q.popChain() : undefined) {
        const n = Math.min(chain.writableLen, 64 * 1024, budget);
        const bytes = randomFillSync(Buffer.alloc(n));
        const written = chain.write(bytes, 0);
        q.pushUsed(chain.head, written);
        this.served += written;
        budget -= Math.max(written, 1);
        pushed = true;
      }
    } catch (e) {
      if (e instanceof VirtqueueError) irq.needsReset(e); else throw e;
    }
    if (pushed) irq.signalUsed(0);
  }

  reset(): void {
    this.queue = undefined;
    this.irq = undefined;
  }
}

registerPciDevice({
  name: 'virtio-rnd',
  create: (ctx, node, bdf) => new VirtioPci(ctx, new VirtioRnd(), bdf, 'virtio-rnd', virtioPciOptions(node)),
});
