/**
 * The driver's side of a split virtqueue, in a GuestMemory: it lays out the
 * rings, builds descriptor chains (direct or through an indirect table) with
 * readable and writable parts, publishes them on the avail ring and reads
 * back used entries. The virtio-blk I/O thread's warm-up drives its scratch
 * queue with it (devices/virtio-blk/warm-up.ts); tests use it as their
 * guest driver (virtio/testing/mock-driver.ts adds the raw writes a hostile
 * driver could make). It trusts its caller: it is never fed guest input.
 *
 * Layout from `base` (defaults shown):
 *   desc table  base                       16 * size bytes
 *   avail ring  base + 16*size             6 + 2*size bytes (used_event last)
 *   used ring   align4(avail end)          6 + 8*size bytes (avail_event last)
 *               (legacy: the next 4096-byte boundary, base page-aligned)
 *   data area   align16(used end) .. dataEnd   buffers and indirect tables
 *
 * Data buffers come from a bump allocator that wraps to the start of the
 * data area when full: fine for callers that do not keep old buffers around.
 */
import type { GuestMemory } from '../memory/guest-memory.js';
import {
  VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_SIZE,
  availRingBytes, descTableBytes, usedRingBytes,
} from './constants.js';
import { Virtqueue, type VirtqueueOptions } from './queue.js';

export interface RawDescriptor {
  addr: number | bigint;
  len: number;
  flags: number;
  next: number;
}

export interface ChainSpec {
  /** device-readable buffers: contents, or a length (zero-filled) */
  readable?: (Uint8Array | number)[];
  /** device-writable buffers: lengths (filled with 0xee first) */
  writable?: number[];
}

export interface AddChainOptions {
  /** put the buffers in an indirect table referenced by one ring descriptor */
  indirect?: boolean;
  /** publish on the avail ring now (default true) */
  publish?: boolean;
  /** leave this many bytes between buffers, as scattered guest pages (default 0: adjacent) */
  gap?: number;
}

export interface UsedElem {
  id: number;
  len: number;
}

const align = (v: number, a: number): number => Math.ceil(v / a) * a;

export class SplitQueueDriver {
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  readonly dataStart: number;
  readonly dataEnd: number;
  private dataNext: number;
  private availIdx: number;
  private lastUsed: number;
  private readonly free: number[] = [];
  /** head -> descriptor-table indices it holds */
  private readonly chains = new Map<number, number[]>();
  /** head -> its writable buffers */
  private readonly writableOf = new Map<number, { gpa: number; len: number }[]>();

  constructor(readonly mem: GuestMemory, readonly size: number,
    opts: { base?: number; dataEnd?: number; startIdx?: number; legacy?: boolean } = {}) {
    const base = opts.base ?? 0;
    this.desc = align(base, opts.legacy ? 4096 : 16);
    this.avail = this.desc + descTableBytes(size);
    this.used = align(this.avail + availRingBytes(size), opts.legacy ? 4096 : 4);
    this.dataStart = align(this.used + usedRingBytes(size), 16);
    this.dataEnd = opts.dataEnd ?? mem.totalSize;
    this.dataNext = this.dataStart;
    this.availIdx = this.lastUsed = (opts.startIdx ?? 0) & 0xffff;
    mem.fill(this.desc, this.dataStart - this.desc, 0);
    mem.writeU16(this.avail + 2, this.availIdx);
    mem.writeU16(this.used + 2, this.availIdx);
    for (let i = size - 1; i >= 0; i--) this.free.push(i);
  }

  /** The legacy QUEUE_PFN of this layout (legacy layouts only). */
  get pfn(): number { return this.desc / 4096; }

  /** A device-side queue configured on this layout (size, addresses, ready) and validated. */
  makeQueue(opts: VirtqueueOptions & { maxSize?: number; eventIdx?: boolean; indirectDesc?: boolean } = {}): Virtqueue {
    const q = new Virtqueue(this.mem, opts.maxSize ?? this.size, opts);
    this.configure(q);
    q.eventIdx = opts.eventIdx ?? false;
    q.indirectDesc = opts.indirectDesc ?? true;
    q.validate();
    return q;
  }

  /** Write this layout into a queue's configuration and enable it (no validate). */
  configure(q: Virtqueue): void {
    q.size = this.size;
    q.descTable = BigInt(this.desc);
    q.availRing = BigInt(this.avail);
    q.usedRing = BigInt(this.used);
    q.ready = true;
  }

  /** Bytes from the data area (wraps to its start when exhausted). */
  alloc(len: number, alignment = 8): number {
    let a = align(this.dataNext, alignment);
    if (a + len > this.dataEnd) a = align(this.dataStart, alignment);
    if (a + len > this.dataEnd) throw new Error(`driver queue: ${len} bytes do not fit in the data area`);
    this.dataNext = a + len;
    return a;
  }

