/**
 * Submission and completion queues in guest memory: where an entry is,
 * head/tail/phase, and the checks a doorbell value gets. A queue's whole
 * ring is checked to lie in guest RAM when it is created, so fetching and
 * posting never fail afterwards.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import { CQE_SIZE, SQE_SIZE } from './constants.js';

export class CompletionQueue {
  head = 0;
  tail = 0;
  phase = 1;
  /** entries posted since the last interrupt */
  pending = false;
  private readonly cqe = new Uint8Array(CQE_SIZE);
  private readonly dv = new DataView(this.cqe.buffer);

  constructor(readonly qid: number, readonly base: number, readonly size: number, readonly vector: number, readonly ien: boolean) {}

  full(): boolean { return (this.tail + 1) % this.size === this.head; }

  /** Post one completion (the phase bit goes last, in DW3: the driver polls it). */
  post(mem: GuestMemory, result: number, sqid: number, sqhd: number, cid: number, status: number): void {
    const dv = this.dv;
    dv.setUint32(0, result >>> 0, true);
    dv.setUint32(4, 0, true);
    dv.setUint32(8, (sqhd | (sqid << 16)) >>> 0, true);
    dv.setUint32(12, (cid | ((this.phase | (status << 1)) << 16)) >>> 0, true);
    mem.copyIn(this.base + this.tail * CQE_SIZE, this.cqe, 0, CQE_SIZE);
    this.tail++;
    if (this.tail === this.size) { this.tail = 0; this.phase ^= 1; }
    this.pending = true;
  }
}

export class SubmissionQueue {
  head = 0;
  tail = 0;

  constructor(readonly qid: number, readonly base: number, readonly size: number, readonly cq: CompletionQueue) {}

  /** Copy the entry at head into `sqe` and advance head. */
  fetch(mem: GuestMemory, sqe: Uint8Array): void {
    mem.copyOut(this.base + this.head * SQE_SIZE, sqe, 0, SQE_SIZE);
    this.head = this.head + 1 === this.size ? 0 : this.head + 1;
  }
}

/** A queue base the controller accepts: page aligned (offset 0) and the whole ring in RAM. */
export function ringFits(mem: GuestMemory, base: number, entries: number, entrySize: number): boolean {
  return base % 4096 === 0 && mem.contains(base, entries * entrySize);
}

/** A 64-bit guest address as a number, or -1 when it cannot be RAM (above 2^53). */
export function addr64(lo: number, hi: number): number {
  return hi >= 0x200000 ? -1 : hi * 0x1_0000_0000 + (lo >>> 0);
}
