/**
 * Guest physical memory: the one bounds-checked API through which every
 * guest address is read or written. Regions are plain Uint8Arrays (memfd
 * mappings in a VM, ordinary buffers in unit tests).
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
}

export class GuestMemory {
  private readonly regions: MemoryRegion[];

  constructor(regions: MemoryRegion[]) {
    this.regions = [...regions].sort((a, b) => a.gpa - b.gpa);
    for (let i = 1; i < this.regions.length; i++) {
      const p = this.regions[i - 1]!;
      if (p.gpa + p.bytes.length > this.regions[i]!.gpa) throw new Error('overlapping guest memory regions');
    }
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
    return this.find(gpa, len) !== undefined;
  }

  private find(gpa: number, len: number): { r: MemoryRegion; off: number } | undefined {
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || gpa < 0 || len < 0) return undefined;
    const end = gpa + len;
    if (!Number.isSafeInteger(end)) return undefined;
    for (const r of this.regions) {
      if (gpa >= r.gpa && end <= r.gpa + r.bytes.length) return { r, off: gpa - r.gpa };
    }
    return undefined;
  }

  /**
   * A live view of guest memory (no copy). Use for bulk device I/O; the
   * guest can change it underneath, so read any field you act on once.
   */
  slice(gpa: number, len: number): Uint8Array {
    const f = this.find(gpa, len);
    if (!f) throw new GuestMemoryError(gpa, len);
    return f.r.bytes.subarray(f.off, f.off + len);
  }

  /**
   * The host address of [gpa, gpa+len) for a syscall to read or write in
   * place (preadv/pwritev), or undefined when it is not inside one region or
   * the region has no native mapping.
   */
  hostAddress(gpa: number, len: number): number | undefined {
    const f = this.find(gpa, len);
    if (!f || f.r.hostAddr === undefined) return undefined;
    // user-space addresses are below 2^47: exact as numbers, and no BigInt per piece on the I/O path
    return Number(f.r.hostAddr) + f.off;
  }

  /** A copy of guest bytes: safe against the guest changing them later. */
  read(gpa: number, len: number): Uint8Array {
    return this.slice(gpa, len).slice();
  }

  write(gpa: number, data: Uint8Array): void {
    this.slice(gpa, data.length).set(data);
  }

  fill(gpa: number, len: number, value = 0): void {
    this.slice(gpa, len).fill(value);
  }

  private dv(gpa: number, len: number): DataView {
    const s = this.slice(gpa, len);
    return new DataView(s.buffer, s.byteOffset, len);
  }

  readU8(gpa: number): number { return this.slice(gpa, 1)[0]!; }
  readU16(gpa: number): number { return this.dv(gpa, 2).getUint16(0, true); }
  readU32(gpa: number): number { return this.dv(gpa, 4).getUint32(0, true); }
  readU64(gpa: number): bigint { return this.dv(gpa, 8).getBigUint64(0, true); }
  writeU8(gpa: number, v: number): void { this.slice(gpa, 1)[0] = v; }
  writeU16(gpa: number, v: number): void { this.dv(gpa, 2).setUint16(0, v, true); }
  writeU32(gpa: number, v: number): void { this.dv(gpa, 4).setUint32(0, v >>> 0, true); }
  writeU64(gpa: number, v: bigint): void { this.dv(gpa, 8).setBigUint64(0, BigInt.asUintN(64, v), true); }
}
