/**
 * A split virtqueue (virtio 1.2, 2.7) as the device sees it, over GuestMemory.
 *
 * The guest is hostile. Everything the driver controls (ring addresses, the
 * avail index, ring entries, descriptors, indirect tables) is checked before
 * it is acted on, and each guest-shared field is read exactly once: a
 * descriptor is copied into a private scratch buffer and parsed from there.
 * Every violation is a VirtqueueError with a stable code; after one, the
 * queue is broken (popChain keeps throwing the same error) until it is reset,
 * and the device is expected to set NEEDS_RESET (VirtioCore does this).
 *
 * Bounds: a chain walk reads at most `size` descriptors from the descriptor
 * table plus at most `maxChainLen` from one indirect table, and a chain holds
 * at most `maxChainLen` buffers (default: the queue size, as the spec
 * requires of drivers). Nothing here allocates more than that per chain.
 *
 * Memory ordering: JS offers no fences for the (non-shared) buffers guest
 * RAM is mapped into. The code issues its guest accesses in the order the
 * spec requires (used element, then used idx; avail idx, then ring entry,
 * then descriptors; used idx before reading used_event) and relies on x86
 * TSO plus the JIT keeping that program order. This is an assumption, not
 * something this module can enforce.
 */
import { TshyveError } from '../errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { StateReader, StateWriter } from '../snapshot/state.js';
import type { IoVecs } from '../memory/iovec.js';
import {
  VIRTQ_AVAIL_ALIGN, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_ALIGN, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE, VIRTQ_DESC_SIZE, VIRTQ_MAX_SIZE, VIRTQ_USED_ALIGN, VIRTQ_USED_F_NO_NOTIFY,
  availRingBytes, descTableBytes, usedRingBytes,
} from './constants.js';

export type VirtqueueErrorCode =
  /** popChain/pushUsed on a queue that is not enabled and validated */
  | 'EVQ_NOT_READY'
  /** size 0, not a power of two, or above the device maximum */
  | 'EVQ_SIZE'
  /** a ring address not aligned as 2.7 requires */
  | 'EVQ_ALIGN'
  /** a ring overflows 64 bits or is not inside guest RAM */
  | 'EVQ_RING_RANGE'
  /** avail idx more than queue-size ahead of the last index the device consumed */
  | 'EVQ_AVAIL_IDX'
  /** a head or next index >= the size of its descriptor table */
  | 'EVQ_DESC_INDEX'
  /** a chain that visits more descriptors than its table holds: a loop */
  | 'EVQ_CHAIN_LOOP'
  /** a chain of more than maxChainLen buffers or more than 2^32 bytes */
  | 'EVQ_CHAIN_LEN'
  /** a buffer (addr, len) that overflows or is not inside guest RAM */
  | 'EVQ_DESC_RANGE'
  /** a device-readable buffer after a device-writable one */
  | 'EVQ_DESC_ORDER'
  /** INDIRECT used though VIRTIO_RING_F_INDIRECT_DESC was not negotiated */
  | 'EVQ_INDIRECT_FEATURE'
  /** indirect table length zero, not a multiple of 16, or longer than maxChainLen */
  | 'EVQ_INDIRECT_LEN'
  /** indirect table outside guest RAM */
  | 'EVQ_INDIRECT_RANGE'
  /** INDIRECT inside an indirect table */
  | 'EVQ_INDIRECT_NESTED'
  /** INDIRECT together with NEXT */
  | 'EVQ_INDIRECT_NEXT'
  /** device-side misuse: used id >= size, or more used entries than chains popped */
  | 'EVQ_USED'
  /** a guest memory access failed unexpectedly (a bug or a vanished region) */
  | 'EVQ_MEMORY'
  /** saved queue state rejected */
  | 'EVQ_BADSTATE';

/** A virtqueue protocol violation. The device answers it with NEEDS_RESET. */
/**
 * A full memory barrier. The driver writes an index and then reads our event
 * field; we write ours and then read its index. Without a barrier between
 * each write and the following read, x86 may let the read pass the write
 * and both sides miss each other: a lost notification or interrupt and a
 * stalled queue. A seq-cst RMW on a SharedArrayBuffer is a locked
 * instruction in V8, which orders all earlier stores before later loads.
 */
const fenceWord = new Int32Array(new SharedArrayBuffer(4));
export function fence(): void { Atomics.exchange(fenceWord, 0, 0); }

export class VirtqueueError extends TshyveError {
  constructor(override readonly code: VirtqueueErrorCode, message: string) {
    super(code, `virtqueue: ${message}`);
  }
}

/** One guest buffer of a chain: a range checked to lie inside one RAM region. */
export interface GuestBuffer {
  readonly gpa: number;
  readonly len: number;
}

const TWO_32 = 0x1_0000_0000;
/** Highest value of a descriptor's addr high word that keeps addr a safe integer. */
const MAX_SAFE_HI = 0x1f_ffff;

function fail(code: VirtqueueErrorCode, message: string): never {
  throw new VirtqueueError(code, message);
}

