/**
 * A reusable struct iovec[] in the native layout of 64-bit Linux (u64 base,
 * u64 len per entry), filled from host addresses of guest RAM and handed
 * to preadv/pwritev as is. A request's pieces go straight into it: no
 * object per piece, no copy to marshal, and the buffer is reused from one
 * request to the next.
 */
const TWO_32 = 0x1_0000_0000;
/** A merged piece stays below 2 GiB, well inside what one syscall moves. */
const MAX_PIECE = 0x8000_0000;

export class IoVecs {
  /** the entries, for the syscall */
  buf: Buffer;
  private w: Uint32Array;
  /** entries in use */
  count = 0;
  /** bytes over all entries */
  bytes = 0;

  constructor(capacity = 256) {
    this.buf = Buffer.alloc(16 * capacity);
    this.w = new Uint32Array(this.buf.buffer, this.buf.byteOffset, 4 * capacity);
  }

  get capacity(): number { return this.w.length >>> 2; }

  /** Empty, with room for at least `n` entries. */
  reset(n: number): void {
    if (n > this.capacity) {
      this.buf = Buffer.alloc(16 * n);
      this.w = new Uint32Array(this.buf.buffer, this.buf.byteOffset, 4 * n);
    }
    this.count = 0;
    this.bytes = 0;
  }

  /**
   * Reset and fill with bytes [start, start+len) of the stream of packed
   * (gpa, len, host address) triples `bufs`, buffers [from, to); pieces
   * that continue each other on the host join. Returns false when a piece
   * has no native mapping (host 0). The loop stays in here: one call per
   * request, which is what counts while the code is not yet optimized.
   */
  fill(bufs: Float64Array, from: number, to: number, start: number, len: number): boolean {
    this.reset(to - from);
    const w = this.w;
    let n = 0, bytes = 0, skip = start, lastEnd = -1;
    for (let i = from; i < to && bytes < len; i++) {
      const blen = bufs[3 * i + 1]!;
      if (skip >= blen) { skip -= blen; continue; }
      const k = Math.min(blen - skip, len - bytes);
      const host = bufs[3 * i + 2]!;
      if (host === 0) return false;
      const addr = host + skip;
      skip = 0;
      if (addr === lastEnd && w[4 * n - 2]! + k < MAX_PIECE) {
        w[4 * n - 2] = w[4 * n - 2]! + k;
      } else {
        this.put(n++, addr, k);
      }
      lastEnd = addr + k;
      bytes += k;
    }
    this.count = n;
    this.bytes = bytes;
    return true;
  }

  /**
   * Reset and fill with bytes [start, start+len) of `src`'s pieces (a part of
   * a request that maps to one host range). `src` must hold them.
   */
  copyRange(src: IoVecs, start: number, len: number): void {
    this.reset(src.count);
    let n = 0, bytes = 0, skip = start;
    for (let i = 0; i < src.count && bytes < len; i++) {
      const l = src.len(i);
      if (skip >= l) { skip -= l; continue; }
      const k = Math.min(l - skip, len - bytes);
      this.put(n++, src.base(i) + skip, k);
      skip = 0;
      bytes += k;
    }
    this.count = n;
    this.bytes = bytes;
  }

  /** Entry i is (addr, len). */
  private put(i: number, addr: number, len: number): void {
    const q = 4 * i;
    this.w[q] = addr >>> 0;
    this.w[q + 1] = Math.floor(addr / TWO_32);
    this.w[q + 2] = len;
    this.w[q + 3] = 0;
  }

  base(i: number): number { return this.w[4 * i]! + this.w[4 * i + 1]! * TWO_32; }
  len(i: number): number { return this.w[4 * i + 2]!; }

  /**
   * Drop the first `k` bytes (after a short transfer): whole entries go,
   * and the first remaining one starts later. Returns the index of the
   * first entry left; the entries before it are no longer valid.
   */
  advance(first: number, k: number): number {
    let i = first;
    while (k > 0 && i < this.count) {
      const l = this.len(i);
      if (k >= l) { k -= l; i++; continue; }
      const b = this.base(i) + k;
      const q = 4 * i;
      this.w[q] = b >>> 0;
      this.w[q + 1] = Math.floor(b / TWO_32);
      this.w[q + 2] = l - k;
      k = 0;
    }
    while (i < this.count && this.len(i) === 0) i++;
    return i;
  }

  /** Entries [from, count) as {addr, len} (tests and messages). */
  list(from = 0): { addr: number; len: number }[] {
    const out: { addr: number; len: number }[] = [];
    for (let i = from; i < this.count; i++) out.push({ addr: this.base(i), len: this.len(i) });
    return out;
  }
}
