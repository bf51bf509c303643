/**
 * qcow2 refcounts: the refcount table (in memory, bounded by
 * MAX_REFTABLE_BYTES), a small write-through cache of refcount blocks, every
 * width qemu-img offers (1 to 64 bits), and cluster allocation.
 *
 * Crash safety without a flush per allocation: clusters are handed out from
 * a pool whose refcounts were written and made durable (fdatasync) before
 * any of them is used, so an L2 entry never reaches the disk before the
 * refcount that owns its cluster. A crash leaks what was left of the pool,
 * nothing worse. Frees go the other way: a cluster's refcount drops only
 * after the flush that made the L2 change that dropped it durable
 * (`deferFree`, applied by `afterFlush`), so a freed cluster is never reused
 * while an old table on disk may still point at it.
 */
import { BlockIoError } from '../backend.js';
import type { FileBlockBackend } from '../file.js';
import { MAX_OFFSET, MAX_REFTABLE_BYTES } from './header.js';

/** Refcount blocks kept in memory. */
const BLOCK_CACHE = 8;
/** A pool holds about this many bytes of clusters (fewer flushes when streaming). */
const POOL_BYTES = 32 << 20;
/** ... and at most this many clusters (small clusters: a smaller pool, fewer refcounts to set). */
const POOL_CLUSTERS = 1024;
/** Deferred frees held before a flush is forced. */
const MAX_DEFERRED = 1 << 16;

export function corrupt(op: string, why: string): BlockIoError {
  return new BlockIoError(op, 'EIO', `qcow2 image corrupt: ${why}`);
}

export interface RefcountLayout {
  clusterBits: number;
  refcountOrder: number;
  tableOffset: number;
  tableClusters: number;
}

export class Refcounts {
  readonly cs: number;
  private readonly bits: number;
  private readonly maxValue: number;
  /** refcounts per refcount block */
  readonly entriesPerBlock: number;
  table: Buffer;
  tableOffset: number;
  tableClusters: number;
  private readonly blockOff = new Float64Array(BLOCK_CACHE).fill(-1);
  private readonly blocks: Buffer[] = [];
  private readonly blockUse = new Float64Array(BLOCK_CACHE);
  private tick = 0;
  /** first cluster past everything used, reserved or in the file */
  endCluster: number;
  /** clusters below this one are known in use */
  private freeHint = 0;
  private poolNext = 0;
  private poolEnd = 0;
  private readonly deferred: number[] = [];
  /** clusters whose refcount may be stale on a refusal to lie about them: metadata tshyve holds */
  private readonly fixed: { start: number; end: number }[] = [];

  constructor(private readonly file: FileBlockBackend, layout: RefcountLayout, table: Buffer, fileSize: number,
    private readonly canPunch: boolean) {
    this.cs = 2 ** layout.clusterBits;
    this.bits = 2 ** layout.refcountOrder;
    this.entriesPerBlock = 2 ** (layout.clusterBits + 3 - layout.refcountOrder);
    this.maxValue = this.bits >= 53 ? MAX_OFFSET : 2 ** this.bits - 1;
    this.table = table;
    this.tableOffset = layout.tableOffset;
    this.tableClusters = layout.tableClusters;
    this.endCluster = Math.ceil(fileSize / this.cs);
    for (let i = 0; i < BLOCK_CACHE; i++) this.blocks.push(Buffer.alloc(this.cs));
  }

  /** Metadata ranges (bytes) an allocation must never return, whatever the refcounts say. */
  protect(offset: number, len: number): void {
    if (len > 0) this.fixed.push({ start: Math.floor(offset / this.cs), end: Math.ceil((offset + len) / this.cs) });
  }


  private tableEntry(i: number): number {
    if (i >= this.table.length / 8) return 0;
    const hi = this.table.readUInt32BE(8 * i), lo = this.table.readUInt32BE(8 * i + 4);
    if (lo & 0x1ff) throw corrupt('refcount', `refcount table entry ${i} has reserved bits set`);
    const off = hi * 2 ** 32 + lo;
    if (off % this.cs !== 0 || (off !== 0 && off < this.cs) || off > MAX_OFFSET) throw corrupt('refcount', `refcount block offset ${off} is invalid`);
    return off;
  }

  /** The cached block at `off` (loaded if needed). */
  private block(off: number): Buffer {
    let victim = 0;
    for (let i = 0; i < BLOCK_CACHE; i++) {
      if (this.blockOff[i] === off) { this.blockUse[i] = ++this.tick; return this.blocks[i]!; }
      if (this.blockUse[i]! < this.blockUse[victim]!) victim = i;
    }
    const b = this.blocks[victim]!;
    this.blockOff[victim] = -1;
    this.file.read(b, off);
    this.blockOff[victim] = off;
    this.blockUse[victim] = ++this.tick;
    return b;
  }

