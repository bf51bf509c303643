/**
 * The qcow2 backend: a BlockBackend over a qcow2 file (QEMU's
 * docs/interop/qcow2.txt, versions 2 and 3).
 *
 * Guest offsets map through the in-memory L1 table and cached L2 tables
 * (l2-cache.ts) to host clusters. A request is cut into runs of clusters
 * that continue each other on the host, each moved with one
 * preadv/pwritev (carrier.ts), so sequential I/O costs about what it costs
 * on a raw file. Writes to clusters this image owns alone (COPIED) go in
 * place; others (unallocated, zero, compressed, shared with a snapshot)
 * get new clusters, the rest of each partly written cluster copied from
 * what was there (the backing image, zeros, the old or compressed cluster).
 *
 * Order on the file, for crash safety (see refcount.ts for allocation):
 * new data, then the L2 entries that point at it, then the L1 entry of a
 * new L2 table; a dropped reference is unreferenced on disk before its
 * refcount drops. Metadata is written through (no dirty cache to lose), so
 * a kill -9 leaves at most leaked clusters, and flush() is one fdatasync.
 *
 * Everything read from the file is checked before use: a bad entry met
 * while serving the guest is an I/O error (BlockIoError), never a throw of
 * anything else.
 */
import { constants as zc, deflateRawSync, inflateRawSync } from 'node:zlib';
import { BlockIoError, type BlockBackend, type BlockSnapshots } from '../backend.js';
import type { FileBlockBackend } from '../file.js';
import { BufferCarrier, IovCarrier, ZeroCarrier, type Carrier } from './carrier.js';
import {
  COMPRESSED, HI_COMPRESSED, HI_COPIED, L1_HI_RESERVED, L1_LO_RESERVED, L2_HI_RESERVED, L2_LO_RESERVED, LO_ZERO, NORMAL,
  UNALLOCATED, ZERO, compressedRange, entryOffset, hiOf, loOf, putEntry, type CompressedRange,
} from './entries.js';
import {
  INCOMPAT_CORRUPT, INCOMPAT_DIRTY, MAX_L1_BYTES, encodeHeader, type Qcow2Header,
} from './header.js';
import { L2Cache } from './l2-cache.js';
import { Refcounts, corrupt } from './refcount.js';
import { applySnapshot, createSnapshot, deleteSnapshot, listSnapshots } from './snapshot.js';
import type { IoVecs } from '../../../memory/iovec.js';

/** Clusters moved by one run at most (bounds one syscall's size). */
const MAX_RUN_BYTES = 64 << 20;

export interface Qcow2OpenOptions {
  readonly: boolean;
  /**
   * Another instance of the same image (an I/O thread's) does the I/O: this
   * one reads the header, never writes, and flush() is an fdatasync.
   */
  passive?: boolean;
  /** A backing image (opened read-only by the caller). */
  backing?: BlockBackend;
}

export class Qcow2Backend implements BlockBackend {
  readonly format = 'qcow2';
  readonly size: number;
  readonly readonly: boolean;
  readonly hostSectorSizes = {};
  readonly cs: number;
  readonly clusterBits: number;
  /** entries per L2 table */
  readonly l2n: number;
  l1: Buffer;
  readonly cache: L2Cache;
  readonly refcounts: Refcounts;
  fileSize: number;
  backing: BlockBackend | undefined;

  readonly snapshots: BlockSnapshots = {
    list: () => listSnapshots(this).map((s) => s.name),
    create: (name) => { this.checkWritable('snapshot'); createSnapshot(this, name); },
    apply: (name) => { this.checkWritable('snapshot'); applySnapshot(this, name); },
    delete: (name) => { this.checkWritable('snapshot'); deleteSnapshot(this, name); },
  };

  private readonly passive: boolean;
  private closed = false;
  // the last lookup's result (no object per lookup)
  private mHost = 0;
  private mCopied = false;
  private mHi = 0;
  private mLo = 0;
  private readonly cr: CompressedRange = { offset: 0, length: 0 };
  // decompressed cluster cache (the last one)
  private cbuf: Buffer | undefined;
  private cbufKey = -1;
  private cin: Buffer | undefined;
  private readonly zeroCluster: Buffer;
  private cowBuf: Buffer | undefined;
  private readonly bufCarrier = new BufferCarrier();
  private readonly iovCarrier = new IovCarrier();
  private readonly zeroCarrier = new ZeroCarrier();
  private readonly cowCarrier = new BufferCarrier();
  private readonly tableScratch: Buffer;
  /** the table a write prepared (ensureL2) */
  private tOff = 0;
  private tBuf: Buffer | undefined;

