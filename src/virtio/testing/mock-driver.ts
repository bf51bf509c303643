/**
 * The fake virtio driver for tests (after rust-vmm's MockSplitQueue): the
 * production SplitQueueDriver (virtio/driver-queue.ts) plus the raw ring
 * writes and reads a hostile or picky driver makes (avail ring slots and
 * flags, used_event, avail_event, used flags).
 */
import { SplitQueueDriver } from '../driver-queue.js';

export class MockSplitQueue extends SplitQueueDriver {
  setAvailRing(slot: number, head: number): void {
    this.mem.writeU16(this.avail + 4 + 2 * (slot % this.size), head);
  }

  setAvailFlags(v: number): void { this.mem.writeU16(this.avail, v); }
  setUsedEvent(v: number): void { this.mem.writeU16(this.avail + 4 + 2 * this.size, v & 0xffff); }
  get availEvent(): number { return this.mem.readU16(this.used + 4 + 8 * this.size); }
  get usedFlags(): number { return this.mem.readU16(this.used); }
}