  private readEntry(b: Buffer, i: number): number {
    switch (this.bits) {
      case 16: return b.readUInt16BE(2 * i);
      case 8: return b[i]!;
      case 32: return b.readUInt32BE(4 * i);
      case 64: {
        const hi = b.readUInt32BE(8 * i);
        if (hi >= 0x200000) return MAX_OFFSET;
        return hi * 2 ** 32 + b.readUInt32BE(8 * i + 4);
      }
      default: { // 1, 2, 4 bits: big-endian bit order within a byte is LSB first in qemu
        const per = 8 / this.bits;
        return (b[Math.floor(i / per)]! >> ((i % per) * this.bits)) & (this.maxValue);
      }
    }
  }

  /** Set entry i; returns the byte range touched. */
  private writeEntry(b: Buffer, i: number, v: number): number {
    switch (this.bits) {
      case 16: b.writeUInt16BE(v, 2 * i); return 2 * i;
      case 8: b[i] = v; return i;
      case 32: b.writeUInt32BE(v, 4 * i); return 4 * i;
      case 64: b.writeUInt32BE(Math.floor(v / 2 ** 32), 8 * i); b.writeUInt32BE(v >>> 0, 8 * i + 4); return 8 * i;
      default: {
        const per = 8 / this.bits, at = Math.floor(i / per), sh = (i % per) * this.bits;
        b[at] = (b[at]! & ~(this.maxValue << sh)) | (v << sh);
        return at;
      }
    }
  }

  get(cluster: number): number {
    const off = this.tableEntry(Math.floor(cluster / this.entriesPerBlock));
    if (off === 0) return 0;
    return this.readEntry(this.block(off), cluster % this.entriesPerBlock);
  }

  /** Set the refcount of `cluster` (write-through), making its refcount block if it has none. */
  set(cluster: number, v: number): void {
    this.setRun(cluster, 1, v);
  }

  /** Set the refcounts of clusters [start, start+n) to v: one write per refcount block. */
  setRun(start: number, n: number, v: number): void {
    if (v < 0) throw corrupt('refcount', `refcount of cluster ${start} would be ${v}`);
    if (v > this.maxValue) throw new BlockIoError('refcount', 'ERANGE', `refcount of cluster ${start} would not fit in ${this.bits} bits`);
    const per = this.entriesPerBlock, w = Math.max(1, this.bits / 8);
    for (let c = start; c < start + n;) {
      const bi = Math.floor(c / per);
      const k = Math.min(start + n - c, (bi + 1) * per - c);
      let off = this.tableEntry(bi);
      if (off === 0) {
        if (v === 0) { c += k; continue; }
        off = this.newBlock(bi);
      }
      const b = this.block(off);
      const first = this.writeEntry(b, c % per, v);
      let last = first;
      for (let i = 1; i < k; i++) last = this.writeEntry(b, (c + i) % per, v);
      this.file.write(b.subarray(first, last + w), off + first);
      c += k;
    }
  }

  /** A new zeroed refcount block for block index bi, placed at the end of the file (describing itself when it can). */
  private newBlock(bi: number): number {
    if (bi >= this.table.length / 8) this.growTable(bi);
    const c = this.endCluster++;
    const off = c * this.cs;
    const b = Buffer.alloc(this.cs);
    const self = Math.floor(c / this.entriesPerBlock) === bi;
    if (self) this.writeEntry(b, c % this.entriesPerBlock, 1);
    this.file.write(b, off);
    if (!self) this.set(c, 1);
    this.setTableEntry(bi, off);
    return off;
  }

  private setTableEntry(bi: number, off: number): void {
    this.table.writeUInt32BE(Math.floor(off / 2 ** 32), 8 * bi);
    this.table.writeUInt32BE(off >>> 0, 8 * bi + 4);
    this.file.write(this.table.subarray(8 * bi, 8 * bi + 8), this.tableOffset + 8 * bi);
  }