/** Convert anything thrown by guest memory access into a VirtqueueError. */
function asQueueError(e: unknown): VirtqueueError {
  if (e instanceof VirtqueueError) return e;
  return new VirtqueueError('EVQ_MEMORY', e instanceof Error ? e.message : String(e));
}

/**
 * A descriptor chain popped from the available ring: the head index (to
 * give back with pushUsed) and its device-readable then device-writable
 * buffers, in chain order. All buffers were checked against guest memory.
 * The buffers are kept packed (gpa, len and host address in one
 * Float64Array): a chain of 256 pages is one allocation, not 256 objects.
 */
const NO_BUFS = new Float64Array(0);

export class DescriptorChain {
  // set by reuse(), which the constructor calls too
  private _head = 0;
  private bufs: Float64Array = NO_BUFS;
  private count = 0;
  private _readableCount = 0;
  private _readableLen = 0;
  private _writableLen = 0;

  constructor(
    private readonly mem: GuestMemory,
    head: number,
    /**
     * gpa, len, host address (0: no native mapping here) of each buffer in
     * chain order: the readable ones, then the writable ones
     */
    bufs: Float64Array,
    /** how many of the buffers are device-readable (they come first) */
    readableCount: number,
    readableLen: number,
    writableLen: number,
    /** buffers in `bufs` (default: all of it) */
    count = bufs.length / 3,
  ) {
    this.reuse(head, bufs, count, readableCount, readableLen, writableLen);
  }

  /** Point this (transient) chain at a new walk's buffers: see Virtqueue.popChain(true). */
  reuse(head: number, bufs: Float64Array, count: number, readableCount: number, readableLen: number, writableLen: number): this {
    this._head = head; this.bufs = bufs; this.count = count;
    this._readableCount = readableCount; this._readableLen = readableLen; this._writableLen = writableLen;
    return this;
  }

  get head(): number { return this._head; }
  /** how many of the buffers are device-readable (they come first) */
  get readableCount(): number { return this._readableCount; }
  get readableLen(): number { return this._readableLen; }
  get writableLen(): number { return this._writableLen; }

  /** Number of buffers, readable and writable. */
  get bufferCount(): number { return this.count; }

  /**
   * Mark the writable buffers dirty in guest memory's map: a device that
   * wrote them through their host addresses (preadv) calls this once the
   * data is in, so a live migration sends them again.
   */
  markWritten(): void {
    this.mem.markDirtyPieces(this.bufs, this._readableCount, this.count);
  }
  get readable(): GuestBuffer[] { return this.list(0, this.readableCount); }
  get writable(): GuestBuffer[] { return this.list(this.readableCount, this.bufferCount); }

  private list(from: number, to: number): GuestBuffer[] {
    const out: GuestBuffer[] = [];
    for (let i = from; i < to; i++) out.push({ gpa: this.bufs[3 * i]!, len: this.bufs[3 * i + 1]! });
    return out;
  }

  /**
   * Copy readable bytes [offset, offset + dst.length) into `dst` (fewer if
   * the readable part ends first); returns how many. No allocation: for
   * fixed-size headers read once into the device's own buffer.
   */
  readInto(dst: Uint8Array, offset: number): number {
    const start = clamp(offset, this._readableLen);
    const n = clamp(dst.length, this._readableLen - start);
    try {
      this.copy(0, this._readableCount, start, n, dst, false);
    } catch (e) {
      throw asQueueError(e);
    }
    return n;
  }

  /**
   * Buffers [from, to) as one byte stream: copy its bytes [start, start+n)
   * to guest memory from buf[0..n) (`toGuest`), or from it into buf.
   * A loop of its own, no callback: this is on every request's path.
   */
  private copy(from: number, to: number, start: number, n: number, buf: Uint8Array, toGuest: boolean): void {
    const mem = this.mem, bufs = this.bufs;
    let skip = start, done = 0;
    for (let i = from; i < to && done < n; i++) {
      const len = bufs[3 * i + 1]!;
      if (skip >= len) { skip -= len; continue; }
      const k = Math.min(len - skip, n - done);
      if (toGuest) mem.copyIn(bufs[3 * i]! + skip, buf, done, k);
      else mem.copyOut(bufs[3 * i]! + skip, buf, done, k);
      done += k;
      skip = 0;
    }
  }

  /**
   * The readable bytes, copied, up to `limit` bytes. The limit is required:
   * readableLen is guest-chosen (up to 2^32, buffers may overlap).
   */
  readAll(limit: number): Buffer {
    return this.readAt(0, limit);
  }

  /**
   * `len` bytes of the readable part starting at byte `offset` (a copy),
   * shortened to what the chain holds.
   */
  readAt(offset: number, len: number): Buffer {
    const out = Buffer.alloc(clamp(len, this._readableLen - clamp(offset, this._readableLen)));
    this.readInto(out, offset);
    return out;
  }