  constructor(readonly file: FileBlockBackend, readonly path: string, readonly header: Qcow2Header, l1: Buffer,
    reftable: Buffer, opts: Qcow2OpenOptions) {
    this.clusterBits = header.clusterBits;
    this.cs = 2 ** header.clusterBits;
    this.l2n = this.cs / 8;
    this.size = header.size;
    this.passive = opts.passive ?? false;
    this.readonly = opts.readonly;
    this.backing = opts.backing;
    this.l1 = l1;
    this.fileSize = file.size;
    this.cache = new L2Cache(file, this.cs, header.l1Size);
    this.refcounts = new Refcounts(file, {
      clusterBits: header.clusterBits, refcountOrder: header.refcountOrder,
      tableOffset: header.refcountTableOffset, tableClusters: header.refcountTableClusters,
    }, reftable, this.fileSize, !file.isBlockDevice);
    this.refcounts.protect(0, this.cs);
    this.refcounts.protect(header.l1TableOffset, header.l1Size * 8);
    this.refcounts.protect(header.refcountTableOffset, header.refcountTableClusters * this.cs);
    this.zeroCluster = Buffer.alloc(this.cs);
    this.tableScratch = Buffer.alloc(this.cs);
  }

  /** Called once after open, for a writable, non-passive image. */
  prepareWrites(repair: () => void): void {
    if (this.readonly || this.passive) return;
    const h = this.header;
    if (h.incompatible & BigInt(INCOMPAT_CORRUPT)) {
      throw new BlockIoError('open', 'EIO', `${this.path}: qcow2 image is marked corrupt; open it read-only or repair it`);
    }
    if (h.incompatible & BigInt(INCOMPAT_DIRTY)) repair();
    if (h.autoclear !== 0n) {
      // bitmaps and other autoclear data tshyve does not keep up to date become stale: say so
      h.autoclear = 0n;
      this.writeHeader();
    }
  }

  /** Forget cached tables and clusters (after snapshot operations rewrote the tree). */
  resetCaches(): void {
    this.cache.clear();
    this.cbufKey = -1;
  }

  /**
   * Make the L1 table at least `entries` long: a larger copy in new clusters,
   * made durable before the header points at it; the old one is freed.
   */
  growL1(entries: number): void {
    const h = this.header;
    if (entries <= h.l1Size) return;
    if (entries * 8 > MAX_L1_BYTES) throw new BlockIoError('resize', 'EFBIG', `${this.path}: the L1 table would exceed ${MAX_L1_BYTES} bytes`);
    const oldOff = h.l1TableOffset, oldClusters = Math.ceil((h.l1Size * 8) / this.cs);
    const n = Math.ceil((entries * 8) / this.cs);
    const t = Buffer.alloc(n * this.cs);
    this.l1.copy(t);
    const off = this.refcounts.alloc(n);
    this.file.write(t, off);
    this.grew(off + t.length);
    this.file.flush();
    this.l1 = t.subarray(0, entries * 8);
    h.l1Size = entries;
    h.l1TableOffset = off;
    this.refcounts.protect(off, t.length);
    this.writeHeader();
    this.file.flush();
    if (oldClusters > 0) this.refcounts.setRun(oldOff / this.cs, oldClusters, 0);
  }

  /** A larger virtual size (the image is closed after: `size` is fixed for an open disk). */
  growTo(size: number): void {
    this.checkWritable('resize');
    if (size < this.header.size) throw new BlockIoError('resize', 'EINVAL', 'shrinking a qcow2 image is not supported');
    this.growL1(Math.ceil(size / (this.cs * this.l2n)));
    this.header.size = size;
    this.writeHeader();
    this.file.flush();
  }

  writeHeader(): void {
    this.file.write(encodeHeader(this.header, this.path), 0);
    this.fileSize = Math.max(this.fileSize, this.cs);
  }

  // ---- lookup ----------------------------------------------------------------------