  /** A larger refcount table at the end of the file, made durable before the header points at it. */
  private growTable(bi: number): void {
    const entries = Math.max(bi + 1, 2 * this.table.length / 8) + 4;
    const clusters = Math.ceil((entries * 8) / this.cs);
    const bytes = clusters * this.cs;
    if (bytes > MAX_REFTABLE_BYTES) throw new BlockIoError('allocate', 'ENOSPC', 'qcow2 refcount table is at its size limit');
    const oldOff = this.tableOffset, oldClusters = this.tableClusters;
    const t = Buffer.alloc(bytes);
    this.table.copy(t);
    const start = this.endCluster;
    this.endCluster += clusters;
    this.table = t;
    this.tableOffset = start * this.cs;
    this.tableClusters = clusters;
    this.file.write(t, this.tableOffset); // (entries for new blocks are rewritten as they come)
    this.setRun(start, clusters, 1);
    this.file.write(t, this.tableOffset);
    this.file.flush();
    const h = Buffer.alloc(12);
    h.writeBigUInt64BE(BigInt(this.tableOffset), 0);
    h.writeUInt32BE(clusters, 8);
    this.file.write(h, 48);
    this.file.flush();
    this.setRun(oldOff / this.cs, oldClusters, 0);
  }

  /** Add `delta` to a cluster's refcount now (snapshots, offline work). */
  update(cluster: number, delta: number): number {
    const v = this.get(cluster) + delta;
    this.set(cluster, v);
    if (v === 0 && cluster < this.freeHint) this.freeHint = cluster;
    return v;
  }

  /** Drop one reference to `cluster` once the next flush has made its unlinking durable. */
  deferFree(cluster: number): void {
    this.deferred.push(cluster);
    if (this.deferred.length >= MAX_DEFERRED) {
      this.file.flush();
      this.afterFlush();
    }
  }

  /** After a flush: apply the deferred frees; clusters reaching zero are punched out of the file. */
  afterFlush(): void {
    const d = this.deferred;
    if (d.length === 0) return;
    d.sort((a, b) => a - b);
    let runStart = -1, runEnd = -1;
    for (let i = 0; i < d.length; i++) {
      const c = d[i]!;
      if (this.update(c, -1) !== 0 || !this.canPunch) continue;
      if (c === runEnd) { runEnd++; continue; }
      if (runStart >= 0) this.file.discard(runStart * this.cs, (runEnd - runStart) * this.cs);
      runStart = c; runEnd = c + 1;
    }
    if (runStart >= 0) this.file.discard(runStart * this.cs, (runEnd - runStart) * this.cs);
    d.length = 0;
  }

  private isFixed(c: number): boolean {
    for (const r of this.fixed) if (c >= r.start && c < r.end) return true;
    return false;
  }

  /**
   * `n` contiguous clusters for new data or tables; returns the first
   * one's byte offset. Their refcounts are already 1 and durable.
   */
  alloc(n: number): number {
    if (this.poolEnd - this.poolNext < n) this.refill(n);
    const c = this.poolNext;
    this.poolNext += n;
    return c * this.cs;
  }

  /** Give back what is left of the pool (a clean close). */
  releasePool(): void {
    if (this.poolNext < this.poolEnd) this.setRun(this.poolNext, this.poolEnd - this.poolNext, 0);
    if (this.poolNext < this.poolEnd && this.poolNext < this.freeHint) this.freeHint = this.poolNext;
    this.poolNext = this.poolEnd = 0;
  }

  private refill(n: number): void {
    this.releasePool();
    const want = Math.max(n, Math.min(POOL_CLUSTERS, Math.floor(POOL_BYTES / this.cs)));
    // first a run of free clusters inside the file, then the end of it
    let start = -1, len = 0, seenFree = false;
    const fileEnd = this.endCluster;
    for (let c = Math.max(this.freeHint, 1); c < fileEnd && len < want; c++) {
      if (this.isFixed(c) || this.get(c) !== 0) {
        if (len >= n) break;
        if (!seenFree) this.freeHint = c + 1;
        start = -1; len = 0;
        continue;
      }
      seenFree = true;
      if (start < 0) start = c;
      len++;
    }
    if (len < n) {
      // the refcount blocks for the new clusters first, so that they sit below them, not past them
      for (let c = this.endCluster; c < this.endCluster + want;) {
        const bi = Math.floor(c / this.entriesPerBlock);
        if (this.tableEntry(bi) === 0) { this.newBlock(bi); c = this.endCluster; continue; }
        c = (bi + 1) * this.entriesPerBlock;
      }
      start = this.endCluster;
      len = want;
      this.endCluster += want;
    }
    if ((start + len) * this.cs > MAX_OFFSET) throw new BlockIoError('allocate', 'EFBIG', 'qcow2 image would be too large');
    this.setRun(start, len, 1);
    this.file.flush();
    this.poolNext = start;
    this.poolEnd = start + len;
  }
}
