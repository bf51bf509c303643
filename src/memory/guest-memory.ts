/**
 * Guest physical memory: the one bounds-checked API through which every
 * guest address is read or written. Regions are plain Uint8Arrays (guest
 * RAM mappings in a VM, ordinary buffers in unit tests).
 *
 * All addresses and lengths are JS numbers; anything that is not a safe,
 * non-negative integer, or whose end passes a region's end, throws
 * GuestMemoryError. An access must lie within one region: a guest buffer
 * that straddles a hole is a guest error, not something to stitch together.
 */
import { GuestMemoryError } from '../errors.js';

export interface MemoryRegion {
  /** guest-physical base address */
  readonly gpa: number;
  /** the backing bytes; its length is the region size */
  readonly bytes: Uint8Array;
  /** host virtual address of bytes[0] in this thread, when the bytes are a native mapping (for vectored syscalls) */
  readonly hostAddr?: bigint;
  /** where bytes[0] is in guest RAM (a multiple of PAGE_SIZE): the page index the dirty map uses */
  readonly ramOffset?: number;
}

/** The page size the dirty map counts in. */
export const PAGE_SIZE = 4096;

export class GuestMemory {
  private readonly regions: MemoryRegion[];
  // Per region, for the hot paths (device I/O threads): no allocation per access.
  private readonly starts: number[];
  private readonly ends: number[];
  private readonly views: DataView[];
  private readonly hostBases: (number | undefined)[];
  /** index of the region found last (accesses cluster) */
  private hit = 0;
  /** offset within its region of the address located last */
  private at = 0;
  /** per region, its first page in the dirty map */
  private readonly pageBases: number[];