  /** The L2 table offset of L1 entry i (0: none); sets mCopied. Bad entries are I/O errors. */
  l1Entry(i: number, op: string): number {
    if (i >= this.header.l1Size) throw corrupt(op, `offset past the L1 table (entry ${i})`);
    const hi = this.l1.readUInt32BE(8 * i), lo = this.l1.readUInt32BE(8 * i + 4);
    if ((hi & L1_HI_RESERVED) || (lo & L1_LO_RESERVED)) throw corrupt(op, `L1 entry ${i} has reserved bits set`);
    const off = entryOffset(hi, lo);
    this.mCopied = (hi & HI_COPIED) !== 0;
    if (off === 0) return 0;
    if (off % this.cs !== 0 || off < this.cs || off >= this.fileSize) throw corrupt(op, `L1 entry ${i} points at ${off}`);
    return off;
  }

  /**
   * Classify guest cluster `cluster`: UNALLOCATED, ZERO, NORMAL (mHost,
   * mCopied) or COMPRESSED (mHi/mLo). Throws an I/O error for a bad entry.
   */
  lookup(cluster: number, op: string): number {
    const l1i = Math.floor(cluster / this.l2n);
    const off = this.l1Entry(l1i, op);
    if (off === 0) { this.mHi = this.mLo = 0; return UNALLOCATED; }
    const t = this.cache.get(off);
    const i = cluster - l1i * this.l2n;
    return this.classify(t.readUInt32BE(8 * i), t.readUInt32BE(8 * i + 4), op);
  }

  /** The host offset the last lookup found (NORMAL clusters). */
  mapHost(): number { return this.mHost; }

  classify(hi: number, lo: number, op: string): number {
    this.mHi = hi; this.mLo = lo;
    if (hi & HI_COMPRESSED) {
      if (hi & HI_COPIED) throw corrupt(op, 'compressed cluster with the COPIED flag');
      return COMPRESSED;
    }
    if ((hi & L2_HI_RESERVED) || (lo & L2_LO_RESERVED)) throw corrupt(op, 'L2 entry has reserved bits set');
    const host = entryOffset(hi, lo);
    this.mCopied = (hi & HI_COPIED) !== 0;
    this.mHost = host;
    if (host !== 0 && (host % this.cs !== 0 || host < this.cs || host >= this.fileSize)) {
      throw corrupt(op, `cluster offset ${host} is invalid`);
    }
    if (lo & LO_ZERO) {
      if (this.header.version < 3) throw corrupt(op, 'zero cluster in a version 2 image');
      return ZERO;
    }
    return host === 0 ? UNALLOCATED : NORMAL;
  }

  // ---- reads -----------------------------------------------------------------------

  read(buf: Uint8Array, offset: number): void {
    this.bufCarrier.buf = buf;
    this.readRange(this.bufCarrier, offset, buf.length);
  }

  readv(iov: IoVecs, offset: number): void {
    this.iovCarrier.iov = iov;
    this.readRange(this.iovCarrier, offset, iov.bytes);
  }

  private readRange(c: Carrier, offset: number, len: number): void {
    this.checkOpen('read');
    const cs = this.cs;
    let pos = 0;
    while (pos < len) {
      const g = offset + pos;
      const cl = Math.floor(g / cs);
      const inC = g - cl * cs;
      const t = this.lookup(cl, 'read');
      const host = this.mHost + inC;
      let n = Math.min(len - pos, cs - inC);
      if (t === COMPRESSED) {
        this.fromCompressed(c, inC, pos, n);
        pos += n;
        continue;
      }
      // the following clusters, while they continue this one
      for (let next = cl + 1; pos + n < len && n < MAX_RUN_BYTES; next++) {
        const t2 = this.lookup(next, 'read');
        if (t2 !== t || (t === NORMAL && this.mHost !== host + n)) break;
        n += Math.min(len - pos - n, cs);
      }
      if (t === NORMAL) this.fromHost(c, host, pos, n);
      else if (t === UNALLOCATED && this.backing) this.fromBacking(c, g, pos, n);
      else c.zero(pos, n);
      pos += n;
    }
  }

  /** Host data; what lies past the end of the file reads as zeros (as QEMU's). */
  private fromHost(c: Carrier, host: number, at: number, n: number): void {
    const inFile = Math.max(0, Math.min(n, this.fileSize - host));
    if (inFile > 0) c.fromFile(this.file, host, at, inFile);
    if (inFile < n) c.zero(at + inFile, n - inFile);
  }

  private fromBacking(c: Carrier, g: number, at: number, n: number): void {
    const b = this.backing!;
    const k = Math.max(0, Math.min(n, b.size - g));
    if (k > 0) c.fromBacking(b, g, at, k);
    if (k < n) c.zero(at + k, n - k);
  }

  private fromCompressed(c: Carrier, inC: number, at: number, n: number): void {
    c.fromBuffer(this.decompress('read'), inC, at, n);
  }