  /**
   * Write `data` into the writable part starting at byte `offset`; bytes
   * beyond the writable capacity are dropped. Returns how many were written.
   */
  write(data: Uint8Array, offset = 0): number {
    const start = clamp(offset, this.writableLen);
    const n = Math.min(data.length, this.writableLen - start);
    try {
      const last = this.bufferCount - 1;
      const lastStart = this.writableLen - (last >= this.readableCount ? this.bufs[3 * last + 1]! : 0);
      if (n > 0 && start >= lastStart) {
        // all of it in the last buffer (a status byte after a read's pages): no walk over the others
        this.mem.copyIn(this.bufs[3 * last]! + (start - lastStart), data, 0, n);
        return n;
      }
      this.copy(this._readableCount, this.count, start, n, data, true);
    } catch (e) {
      throw asQueueError(e);
    }
    return n;
  }

  /**
   * Append the writable buffers' (gpa, len, host address) triples to `dst`
   * from triple `at`; returns the triple count after them. `dst` must have
   * room (3 * bufferCount more entries): for a device that gathers several
   * chains into one transfer (virtio-net's merged rx buffers).
   */
  copyWritable(dst: Float64Array, at: number): number {
    const bufs = this.bufs;
    let j = 3 * at;
    for (let i = 3 * this._readableCount; i < 3 * this.count; i++) dst[j++] = bufs[i]!;
    return j / 3;
  }

  /**
   * Bytes [start, start+len) of the readable (`writable` false) or writable
   * part as host addresses in `iov`, for one preadv/pwritev straight on
   * guest RAM. Returns false when some piece has no native mapping here
   * (unit tests over plain buffers). Shortened to what the part holds.
   */
  hostIovec(writable: boolean, start: number, len: number, iov: IoVecs): boolean {
    return writable
      ? iov.fill(this.bufs, this.readableCount, this.bufferCount, start, len)
      : iov.fill(this.bufs, 0, this.readableCount, start, len);
  }
}

function hex64(hi: number, lo: number): string {
  return `0x${(BigInt(hi) << 32n | BigInt(lo)).toString(16)}`;
}

/** `v` as an integer in [0, max] (NaN -> 0). */
function clamp(v: number, max: number): number {
  if (!(v > 0)) return 0;
  return v >= max ? max : Math.floor(v);
}

/**
 * A queue's configuration and progress as typed fields: what a snapshot
 * holds (saveState/readState) and what a restore checks (restoreState).
 */
export interface QueueFields {
  maxSize: number;
  size: number;
  ready: boolean;
  desc: bigint;
  avail: bigint;
  used: bigint;
  nextAvail: number;
  nextUsed: number;
  signalledUsed: number;
  eventIdx: boolean;
  indirectDesc: boolean;
  notificationsEnabled: boolean;
  /** the VirtqueueOptions.maxChainLen given, or undefined to follow the queue size */
  maxChainLen: number | undefined;
}

/**
 * A queue handed to or from a worker thread (postMessage: plain data,
 * addresses as "0x..." strings). Untrusted until fromState accepts it.
 */
export interface VirtqueueState extends Omit<QueueFields, 'desc' | 'avail' | 'used' | 'maxChainLen'> {
  readonly v: 1;
  descTable: string;
  availRing: string;
  usedRing: string;
  /** the VirtqueueOptions.maxChainLen given, or null to follow the queue size */
  maxChainLen: number | null;
}

export interface VirtqueueOptions {
  /** Most buffers a chain may hold (direct + indirect). Default: the queue size. */
  maxChainLen?: number;
}