  get freeDescriptors(): number { return this.free.length; }

  // ---- ring writes ------------------------------------------------------------

  writeDescAt(gpa: number, d: RawDescriptor): void {
    this.mem.writeU64(gpa, BigInt(d.addr));
    this.mem.writeU32(gpa + 8, d.len);
    this.mem.writeU16(gpa + 12, d.flags);
    this.mem.writeU16(gpa + 14, d.next);
  }

  setDesc(index: number, d: RawDescriptor): void {
    this.writeDescAt(this.desc + VIRTQ_DESC_SIZE * index, d);
  }

  /** Put `head` in the next avail slot and bump avail.idx. */
  publish(head: number): void {
    this.mem.writeU16(this.avail + 4 + 2 * (this.availIdx % this.size), head);
    this.setAvailIdx(this.availIdx + 1);
  }

  setAvailIdx(v: number): void {
    this.availIdx = v & 0xffff;
    this.mem.writeU16(this.avail + 2, this.availIdx);
  }

  get availIndex(): number { return this.availIdx; }

  get usedIdx(): number { return this.mem.readU16(this.used + 2); }

  // ---- well-formed chains ---------------------------------------------------

  /**
   * Build a chain from `spec` and (by default) publish it. Returns its head.
   * Readable buffers come first, then writable, as the spec requires.
   */
  addChain(spec: ChainSpec, opts: AddChainOptions = {}): number {
    const bufs: { gpa: number; len: number; write: boolean }[] = [];
    for (const r of spec.readable ?? []) {
      const len = typeof r === 'number' ? r : r.length;
      const gpa = this.alloc(len + (opts.gap ?? 0));
      if (typeof r === 'number') this.mem.fill(gpa, len, 0);
      else this.mem.write(gpa, r);
      bufs.push({ gpa, len, write: false });
    }
    for (const len of spec.writable ?? []) {
      const gpa = this.alloc(len + (opts.gap ?? 0));
      this.mem.fill(gpa, len, 0xee);
      bufs.push({ gpa, len, write: true });
    }
    if (bufs.length === 0) throw new Error('driver queue: empty chain');
    let head: number;
    if (opts.indirect) {
      const table = this.alloc(VIRTQ_DESC_SIZE * bufs.length, 16);
      bufs.forEach((b, i) => this.writeDescAt(table + VIRTQ_DESC_SIZE * i, {
        addr: b.gpa, len: b.len,
        flags: (b.write ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < bufs.length ? VIRTQ_DESC_F_NEXT : 0),
        next: i + 1 < bufs.length ? i + 1 : 0,
      }));
      head = this.take(1)[0]!;
      this.setDesc(head, { addr: table, len: VIRTQ_DESC_SIZE * bufs.length, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
      this.chains.set(head, [head]);
    } else {
      const idx = this.take(bufs.length);
      bufs.forEach((b, i) => this.setDesc(idx[i]!, {
        addr: b.gpa, len: b.len,
        flags: (b.write ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < bufs.length ? VIRTQ_DESC_F_NEXT : 0),
        next: i + 1 < bufs.length ? idx[i + 1]! : 0,
      }));
      head = idx[0]!;
      this.chains.set(head, idx);
    }
    this.writableOf.set(head, bufs.filter((b) => b.write).map(({ gpa, len }) => ({ gpa, len })));
    if (opts.publish ?? true) this.publish(head);
    return head;
  }

  private take(n: number): number[] {
    if (this.free.length < n) throw new Error(`driver queue: ${n} descriptors wanted, ${this.free.length} free`);
    return this.free.splice(this.free.length - n, n).reverse();
  }

  /** The next used element the device published, or undefined. Frees the chain's descriptors. */
  popUsed(): UsedElem | undefined {
    if (this.usedIdx === this.lastUsed) return undefined;
    const e = this.used + 4 + 8 * (this.lastUsed % this.size);
    const elem = { id: this.mem.readU32(e), len: this.mem.readU32(e + 4) };
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    const held = this.chains.get(elem.id);
    if (held) {
      this.chains.delete(elem.id);
      for (const i of held) this.free.push(i);
    }
    return elem;
  }

  /** All used elements published since the last call. */
  drainUsed(): UsedElem[] {
    const out: UsedElem[] = [];
    for (let e = this.popUsed(); e; e = this.popUsed()) out.push(e);
    return out;
  }

  /** The first `len` bytes the device wrote into chain `head`'s writable buffers. */
  written(head: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    let at = 0;
    for (const b of this.writableOf.get(head) ?? []) {
      if (at >= len) break;
      const k = Math.min(b.len, len - at);
      out.set(this.mem.read(b.gpa, k), at);
      at += k;
    }
    return out.subarray(0, at);
  }
}
