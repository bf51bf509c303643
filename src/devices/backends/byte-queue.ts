/**
 * Output bytes waiting for a slow reader, held in fixed-size chunks so that
 * memory follows the bytes held, not the number of writes: a guest printing
 * one byte per write costs one byte of a chunk, not a Buffer object each.
 * The cap counts whole chunks, queued or lent out to a write in progress,
 * so it bounds the real memory held; bytes beyond it are dropped and counted.
 */

/** Large enough that a write(2) per chunk is cheap, small enough to be a fine-grained cap. */
export const CHUNK_BYTES = 64 * 1024;

export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // bytes of chunks[0] already taken or trimmed
  private tail = 0; // bytes filled in the last chunk
  private lent = 0; // chunks handed out by take() and not released yet
  private spare: Buffer | undefined; // one released chunk, reused before allocating
  /** Bytes queued (not counting lent ones). */
  length = 0;
  /** Bytes refused because the cap was reached, or trimmed by trimTo(). */
  dropped = 0;

  constructor(private readonly cap: number, private readonly chunkBytes = CHUNK_BYTES) {
    if (cap < chunkBytes) throw new RangeError(`ByteQueue: cap ${cap} below one chunk (${chunkBytes})`);
  }

  /** Memory held for queued and lent bytes. */
  get held(): number { return (this.chunks.length + this.lent) * this.chunkBytes; }

  /** Queue a copy of as much of `bytes` as the cap allows; returns how many bytes were taken. */
  push(bytes: Uint8Array): number {
    let off = 0;
    while (off < bytes.length) {
      let last = this.chunks[this.chunks.length - 1];
      if (last === undefined || this.tail === this.chunkBytes) {
        if (this.held + this.chunkBytes > this.cap) break;
        last = this.spare ?? Buffer.allocUnsafe(this.chunkBytes);
        this.spare = undefined;
        this.chunks.push(last);
        this.tail = 0;
      }
      const n = Math.min(bytes.length - off, this.chunkBytes - this.tail);
      // Whole-input copies (the UART's one byte) make no view to collect.
      last.set(n === bytes.length ? bytes : bytes.subarray(off, off + n), this.tail);
      this.tail += n;
      off += n;
    }
    this.length += off;
    this.dropped += bytes.length - off;
    return off;
  }

  /**
   * The oldest queued bytes (at most one chunk), lent to the caller until it
   * calls release() with them; undefined when nothing is queued.
   */
  take(): Buffer | undefined {
    const first = this.chunks[0];
    if (first === undefined) return undefined;
    const view = first.subarray(this.head, this.chunks.length === 1 ? this.tail : this.chunkBytes);
    this.chunks.shift();
    this.head = 0;
    this.length -= view.length;
    this.lent++;
    return view;
  }

  /** Give back a chunk from take() once it is written; its memory is reused. */
  release(view: Buffer): void {
    this.lent--;
    if (view.buffer.byteLength === this.chunkBytes) this.spare = Buffer.from(view.buffer, 0, this.chunkBytes);
  }

  /**
   * Queue `bytes` keeping only the newest `keep` bytes in all, older ones
   * dropped and counted (a console's recent history). The queue's cap must
   * allow `keep` plus two chunks, for the partly filled first and last ones.
   */
  pushLatest(bytes: Uint8Array, keep: number): void {
    const tail = bytes.length > keep ? bytes.subarray(bytes.length - keep) : bytes;
    this.dropped += bytes.length - tail.length;
    this.trimTo(keep - tail.length);
    this.push(tail);
  }

  /** Drop the oldest bytes so that at most `keep` stay queued (counted in `dropped`). */
  trimTo(keep: number): void {
    while (this.length > keep) {
      const first = this.chunks[0]!;
      const end = this.chunks.length === 1 ? this.tail : this.chunkBytes;
      const n = Math.min(end - this.head, this.length - keep);
      this.head += n;
      this.length -= n;
      this.dropped += n;
      if (this.head === end) {
        this.chunks.shift();
        this.head = 0;
        this.spare = first;
      }
    }
  }

  /** Forget everything queued (counted in `dropped`); lent chunks stay lent. */
  clear(): void {
    this.trimTo(0);
  }
}