function isPow2(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/**
 * One split virtqueue. Its configuration (size, addresses, ready) is written
 * by the transport on the driver's behalf; `validate()` must accept it before
 * the queue is used (VirtioCore calls it at DRIVER_OK). Changing any of it
 * un-validates the queue.
 */
export class Virtqueue {
  readonly maxSize: number;
  private _size: number;
  private _ready = false;
  private _desc = 0n;
  private _avail = 0n;
  private _used = 0n;
  private validated = false;
  // numeric ring addresses, set by validate()
  private descGpa = 0;
  private availGpa = 0;
  private usedGpa = 0;

  /** Negotiated VIRTIO_RING_F_EVENT_IDX. */
  eventIdx = false;
  /** Negotiated VIRTIO_RING_F_INDIRECT_DESC. */
  indirectDesc = false;
  private readonly maxChainOpt: number | undefined;

  private nextAvail = 0;
  private nextUsed = 0;
  /** avail idx as last read and checked; equal to nextAvail when it must be re-read */
  private cachedAvailIdx = 0;
  /** used idx at the last needsNotification() */
  private signalledUsed = 0;
  private notificationsEnabled = true;
  private broken: VirtqueueError | undefined;
  // Descriptors are read as u32 words (x86 is little-endian, as virtio 1.x's fields are):
  // addr lo, addr hi, len, flags | next << 16.
  private readonly scratch = new Uint8Array(VIRTQ_DESC_SIZE);
  private readonly scratchWords = new Uint32Array(this.scratch.buffer);
  private indirectCopy = new Uint8Array(VIRTQ_DESC_SIZE * 8);
  private indirectWords = new Uint32Array(this.indirectCopy.buffer);
  /** the chain being walked: gpa, len, host address triples (grown to 3 * maxChainLen as needed) */
  private bufScratch = new Float64Array(3 * 16);
  /** the chain popChain(true) hands out again and again */
  private transientChain: DescriptorChain | undefined;

  constructor(readonly mem: GuestMemory, maxSize: number, opts: VirtqueueOptions = {}) {
    if (!isPow2(maxSize) || maxSize > VIRTQ_MAX_SIZE) throw new RangeError(`virtqueue max size ${maxSize} is not a power of two <= 32768`);
    const mcl = opts.maxChainLen;
    if (mcl !== undefined && (!Number.isSafeInteger(mcl) || mcl < 1 || mcl > 65536)) throw new RangeError(`bad maxChainLen ${mcl}`);
    this.maxSize = maxSize;
    this._size = maxSize;
    this.maxChainOpt = mcl;
  }

  // ---- configuration ----------------------------------------------------

  get size(): number { return this._size; }
  /** Any u16 the driver wrote; validate() rejects what is not usable. */
  set size(v: number) { this._size = v & 0xffff; this.validated = false; }
  get ready(): boolean { return this._ready; }
  set ready(v: boolean) { this._ready = v; this.validated = false; }
  get descTable(): bigint { return this._desc; }
  set descTable(v: bigint) { this._desc = BigInt.asUintN(64, v); this.validated = false; }
  get availRing(): bigint { return this._avail; }
  set availRing(v: bigint) { this._avail = BigInt.asUintN(64, v); this.validated = false; }
  get usedRing(): bigint { return this._used; }
  set usedRing(v: bigint) { this._used = BigInt.asUintN(64, v); this.validated = false; }

  get maxChainLen(): number { return this.maxChainOpt ?? this._size; }
  /** True once validate() accepted the current configuration. */
  get isValid(): boolean { return this.validated; }
  /** The error that broke the queue, if any. */
  get error(): VirtqueueError | undefined { return this.broken; }
  /** Index of the next avail ring slot the device will consume. */
  get nextAvailIdx(): number { return this.nextAvail; }
  /** The device's used idx (what it last wrote to used.idx). */
  get nextUsedIdx(): number { return this.nextUsed; }

  /** Back to the power-on configuration (transport reset). */
  reset(): void {
    this._size = this.maxSize;
    this._ready = false;
    this._desc = this._avail = this._used = 0n;
    this.validated = false;
    this.eventIdx = this.indirectDesc = false;
    this.nextAvail = this.nextUsed = this.cachedAvailIdx = this.signalledUsed = 0;
    this.notificationsEnabled = true;
    this.broken = undefined;
    this.descGpa = this.availGpa = this.usedGpa = 0;
  }

  /**
   * Check the configuration before use: ready, size a power of two within
   * the maximum, each ring aligned, not wrapping 64 bits and inside one
   * guest RAM region. Throws VirtqueueError; on success the queue is usable.
   */
  validate(): void {
    this.validated = false;
    if (!this._ready) fail('EVQ_NOT_READY', 'queue not enabled');
    const size = this._size;
    if (!isPow2(size) || size > this.maxSize) fail('EVQ_SIZE', `size ${size} is not a power of two <= ${this.maxSize}`);
    const ring = (name: string, addr: bigint, len: number, align: number): number => {
      if (addr % BigInt(align) !== 0n) fail('EVQ_ALIGN', `${name} 0x${addr.toString(16)} not aligned to ${align}`);
      const end = addr + BigInt(len);
      if (end > (1n << 64n) || end > BigInt(Number.MAX_SAFE_INTEGER)) {
        fail('EVQ_RING_RANGE', `${name} 0x${addr.toString(16)}+0x${len.toString(16)} out of range`);
      }
      const gpa = Number(addr);
      if (!this.mem.contains(gpa, len)) fail('EVQ_RING_RANGE', `${name} 0x${addr.toString(16)}+0x${len.toString(16)} not in guest RAM`);
      return gpa;
    };
    this.descGpa = ring('descriptor table', this._desc, descTableBytes(size), VIRTQ_DESC_ALIGN);
    this.availGpa = ring('avail ring', this._avail, availRingBytes(size), VIRTQ_AVAIL_ALIGN);
    this.usedGpa = ring('used ring', this._used, usedRingBytes(size), VIRTQ_USED_ALIGN);
    const mcl = this.maxChainLen;
    if (mcl < 1) fail('EVQ_SIZE', 'maxChainLen < 1');
    this.validated = true;
  }

  private usable(): void {
    if (this.broken) throw this.broken;
    if (!this.validated) fail('EVQ_NOT_READY', 'queue used before it was validated');
  }

  // ---- available side ---------------------------------------------------

  /**
   * The next available chain, or undefined when the driver has published
   * nothing new. Throws VirtqueueError (and the queue stays broken) on any
   * driver violation.
   *
   * `transient`: the chain is this queue's one reusable chain over its
   * walk buffers, valid only until the next popChain: for a device that
   * finishes each request before taking the next (virtio-blk), so that a
   * request allocates nothing. Otherwise the chain owns a copy.
   */
  popChain(transient = false): DescriptorChain | undefined {
    this.usable();
    try {
      const size = this._size;
      if (this.cachedAvailIdx === this.nextAvail) {
        fence(); // our avail_event store must be visible before this load
        const idx = this.mem.readU16(this.availGpa + 2);
        const ahead = (idx - this.nextAvail) & 0xffff;
        if (ahead > size) fail('EVQ_AVAIL_IDX', `avail idx ${idx} is ${ahead} ahead of ${this.nextAvail} (size ${size})`);
        if (ahead === 0) return undefined;
        this.cachedAvailIdx = idx;
      }
      const head = this.mem.readU16(this.availGpa + 4 + 2 * (this.nextAvail & (size - 1)));
      if (head >= size) fail('EVQ_DESC_INDEX', `avail ring head ${head} >= size ${size}`);
      const chain = this.walk(head, transient);
      this.nextAvail = (this.nextAvail + 1) & 0xffff;
      if (this.eventIdx && this.notificationsEnabled) this.mem.writeU16(this.usedGpa + 4 + 8 * size, this.nextAvail);
      return chain;
    } catch (e) {
      this.broken = asQueueError(e);
      throw this.broken;
    }
  }

  /** Copy descriptor `i` of the table at `table` into scratch (one read of guest memory). */
  private loadDesc(table: number, i: number): void {
    this.mem.copyOut(table + VIRTQ_DESC_SIZE * i, this.scratch, 0, VIRTQ_DESC_SIZE);
  }

  private walk(head: number, transient: boolean): DescriptorChain {
    const size = this._size;
    const maxBufs = this.maxChainLen;
    const mem = this.mem;
    let bufs = this.bufScratch;
    let n = 0, nReadable = 0;
    let rlen = 0, wlen = 0;
    let table = this.descGpa, tableLen = size, idx = head;
    let inIndirect = false;
    let steps = 0;
    let ind = this.indirectWords; // the private copy of the indirect table, once in it
    for (;;) {
      if (++steps > tableLen) {
        fail('EVQ_CHAIN_LOOP', `chain from head ${head} visits more than ${tableLen} descriptors${inIndirect ? ' of its indirect table' : ''}`);
      }
      let d = ind, at = 4 * idx;
      if (!inIndirect) { this.loadDesc(table, idx); d = this.scratchWords; at = 0; }
      const lo = d[at]!, hi = d[at + 1]!, len = d[at + 2]!, fn = d[at + 3]!;
      const flags = fn & 0xffff, next = fn >>> 16;
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (inIndirect) fail('EVQ_INDIRECT_NESTED', `indirect descriptor inside an indirect table (head ${head})`);
        if (!this.indirectDesc) fail('EVQ_INDIRECT_FEATURE', 'indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC');
        if (flags & VIRTQ_DESC_F_NEXT) fail('EVQ_INDIRECT_NEXT', `indirect descriptor ${idx} also has NEXT`);
        if (len === 0 || len % VIRTQ_DESC_SIZE !== 0) fail('EVQ_INDIRECT_LEN', `indirect table length ${len}`);
        const count = len / VIRTQ_DESC_SIZE;
        if (count > maxBufs) fail('EVQ_INDIRECT_LEN', `indirect table of ${count} descriptors (max ${maxBufs})`);
        const addr = hi * TWO_32 + lo;
        if (hi > MAX_SAFE_HI || !mem.contains(addr, len)) fail('EVQ_INDIRECT_RANGE', `indirect table ${hex64(hi, lo)}+0x${len.toString(16)} not in guest RAM`);
        // One copy of the whole table: each descriptor in it is then read once, from our copy.
        if (this.indirectCopy.length < len) {
          this.indirectCopy = new Uint8Array(Math.max(len, 2 * this.indirectCopy.length));
          this.indirectWords = new Uint32Array(this.indirectCopy.buffer);
        }
        mem.copyOut(addr, this.indirectCopy, 0, len);
        ind = this.indirectWords;
        table = addr; tableLen = count; idx = 0; steps = 0; inIndirect = true;
        continue;
      }
      const addr = hi * TWO_32 + lo;
      // one lookup checks the range and finds where it is mapped here
      const host = hi > MAX_SAFE_HI ? -1 : mem.resolveTrusted(addr, len);
      if (host < 0) fail('EVQ_DESC_RANGE', `buffer ${hex64(hi, lo)}+0x${len.toString(16)} not in guest RAM`);
      if (n >= maxBufs) fail('EVQ_CHAIN_LEN', `chain from head ${head} has more than ${maxBufs} buffers`);
      if (flags & VIRTQ_DESC_F_WRITE) {
        wlen += len;
      } else {
        if (n > nReadable) fail('EVQ_DESC_ORDER', `device-readable buffer after a device-writable one (head ${head})`);
        nReadable++;
        rlen += len;
      }
      if (3 * n + 3 > bufs.length) {
        const grown = new Float64Array(Math.min(3 * maxBufs, 2 * bufs.length));
        grown.set(bufs);
        bufs = this.bufScratch = grown;
      }
      bufs[3 * n] = addr;
      bufs[3 * n + 1] = len;
      bufs[3 * n + 2] = host;
      n++;
      if (rlen + wlen > TWO_32) fail('EVQ_CHAIN_LEN', `chain from head ${head} is longer than 2^32 bytes`);
      if (!(flags & VIRTQ_DESC_F_NEXT)) break;
      if (next >= tableLen) fail('EVQ_DESC_INDEX', `next ${next} >= ${inIndirect ? 'indirect table length' : 'size'} ${tableLen}`);
      idx = next;
    }
    if (transient) {
      return this.transientChain?.reuse(head, bufs, n, nReadable, rlen, wlen) ??
        (this.transientChain = new DescriptorChain(mem, head, bufs, nReadable, rlen, wlen, n));
    }
    return new DescriptorChain(mem, head, bufs.slice(0, 3 * n), nReadable, rlen, wlen);
  }

  // ---- used side ----------------------------------------------------------

  /** Chains popped but not yet given back with pushUsed. */
  get inFlight(): number {
    return (this.nextAvail - this.nextUsed) & 0xffff;
  }

  /**
   * Return chain `head` to the driver with `writtenLen` bytes written: the
   * used element, then used.idx (wrapping at 2^16).
   */
  pushUsed(head: number, writtenLen: number, publish = true): void {
    if (!this.validated) fail('EVQ_NOT_READY', 'queue used before it was validated');
    const size = this._size;
    if (!Number.isInteger(head) || head < 0 || head >= size) fail('EVQ_USED', `used id ${head} >= size ${size}`);
    if (!Number.isInteger(writtenLen) || writtenLen < 0 || writtenLen >= TWO_32) fail('EVQ_USED', `used len ${writtenLen}`);
    if (this.inFlight === 0) fail('EVQ_USED', 'more used entries than chains popped');
    try {
      const e = this.usedGpa + 4 + 8 * (this.nextUsed & (size - 1));
      this.mem.writeU32(e, head);
      this.mem.writeU32(e + 4, writtenLen);
      this.nextUsed = (this.nextUsed + 1) & 0xffff;
      if (publish) this.mem.writeU16(this.usedGpa + 2, this.nextUsed);
    } catch (e) {
      throw asQueueError(e);
    }
  }

  /**
   * Publish used.idx for entries pushed with `publish` false: the driver
   * sees them all at once (virtio-net's num_buffers chains of one frame).
   */
  publishUsed(): void {
    if (!this.validated) fail('EVQ_NOT_READY', 'queue used before it was validated');
    try {
      this.mem.writeU16(this.usedGpa + 2, this.nextUsed);
    } catch (e) {
      throw asQueueError(e);
    }
  }

  /**
   * Give back the last `n` chains popped and not used (too few buffers to
   * serve a request yet): the next popChain walks them again. With
   * EVENT_IDX, avail_event moves to the avail index last read, so that the
   * driver notifies when it adds buffers beyond those. Returns true when it
   * already has (pop again rather than wait).
   */
  unpopChains(n: number): boolean {
    if (!Number.isInteger(n) || n < 0 || n > this.inFlight) fail('EVQ_USED', `cannot give back ${n} chains (${this.inFlight} in flight)`);
    this.nextAvail = (this.nextAvail - n) & 0xffff;
    if (!this.eventIdx || !this.notificationsEnabled) return false;
    try {
      this.mem.writeU16(this.usedGpa + 4 + 8 * this._size, this.cachedAvailIdx);
      fence();
      return this.mem.readU16(this.availGpa + 2) !== this.cachedAvailIdx;
    } catch (e) {
      throw asQueueError(e);
    }
  }

  /**
   * Whether the driver wants a used-buffer notification now, for the entries
   * pushed since the previous call. Without EVENT_IDX: unless avail.flags has
   * NO_INTERRUPT. With EVENT_IDX: when used_event lies in [old, new) of the
   * used index (vring_need_event). Reads the guest field once.
   */
  needsNotification(): boolean {
    if (!this.validated) return false;
    const newUsed = this.nextUsed, old = this.signalledUsed;
    this.signalledUsed = newUsed;
    if (newUsed === old) return false;
    try {
      fence(); // the used idx store must be visible before reading used_event/flags
      if (this.eventIdx) {
        const usedEvent = this.mem.readU16(this.availGpa + 4 + 2 * this._size);
        return needEvent(usedEvent, newUsed, old);
      }
      return (this.mem.readU16(this.availGpa) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    } catch {
      return true;
    }
  }

  /**
   * Ask the driver for available-buffer notifications again (used.flags = 0,
   * or avail_event = next avail index with EVENT_IDX). Returns true when
   * buffers are already waiting, so the caller should pop again instead of
   * sleeping (the driver may have published before seeing the change).
   */
  enableNotifications(): boolean {
    this.notificationsEnabled = true;
    if (!this.validated || this.broken) return false;
    try {
      if (this.eventIdx) this.mem.writeU16(this.usedGpa + 4 + 8 * this._size, this.nextAvail);
      else this.mem.writeU16(this.usedGpa, 0);
      fence();
      return this.mem.readU16(this.availGpa + 2) !== this.nextAvail;
    } catch {
      return false;
    }
  }

  /**
   * Tell the driver it need not notify (used.flags = NO_NOTIFY; with
   * EVENT_IDX, avail_event is simply no longer advanced).
   */
  disableNotifications(): void {
    this.notificationsEnabled = false;
    if (!this.validated || this.eventIdx) return;
    try {
      this.mem.writeU16(this.usedGpa, VIRTQ_USED_F_NO_NOTIFY);
    } catch {
      // ring checked by validate(); nothing to do
    }
  }

  // ---- save / restore -------------------------------------------------------

  /** The queue's configuration and progress (a snapshot, or a worker thread's copy). */
  private fields(): QueueFields {
    return {
      maxSize: this.maxSize, size: this._size, ready: this._ready, desc: this._desc, avail: this._avail, used: this._used,
      nextAvail: this.nextAvail, nextUsed: this.nextUsed, signalledUsed: this.signalledUsed,
      eventIdx: this.eventIdx, indirectDesc: this.indirectDesc, notificationsEnabled: this.notificationsEnabled,
      maxChainLen: this.maxChainOpt,
    };
  }

  /** Plain data for a worker thread (postMessage): addresses as "0x..." strings. */
  getState(): VirtqueueState {
    const f = this.fields();
    const hex = (v: bigint): string => `0x${v.toString(16)}`;
    return {
      v: 1, maxSize: f.maxSize, size: f.size, ready: f.ready, descTable: hex(f.desc), availRing: hex(f.avail), usedRing: hex(f.used),
      nextAvail: f.nextAvail, nextUsed: f.nextUsed, signalledUsed: f.signalledUsed,
      eventIdx: f.eventIdx, indirectDesc: f.indirectDesc, notificationsEnabled: f.notificationsEnabled,
      maxChainLen: f.maxChainLen ?? null,
    };
  }

  /** The queue in a snapshot: typed fields (maxChainLen 0: it follows the queue size). */
  saveState(w: StateWriter): void {
    const f = this.fields();
    w.u16('maxSize', f.maxSize).u16('size', f.size).bool('ready', f.ready)
      .u64('desc', f.desc).u64('avail', f.avail).u64('used', f.used)
      .u16('nextAvail', f.nextAvail).u16('nextUsed', f.nextUsed).u16('signalledUsed', f.signalledUsed)
      .bool('eventIdx', f.eventIdx).bool('indirectDesc', f.indirectDesc).bool('notificationsEnabled', f.notificationsEnabled)
      .u32('maxChainLen', f.maxChainLen ?? 0);
  }

  /** A snapshot's queue fields, type- and range-checked (SnapshotError naming the field); restoreState checks the rest. */
  static readState(r: StateReader): QueueFields {
    const mcl = r.u32('maxChainLen', 65536);
    return {
      maxSize: r.u16('maxSize'), size: r.u16('size'), ready: r.bool('ready'),
      desc: r.u64('desc'), avail: r.u64('avail'), used: r.u64('used'),
      nextAvail: r.u16('nextAvail'), nextUsed: r.u16('nextUsed'), signalledUsed: r.u16('signalledUsed'),
      eventIdx: r.bool('eventIdx'), indirectDesc: r.bool('indirectDesc'), notificationsEnabled: r.bool('notificationsEnabled'),
      maxChainLen: mcl === 0 ? undefined : mcl,
    };
  }

  /** Take saved fields into this queue (checked as fromState checks them; this queue is untouched on error). */
  restoreState(f: QueueFields): void {
    const q = Virtqueue.fromFields(this.mem, f);
    if (q.maxSize !== this.maxSize) fail('EVQ_BADSTATE', `bad saved state: maxSize ${q.maxSize}, this queue's is ${this.maxSize}`);
    if (q.maxChainOpt !== this.maxChainOpt) fail('EVQ_BADSTATE', 'bad saved state: maxChainLen differs from this device\'s');
    this.reset();
    this._size = q._size; this._desc = q._desc; this._avail = q._avail; this._used = q._used; this._ready = q._ready;
    this.eventIdx = q.eventIdx; this.indirectDesc = q.indirectDesc; this.notificationsEnabled = q.notificationsEnabled;
    this.validated = q.validated; this.descGpa = q.descGpa; this.availGpa = q.availGpa; this.usedGpa = q.usedGpa;
    this.nextAvail = q.nextAvail; this.cachedAvailIdx = q.cachedAvailIdx; this.nextUsed = q.nextUsed; this.signalledUsed = q.signalledUsed;
  }

  /**
   * Take over the ring progress of a copy of this queue that ran elsewhere
   * (a device worker thread): next avail/used indices, the last signalled
   * used index and whether notifications are on. The copy must have the same
   * configuration; throws VirtqueueError('EVQ_BADSTATE') otherwise.
   */
  adoptProgress(s: VirtqueueState): void {
    const hex = (v: bigint): string => `0x${v.toString(16)}`;
    const same = s.size === this._size && s.ready === this._ready && s.descTable === hex(this._desc) &&
      s.availRing === hex(this._avail) && s.usedRing === hex(this._used);
    if (!same) fail('EVQ_BADSTATE', 'progress of a differently configured queue');
    const u16 = (v: unknown): boolean => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffff;
    if (!u16(s.nextAvail) || !u16(s.nextUsed) || !u16(s.signalledUsed)) fail('EVQ_BADSTATE', 'bad ring indices');
    this.nextAvail = this.cachedAvailIdx = s.nextAvail;
    this.nextUsed = s.nextUsed;
    this.signalledUsed = s.signalledUsed;
    this.notificationsEnabled = s.notificationsEnabled === true;
  }

  /**
   * Rebuild a queue from a worker thread's plain data, treating it as
   * untrusted: every field is type-checked here and range-checked as a
   * snapshot's is. Throws VirtqueueError('EVQ_BADSTATE') (or the validate() error).
   */
  static fromState(mem: GuestMemory, state: unknown): Virtqueue {
    const bad = (why: string): never => fail('EVQ_BADSTATE', `bad saved state: ${why}`);
    if (typeof state !== 'object' || state === null) bad('not an object');
    const s = state as Record<string, unknown>;
    if (s['v'] !== 1) bad('unknown version');
    const int = (k: string, max: number): number => {
      const v = s[k];
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) bad(`${k} not an integer in [0, ${max}]`);
      return v as number;
    };
    const bool = (k: string): boolean => {
      const v = s[k];
      if (typeof v !== 'boolean') bad(`${k} not a boolean`);
      return v as boolean;
    };
    const addr = (k: string): bigint => {
      const v = s[k];
      if (typeof v !== 'string' || !/^0x[0-9a-f]{1,16}$/.test(v)) bad(`${k} not a 64-bit hex address`);
      return BigInt(v as string);
    };
    const mcl = s['maxChainLen'] === null ? undefined : int('maxChainLen', 65536);
    if (mcl === 0) bad('maxChainLen 0');
    return Virtqueue.fromFields(mem, {
      maxSize: int('maxSize', 0xffff), size: int('size', 0xffff), ready: bool('ready'),
      desc: addr('descTable'), avail: addr('availRing'), used: addr('usedRing'),
      nextAvail: int('nextAvail', 0xffff), nextUsed: int('nextUsed', 0xffff), signalledUsed: int('signalledUsed', 0xffff),
      eventIdx: bool('eventIdx'), indirectDesc: bool('indirectDesc'), notificationsEnabled: bool('notificationsEnabled'),
      maxChainLen: mcl,
    });
  }

  /**
   * A queue from typed fields, checked against each other and `mem`: a
   * power-of-two maxSize, a ready queue's rings (validate()) and chains in
   * flight, no progress on a queue that is not ready.
   */
  private static fromFields(mem: GuestMemory, f: QueueFields): Virtqueue {
    const bad = (why: string): never => fail('EVQ_BADSTATE', `bad saved state: ${why}`);
    if (f.maxSize < 1 || f.maxSize > VIRTQ_MAX_SIZE || !isPow2(f.maxSize)) bad(`maxSize ${f.maxSize} not a power of two in [1, ${VIRTQ_MAX_SIZE}]`);
    if (f.maxChainLen !== undefined && (f.maxChainLen < 1 || f.maxChainLen > 65536)) bad(`maxChainLen ${f.maxChainLen} not in [1, 65536]`);
    const q = new Virtqueue(mem, f.maxSize, f.maxChainLen === undefined ? {} : { maxChainLen: f.maxChainLen });
    q._size = f.size;
    q._desc = f.desc;
    q._avail = f.avail;
    q._used = f.used;
    q.eventIdx = f.eventIdx;
    q.indirectDesc = f.indirectDesc;
    q.notificationsEnabled = f.notificationsEnabled;
    q._ready = f.ready;
    if (f.ready) {
      q.validate();
      if (((f.nextAvail - f.nextUsed) & 0xffff) > f.size) bad(`${(f.nextAvail - f.nextUsed) & 0xffff} chains in flight exceed size ${f.size}`);
    } else if (f.nextAvail !== 0 || f.nextUsed !== 0 || f.signalledUsed !== 0) {
      bad('indices set on a queue that is not ready');
    }
    q.nextAvail = q.cachedAvailIdx = f.nextAvail;
    q.nextUsed = f.nextUsed;
    q.signalledUsed = f.signalledUsed;
    return q;
  }
}

/**
 * vring_need_event: notify when `event` lies in [old, new) of the 16-bit
 * index space, i.e. the index the other side asked about was just passed.
 */
export function needEvent(event: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - event - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}