  /** The cluster the last lookup found compressed (mHi/mLo), inflated. */
  private decompress(op: string): Buffer {
    compressedRange(this.mHi, this.mLo, this.clusterBits, this.cr);
    const { offset, length } = this.cr;
    if (offset === this.cbufKey && this.cbuf) return this.cbuf;
    if (offset < this.cs || offset >= this.fileSize) throw corrupt(op, `compressed cluster at ${offset} is outside the file`);
    const len = Math.min(length, this.fileSize - offset);
    if (!this.cin) this.cin = Buffer.alloc(2 * this.cs + 512);
    const src = this.cin.subarray(0, len);
    this.file.read(src, offset);
    let out: Buffer;
    try {
      out = inflateRawSync(src, { finishFlush: zc.Z_SYNC_FLUSH, maxOutputLength: this.cs });
    } catch (e) {
      throw corrupt(op, `compressed cluster at ${offset} does not inflate (${e instanceof Error ? e.message : String(e)})`);
    }
    if (out.length !== this.cs) throw corrupt(op, `compressed cluster at ${offset} inflates to ${out.length} bytes`);
    this.cbuf = out;
    this.cbufKey = offset;
    return out;
  }

  // ---- writes ----------------------------------------------------------------------

  write(buf: Uint8Array, offset: number): void {
    this.bufCarrier.buf = buf;
    this.writeRange(this.bufCarrier, offset, buf.length);
  }

  writev(iov: IoVecs, offset: number): void {
    this.iovCarrier.iov = iov;
    this.writeRange(this.iovCarrier, offset, iov.bytes);
  }

  private checkOpen(op: string): void {
    if (this.closed) throw new BlockIoError(op, 'EBADF', 'backend closed');
  }

  private checkWritable(op: string): void {
    this.checkOpen(op);
    if (this.readonly || this.passive) throw new BlockIoError(op, 'EROFS');
  }

  private writeRange(c: Carrier, offset: number, len: number): void {
    this.checkWritable('write');
    const cs = this.cs;
    let pos = 0;
    while (pos < len) {
      const g = offset + pos;
      const cl = Math.floor(g / cs);
      const inC = g - cl * cs;
      let n = Math.min(len - pos, cs - inC);
      const t = this.lookup(cl, 'write');
      if (t === NORMAL && this.mCopied) {
        const host = this.mHost + inC;
        this.checkNotMetadata(this.mHost);
        for (let next = cl + 1; pos + n < len && n < MAX_RUN_BYTES; next++) {
          if (this.lookup(next, 'write') !== NORMAL || !this.mCopied || this.mHost !== host + n) break;
          this.checkNotMetadata(this.mHost);
          n += Math.min(len - pos - n, cs);
        }
        c.toFile(this.file, host, pos, n);
        if (c.extends) this.grew(host + n); else this.reach(host + n);
        pos += n;
        continue;
      }
      // clusters to allocate: this one and those after it in the same L2 table that need it too
      const l1i = Math.floor(cl / this.l2n);
      let k = 1;
      for (let next = cl + 1; pos + n < len && next < (l1i + 1) * this.l2n && n < MAX_RUN_BYTES; next++, k++) {
        const t2 = this.lookup(next, 'write');
        if (t2 === NORMAL && this.mCopied) break;
        n += Math.min(len - pos - n, cs);
      }
      this.allocRun(c, cl, k, inC, pos, n);
      pos += n;
    }
  }

  /** A write in place must never land on the header or the tables tshyve holds in memory. */
  private checkNotMetadata(host: number): void {
    const h = this.header;
    const inside = (off: number, len: number): boolean => host + this.cs > off && host < off + len;
    if (host < this.cs || inside(h.l1TableOffset, h.l1Size * 8) ||
        inside(this.refcounts.tableOffset, this.refcounts.tableClusters * this.cs)) {
      throw corrupt('write', `data cluster at ${host} overlaps metadata`);
    }
  }

  /** The file was written up to `end`. */
  grew(end: number): void {
    if (end > this.fileSize) this.fileSize = end;
  }

  /** Make the file at least `end` long (sparse). */
  private reach(end: number): void {
    if (end <= this.fileSize || this.file.isBlockDevice) return; // a device's size is fixed: writes past it fail
    this.file.truncate(end);
    this.fileSize = end;
  }

