/**
 * qcow2 table entries (u64, big-endian) read as two u32 halves, so the hot
 * path makes no BigInt: the flags sit in the high word (COPIED bit 63,
 * COMPRESSED bit 62) and the low word (ZERO bit 0); offsets are bits 9..55.
 */
export const HI_COPIED = 0x80000000;
export const HI_COMPRESSED = 0x40000000;
export const LO_ZERO = 1;
/** bits 56..61 of a standard L2 entry, 1..8 (bit 0 is ZERO) */
export const L2_HI_RESERVED = 0x3f000000;
export const L2_LO_RESERVED = 0x1fe;
/** bits 56..62 and 0..8 of an L1 entry */
export const L1_HI_RESERVED = 0x7f000000;
export const L1_LO_RESERVED = 0x1ff;

/** Cluster kinds, as a lookup returns them. */
export const UNALLOCATED = 0;
export const ZERO = 1;
export const NORMAL = 2;
export const COMPRESSED = 3;

const TWO_32 = 2 ** 32;

export function entryOffset(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * TWO_32 + ((lo & 0xfffffe00) >>> 0);
}

export function putEntry(b: Buffer, i: number, hi: number, lo: number): void {
  b.writeUInt32BE(hi >>> 0, 8 * i);
  b.writeUInt32BE(lo >>> 0, 8 * i + 4);
}

/** An offset as the two halves of an entry, with flags. */
export function hiOf(off: number, flags = 0): number { return (Math.floor(off / TWO_32) | flags) >>> 0; }
export function loOf(off: number, flags = 0): number { return ((off >>> 0) | flags) >>> 0; }

/** Where a compressed cluster's data lies: [offset, offset+length) of the file. */
export interface CompressedRange { offset: number; length: number }

/** Decode a compressed L2 entry (csize_shift = 62 - (cluster_bits - 8)). */
export function compressedRange(hi: number, lo: number, clusterBits: number, out: CompressedRange): void {
  const hs = 62 - (clusterBits - 8) - 32; // the offset's bits in the high word
  const offset = (hi & ((1 << hs) - 1)) * TWO_32 + (lo >>> 0);
  const sectors = ((hi & 0x3fffffff) >>> hs) % 2 ** (clusterBits - 8) + 1;
  out.offset = offset;
  out.length = sectors * 512 - (offset % 512);
}