  /**
   * `dirty`, when given, is the VM's map of pages tshyve itself wrote (one
   * byte per page of RAM, shared by every thread's GuestMemory): each write
   * through this object, and each markDirty(), sets its pages' bytes, so a
   * live migration sends them again. KVM logs only what vCPUs write.
   */
  constructor(regions: MemoryRegion[], private readonly dirty?: Uint8Array) {
    this.regions = [...regions].sort((a, b) => a.gpa - b.gpa);
    for (let i = 1; i < this.regions.length; i++) {
      const p = this.regions[i - 1]!;
      if (p.gpa + p.bytes.length > this.regions[i]!.gpa) throw new Error('overlapping guest memory regions');
    }
    this.starts = this.regions.map((r) => r.gpa);
    this.ends = this.regions.map((r) => r.gpa + r.bytes.length);
    this.views = this.regions.map((r) => new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength));
    this.hostBases = this.regions.map((r) => (r.hostAddr === undefined ? undefined : Number(r.hostAddr)));
    let next = 0;
    this.pageBases = this.regions.map((r) => {
      const off = r.ramOffset ?? next;
      next = off + r.bytes.length;
      return off / PAGE_SIZE;
    });
  }

  /** A single zero-based region of `size` bytes: handy for tests. */
  static ofSize(size: number): GuestMemory {
    return new GuestMemory([{ gpa: 0, bytes: new Uint8Array(size) }]);
  }

  get regionList(): readonly MemoryRegion[] {
    return this.regions;
  }

  /** Total RAM bytes over all regions. */
  get totalSize(): number {
    return this.regions.reduce((n, r) => n + r.bytes.length, 0);
  }

  /** True when [gpa, gpa+len) lies inside one region. */
  contains(gpa: number, len: number): boolean {
    return this.locate(gpa, len) >= 0;
  }

  /** The region holding [gpa, gpa+len) (its offset in this.at), or -1. */
  private locate(gpa: number, len: number): number {
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || gpa < 0 || len < 0) return -1;
    const end = gpa + len;
    if (!Number.isSafeInteger(end)) return -1;
    const h = this.hit;
    if (h < this.starts.length && gpa >= this.starts[h]! && end <= this.ends[h]!) { this.at = gpa - this.starts[h]!; return h; }
    for (let i = 0; i < this.starts.length; i++) {
      if (gpa >= this.starts[i]! && end <= this.ends[i]!) { this.hit = i; this.at = gpa - this.starts[i]!; return i; }
    }
    return -1;
  }

  /**
   * A live view of guest memory (no copy). Use for bulk device I/O; the
   * guest can change it underneath, so read any field you act on once.
   */
  slice(gpa: number, len: number): Uint8Array {
    const i = this.locate(gpa, len);
    if (i < 0) throw new GuestMemoryError(gpa, len);
    const off = this.at;
    this.mark(off, len); // a live view may be written: count it as written
    return this.regions[i]!.bytes.subarray(off, off + len);
  }

  /** Copy `len` guest bytes at gpa into dst[dstOff..] (no intermediate view: for small hot reads). */
  copyOut(gpa: number, dst: Uint8Array, dstOff: number, len: number): void {
    const i = this.locate(gpa, len);
    if (i < 0) throw new GuestMemoryError(gpa, len);
    const src = this.regions[i]!.bytes, off = this.at;
    // a loop beats making a view for a descriptor; a memcpy wins for an indirect table
    if (len > 64) dst.set(src.subarray(off, off + len), dstOff);
    else for (let k = 0; k < len; k++) dst[dstOff + k] = src[off + k]!;
  }

  /** Copy `len` bytes of `src` from `srcOff` to guest memory at `gpa` (throws GuestMemoryError outside RAM). */
  copyIn(gpa: number, src: Uint8Array, srcOff: number, len: number): void {
    const i = this.locate(gpa, len);
    if (i < 0) throw new GuestMemoryError(gpa, len);
    const dst = this.regions[i]!.bytes, off = this.at;
    this.mark(off, len);
    if (len > 64) dst.set(src.subarray(srcOff, srcOff + len), off);
    else for (let k = 0; k < len; k++) dst[off + k] = src[srcOff + k]!;
  }

  /**
   * Check and locate in one lookup, for syscalls that read or write guest
   * RAM in place (preadv/pwritev): -1 when [gpa, gpa+len) is not inside
   * one region; else its host address (user-space addresses are below 2^47:
   * exact as numbers), or 0 when the region has no native mapping (plain
   * buffers in tests).
   */
  resolve(gpa: number, len: number): number {
    const i = this.locate(gpa, len);
    if (i < 0) return -1;
    const base = this.hostBases[i];
    return base === undefined ? 0 : base + this.at;
  }

  /**
   * resolve() for callers whose gpa and len are already non-negative safe
   * integers (descriptor fields: a u32 length, an address below 2^53): the
   * same answer, with the region found last tried first and no further
   * checks on the numbers. The queue walk calls it for every buffer.
   */
  resolveTrusted(gpa: number, len: number): number {
    const h = this.hit, s = this.starts[h]!;
    if (gpa >= s && gpa + len <= this.ends[h]!) {
      const base = this.hostBases[h];
      return base === undefined ? 0 : base + (gpa - s);
    }
    return this.resolve(gpa, len);
  }

  /**
   * Record that [gpa, gpa+len) was written through a host address from
   * resolve() (a preadv or readv into a device-writable buffer).
   */
  markDirty(gpa: number, len: number): void {
    if (this.dirty && this.locate(gpa, len) >= 0) this.mark(this.at, len);
  }

  /**
   * markDirty() for pieces [from, to) of packed (gpa, len, host address)
   * triples, the shape devices keep a request's guest buffers in (virtio
   * chains, NVMe PRP walks), after a vectored read into them.
   */
  markDirtyPieces(pieces: Float64Array, from: number, to: number): void {
    if (!this.dirty) return;
    for (let i = from; i < to; i++) this.markDirty(pieces[3 * i]!, pieces[3 * i + 1]!);
  }

  /** Set the dirty bytes of [at, at+len) of the region located last (this.hit). */
  private mark(at: number, len: number): void {
    const d = this.dirty;
    if (!d || len === 0) return;
    const base = this.pageBases[this.hit]!;
    const last = base + Math.floor((at + len - 1) / PAGE_SIZE);
    for (let p = base + Math.floor(at / PAGE_SIZE); p <= last; p++) d[p] = 1;
  }

  /** A copy of guest bytes: safe against the guest changing them later. */
  read(gpa: number, len: number): Uint8Array {
    const i = this.locate(gpa, len);
    if (i < 0) throw new GuestMemoryError(gpa, len);
    return this.regions[i]!.bytes.slice(this.at, this.at + len);
  }

  write(gpa: number, data: Uint8Array): void {
    this.slice(gpa, data.length).set(data);
  }

  fill(gpa: number, len: number, value = 0): void {
    this.slice(gpa, len).fill(value);
  }

  /** The DataView of the region holding [gpa, gpa+len); the offset is left in this.at. */
  private dv(gpa: number, len: number): DataView {
    const i = this.locate(gpa, len);
    if (i < 0) throw new GuestMemoryError(gpa, len);
    return this.views[i]!;
  }

  readU8(gpa: number): number { return this.dv(gpa, 1).getUint8(this.at); }
  readU16(gpa: number): number { return this.dv(gpa, 2).getUint16(this.at, true); }
  readU32(gpa: number): number { return this.dv(gpa, 4).getUint32(this.at, true); }
  readU64(gpa: number): bigint { return this.dv(gpa, 8).getBigUint64(this.at, true); }
  writeU8(gpa: number, v: number): void { this.wv(gpa, 1).setUint8(this.at, v); }
  writeU16(gpa: number, v: number): void { this.wv(gpa, 2).setUint16(this.at, v, true); }
  writeU32(gpa: number, v: number): void { this.wv(gpa, 4).setUint32(this.at, v >>> 0, true); }
  writeU64(gpa: number, v: bigint): void { this.wv(gpa, 8).setBigUint64(this.at, BigInt.asUintN(64, v), true); }

  /** dv() for a write: the page is marked dirty. */
  private wv(gpa: number, len: number): DataView {
    const v = this.dv(gpa, len);
    this.mark(this.at, len);
    return v;
  }
}