  /**
   * Allocate k clusters for guest clusters [cl, cl+k) (one L2 table) and write
   * the request's bytes [pos, pos+n) into them at inC, the rest of the first
   * and last cluster copied from what they held.
   */
  private allocRun(c: Carrier, cl: number, k: number, inC: number, pos: number, n: number): void {
    const cs = this.cs;
    const l1i = Math.floor(cl / this.l2n);
    const h = this.refcounts.alloc(k);
    if (inC > 0) this.copyOld(cl, h, 0, inC);
    const endLast = inC + n - (k - 1) * cs;
    if (endLast < cs) this.copyOld(cl + k - 1, h + (k - 1) * cs, endLast, cs);
    c.toFile(this.file, h + inC, pos, n);
    if (c.extends) this.grew(h + inC + n);
    this.reach(h + k * cs); // every cluster starts inside the file
    this.ensureL2(l1i);
    const tb = this.tBuf!, toff = this.tOff;
    const first = cl - l1i * this.l2n;
    for (let j = 0; j < k; j++) {
      const i = first + j;
      this.dropRef(tb.readUInt32BE(8 * i), tb.readUInt32BE(8 * i + 4));
      const host = h + j * cs;
      putEntry(tb, i, hiOf(host, HI_COPIED), loOf(host));
    }
    this.cache.writeEntries(toff, tb, first, first + k);
  }

  /** Bytes [from, to) of guest cluster `cl` as they read now, to host `dst + from`. */
  private copyOld(cl: number, dst: number, from: number, to: number): void {
    const t = this.lookup(cl, 'write');
    if (t === ZERO || (t === UNALLOCATED && !this.backing)) {
      if (dst + from < this.fileSize) this.file.writeZeroes(dst + from, to - from, false);
      return;
    }
    if (!this.cowBuf) this.cowBuf = Buffer.alloc(this.cs);
    const b = this.cowBuf.subarray(from, to);
    this.cowCarrier.buf = b;
    this.readRange(this.cowCarrier, cl * this.cs + from, to - from);
    this.file.write(b, dst + from);
    this.grew(dst + to);
  }

  /** Forget what an L2 entry referenced: its clusters lose a reference after the next flush. */
  dropRef(hi: number, lo: number): void {
    if (hi & HI_COMPRESSED) {
      compressedRange(hi, lo, this.clusterBits, this.cr);
      const a = Math.floor(this.cr.offset / this.cs), b = Math.floor((this.cr.offset + this.cr.length - 1) / this.cs);
      for (let x = a; x <= b; x++) this.refcounts.deferFree(x);
      if (this.cbufKey === this.cr.offset) this.cbufKey = -1;
      return;
    }
    const host = entryOffset(hi, lo);
    if (host !== 0) this.refcounts.deferFree(host / this.cs);
  }

  /** Make L1 entry l1i point at an L2 table of this image alone (new, or a copy of a shared one); sets tOff/tBuf. */
  private ensureL2(l1i: number): void {
    const off = this.l1Entry(l1i, 'write');
    if (off !== 0 && this.mCopied) {
      this.tOff = off;
      this.tBuf = this.cache.get(off);
      return;
    }
    const src = off === 0 ? this.zeroCluster : this.cache.get(off);
    const copy = this.tableScratch;
    src.copy(copy);
    const noff = this.refcounts.alloc(1);
    this.file.write(copy, noff);
    this.grew(noff + this.cs);
    this.tBuf = this.cache.put(noff, copy);
    this.tOff = noff;
    putEntry(this.l1, l1i, hiOf(noff, HI_COPIED), loOf(noff));
    this.file.write(this.l1.subarray(8 * l1i, 8 * l1i + 8), this.header.l1TableOffset + 8 * l1i);
    if (off !== 0) {
      this.cache.drop(off);
      this.refcounts.deferFree(off / this.cs);
    }
  }

  /** where the next compressed cluster may go (0: start a new cluster) */
  private cNext = 0;

  /**
   * Write guest cluster `cl` (unallocated; a whole cluster of data)
   * deflated, as `qemu-img convert -c` does; data that does not shrink is
   * written as a normal cluster. Compressed clusters are packed one after
   * another, sector aligned; each host cluster counts the compressed
   * clusters that touch it.
   */
  writeCompressed(cl: number, data: Buffer): void {
    this.checkWritable('write');
    const cs = this.cs;
    if (this.lookup(cl, 'write') !== UNALLOCATED || this.mHi !== 0 || this.mLo !== 0) {
      throw new BlockIoError('write', 'EINVAL', 'compressed writes go to unallocated clusters only');
    }
    const z = deflateRawSync(data);
    if (z.length >= cs - 512) { this.write(data, cl * cs); return; }
    let off = this.cNext;
    if (off === 0 || Math.floor(off / cs) !== Math.floor((off + z.length - 1) / cs)) {
      off = this.refcounts.alloc(1);
    } else {
      this.refcounts.update(Math.floor(off / cs), 1);
    }
    this.file.write(z, off);
    this.grew(off + z.length);
    this.reach(Math.ceil((off + z.length) / cs) * cs);
    this.cNext = Math.ceil((off + z.length) / 512) * 512;
    if (this.cNext % cs === 0) this.cNext = 0;
    const l1i = Math.floor(cl / this.l2n);
    this.ensureL2(l1i);
    const extra = Math.floor((off + z.length - 1) / 512) - Math.floor(off / 512);
    const hs = 62 - (this.clusterBits - 8) - 32;
    const i = cl - l1i * this.l2n;
    putEntry(this.tBuf!, i, (HI_COMPRESSED | (extra << hs) | Math.floor(off / 2 ** 32)) >>> 0, off >>> 0);
    this.cache.writeEntries(this.tOff, this.tBuf!, i, i + 1);
  }

  // ---- discard, write zeroes, flush ------------------------------------------------

  discard(offset: number, len: number): boolean {
    this.checkWritable('discard');
    this.clearRange(offset, len, true, true);
    return true;
  }

  writeZeroes(offset: number, len: number, unmap: boolean): void {
    this.checkWritable('write-zeroes');
    this.clearRange(offset, len, false, unmap);
  }

  /**
   * Whole clusters of the range lose their data (discard: unallocated, or
   * zero over a backing file; write-zeroes: zero clusters, kept allocated
   * unless unmap); partial ones are written with zeros (write-zeroes) or left
   * (discard may do nothing).
   */
  private clearRange(offset: number, len: number, discard: boolean, unmap: boolean): void {
    const cs = this.cs;
    const end = offset + len;
    const a = Math.ceil(offset / cs) * cs;
    const b = Math.max(a, Math.floor(end / cs) * cs);
    if (!discard) {
      if (a > offset) this.writeRange(this.zeroCarrier, offset, Math.min(a, end) - offset);
      if (b < end && b >= a && end > a) this.writeRange(this.zeroCarrier, Math.max(b, offset), end - Math.max(b, offset));
    }
    const v3 = this.header.version >= 3;
    for (let cl = a / cs; cl < b / cs;) {
      const l1i = Math.floor(cl / this.l2n);
      const stop = Math.min(b / cs, (l1i + 1) * this.l2n);
      if (this.l1Entry(l1i, 'discard') === 0 && !(this.backing && !discard)) { cl = stop; continue; }
      if (!v3 && this.backing) {
        // version 2 has no zero flag: a discard leaves the data, write-zeroes writes zeros
        if (!discard) this.writeRange(this.zeroCarrier, cl * cs, (stop - cl) * cs);
        cl = stop;
        continue;
      }
      this.ensureL2(l1i);
      const tb = this.tBuf!, base = l1i * this.l2n;
      let first = -1, last = -1;
      for (let x = cl; x < stop; x++) {
        const i = x - base;
        const hi = tb.readUInt32BE(8 * i), lo = tb.readUInt32BE(8 * i + 4);
        const t = this.classify(hi, lo, 'discard');
        let nhi = 0, nlo = 0;
        if (v3 && !discard && !unmap && t === NORMAL && this.mCopied) {
          nhi = hi; nlo = lo | LO_ZERO; // keep the cluster, read zeros
        } else if (v3 && (this.backing || !discard)) {
          nlo = LO_ZERO;
        }
        if (nhi === hi && nlo === lo) continue;
        if (nhi === 0) this.dropRef(hi, lo);
        putEntry(tb, i, nhi, nlo);
        if (first < 0) first = i;
        last = i;
      }
      if (first >= 0) this.cache.writeEntries(this.tOff, tb, first, last + 1);
      cl = stop;
    }
  }

  flush(): void {
    this.checkOpen('flush');
    this.file.flush();
    if (!this.readonly && !this.passive) this.refcounts.afterFlush();
  }

  close(): void {
    if (this.closed) return;
    try {
      if (!this.readonly && !this.passive) {
        this.flush();
        this.refcounts.releasePool();
      }
    } finally {
      this.closed = true;
      this.file.close();
      this.backing?.close();
    }
  }
}
