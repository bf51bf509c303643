/**
 * virtio-blk (virtio 1.2, 5.2) over a BlockBackend: bhyve's pci_virtio_block.c
 * device logic, transport-independent (VirtioDevice).
 *
 * One request queue of 256 entries. A request is a descriptor chain:
 *
 *   readable:  struct virtio_blk_req header (16 bytes)
 *                u32 type | u32 reserved | u64 sector (512-byte units)
 *              then, for OUT, the data; for DISCARD/WRITE_ZEROES, segments
 *                u64 sector | u32 num_sectors | u32 flags (bit 0 = unmap)
 *   writable:  for IN, the data; for GET_ID, 20 bytes of serial;
 *              then the 1-byte status (OK 0, IOERR 1, UNSUPP 2) last.
 *
 * The chain layout is not assumed (virtio 1.x has no framing): the header,
 * data and status are located by byte offsets in the readable and writable
 * streams. Everything guest-controlled is read once and checked: ranges
 * with 64-bit math against the capacity, data lengths multiple of 512,
 * segment counts and sizes bounded, flags checked. Bad requests get IOERR
 * or UNSUPP; a queue protocol violation sets NEEDS_RESET; nothing throws
 * out of queueNotify. I/O goes straight between guest memory and the
 * backend (no bounce buffers, no allocation sized by the guest).
 *
 * Device config layout (virtio_blk_config, little-endian, 60 bytes here):
 *
 *    0 u64 capacity (512-byte sectors)   32 u8  writeback      33 u8 unused
 *    8 u32 size_max                      34 u16 num_queues
 *   12 u32 seg_max                       36 u32 max_discard_sectors
 *   16 u16 cylinders u8 heads u8 sectors 40 u32 max_discard_seg
 *   20 u32 blk_size                      44 u32 discard_sector_alignment
 *   24 u8 physical_block_exp             48 u32 max_write_zeroes_sectors
 *   25 u8 alignment_offset               52 u32 max_write_zeroes_seg
 *   26 u16 min_io_size                   56 u8  write_zeroes_may_unmap
 *   28 u32 opt_io_size                   57 u8[3] unused
 */
import { createHash } from 'node:crypto';
import { GuestMemoryError, UserError } from '../../errors.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { VIRTIO_COMMON_FEATURES, VIRTIO_ID_BLOCK, featureBit, hasFeature } from '../../virtio/constants.js';
import type { VirtioDevice, VirtioInterrupt } from '../../virtio/device.js';
import { VirtqueueError, type DescriptorChain, type GuestBuffer, type Virtqueue } from '../../virtio/queue.js';
import { IoVecs } from '../../memory/iovec.js';
import { checkpointImage, followOverlay, openImage, type BlockBackend, type ImageFormat, type OpenImageOptions } from '../block/index.js';
import type { DiskCheckpointOp, DiskState } from '../../snapshot/disks.js';

// ---- protocol constants (5.2) ---------------------------------------------------

export const VIRTIO_BLK_F_SIZE_MAX = 1;
export const VIRTIO_BLK_F_SEG_MAX = 2;
export const VIRTIO_BLK_F_GEOMETRY = 4;
export const VIRTIO_BLK_F_RO = 5;
export const VIRTIO_BLK_F_BLK_SIZE = 6;
export const VIRTIO_BLK_F_FLUSH = 9;
export const VIRTIO_BLK_F_TOPOLOGY = 10;
export const VIRTIO_BLK_F_CONFIG_WCE = 11;
export const VIRTIO_BLK_F_MQ = 12;
export const VIRTIO_BLK_F_DISCARD = 13;
export const VIRTIO_BLK_F_WRITE_ZEROES = 14;

export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;

export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

/** Discard/write-zeroes segment flag: the range may be deallocated. */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;

/** The unit of `sector`, `capacity` and segment lengths, whatever blk_size is. */
export const VIRTIO_BLK_SECTOR = 512;
export const VIRTIO_BLK_HEADER_SIZE = 16;
export const VIRTIO_BLK_SEGMENT_SIZE = 16;
export const VIRTIO_BLK_ID_BYTES = 20;
export const VIRTIO_BLK_CONFIG_SIZE = 60;

/** The default queue size (QEMU's and Firecracker's); `queuesize=` sets another. */
export const VIRTIO_BLK_QUEUE_SIZE = 256;
/** Largest `queuesize=`: Linux's split rings and QEMU's virtio-blk stop at 1024 too. */
export const VIRTIO_BLK_MAX_QUEUE_SIZE = 1024;
/** Per-segment and per-request bounds for discard / write zeroes. */
export const VIRTIO_BLK_MAX_DISCARD_SECTORS = 1 << 22; // 2 GiB
export const VIRTIO_BLK_MAX_DISCARD_SEG = 32;
export const VIRTIO_BLK_MAX_WRITE_ZEROES_SECTORS = 1 << 22;
export const VIRTIO_BLK_MAX_WRITE_ZEROES_SEG = 32;

export interface VirtioBlkOptions {
  /** Backing file or block device. */
  path: string;
  readonly?: boolean;
  /** Logical sector size (blk_size), power of two in [512, 65536]; default 512 (or the block device's). */
  sectorSize?: number;
  /** Physical sector size, power of two >= sectorSize; default sectorSize (or the block device's). */
  physicalSectorSize?: number;
  /** GET_ID answer, at most 20 bytes; default bhyve's "BHYVE-XXXX-XXXX-XXXX" from an MD5 of the path. */
  serial?: string;
  /** Offer neither DISCARD nor WRITE_ZEROES. */
  nodelete?: boolean;
  /** bhyve `direct`: O_SYNC. */
  direct?: boolean;
  /** bhyve `nocache`: drop the page cache after I/O. */
  nocache?: boolean;
  /**
   * Queue size, a power of two in [4, 1024]; default 256. seg_max is two less,
   * so Linux sends a request of up to (size - 2) pages in one chain.
   */
  queueSize?: number;
  /** The image format (`format=`); undefined: probed from the file's header. */
  format?: ImageFormat;
  /**
   * Another instance (the disk's I/O thread) does the I/O: open the image
   * for its geometry and flushes only (an image format keeps its metadata
   * in one instance).
   */
  passive?: boolean;
  /** Use this backend instead of opening `path` (tests, other storage). */
  backend?: BlockBackend;
  /** Told about guest mistakes and host I/O errors (the caller rate-limits). */
  onError?: (msg: string) => void;
}

export interface VirtioBlkStats {
  requests: number;
  ioErrors: number;
  unsupported: number;
  badChains: number;
}

/** bhyve's default serial: "BHYVE-" and the first 6 bytes of MD5(path) in hex groups. */
export function defaultSerial(path: string): string {
  const d = createHash('md5').update(path).digest();
  const h = (i: number): string => d[i]!.toString(16).toUpperCase().padStart(2, '0');
  return `BHYVE-${h(0)}${h(1)}-${h(2)}${h(3)}-${h(4)}${h(5)}`;
}

function isPow2(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** A queue size `queuesize=` accepts: a power of two from 4 to VIRTIO_BLK_MAX_QUEUE_SIZE. */
export function isValidQueueSize(n: number): boolean {
  return isPow2(n) && n >= 4 && n <= VIRTIO_BLK_MAX_QUEUE_SIZE;
}

/** Thrown inside request handling: ends the request with this status. */
class RequestStatus {
  constructor(readonly status: number, readonly why?: string) {}
}

export class VirtioBlk implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_BLOCK;
  readonly numQueues = 1;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly configSize = VIRTIO_BLK_CONFIG_SIZE;

  /** replaced when an external checkpoint switches the disk to an overlay */
  backend: BlockBackend;
  readonly readonly: boolean;
  readonly sectorSize: number;
  readonly physicalSectorSize: number;
  /** Usable bytes: the backend size rounded down to the logical sector size. */
  readonly capacityBytes: number;
  readonly serial: string;
  readonly stats: VirtioBlkStats = { requests: 0, ioErrors: 0, unsupported: 0, badChains: 0 };

  private readonly config = Buffer.alloc(VIRTIO_BLK_CONFIG_SIZE);
  private readonly ident = Buffer.alloc(VIRTIO_BLK_ID_BYTES);
  private readonly capacityBig: bigint;
  private readonly onError: ((msg: string) => void) | undefined;
  private readonly ownsBackend: boolean;
  /** how the image was opened (an overlay is opened the same way) */
  private readonly openOpts: OpenImageOptions;

  private queue: Virtqueue | undefined;
  private mem: GuestMemory | undefined;
  private interrupt: VirtioInterrupt | undefined;
  private negotiated = 0n;
  private readonly segScratch = Buffer.alloc(VIRTIO_BLK_SEGMENT_SIZE * Math.max(VIRTIO_BLK_MAX_DISCARD_SEG, VIRTIO_BLK_MAX_WRITE_ZEROES_SEG));
  private readonly statusByte = new Uint8Array(1);
  /** the request header, copied here once per request */
  private readonly header = Buffer.alloc(VIRTIO_BLK_HEADER_SIZE);
  /** the current request's pieces for preadv/pwritev, reused */
  private readonly iov: IoVecs;
  /** Bytes of the writable data part already filled by the current IN request (for a failing one). */
  private partial = 0;

  /** Opens the backing file (unless a backend is given). Throws UserError on bad options or path. */
  constructor(opts: VirtioBlkOptions) {
    const serial = opts.serial ?? defaultSerial(opts.path);
    const serialBytes = Buffer.from(serial, 'utf8');
    if (serialBytes.length > VIRTIO_BLK_ID_BYTES) {
      throw new UserError(`virtio-blk: serial '${serial}' is longer than ${VIRTIO_BLK_ID_BYTES} bytes`);
    }
    if (opts.sectorSize !== undefined) checkSectorSize('sector size', opts.sectorSize);
    if (opts.physicalSectorSize !== undefined) checkSectorSize('physical sector size', opts.physicalSectorSize);
    const qs = opts.queueSize ?? VIRTIO_BLK_QUEUE_SIZE;
    if (!isValidQueueSize(qs)) {
      throw new UserError(`virtio-blk: queue size ${qs} is not a power of two between 4 and ${VIRTIO_BLK_MAX_QUEUE_SIZE}`);
    }
    this.maxQueueSize = qs;
    this.iov = new IoVecs(qs);

    this.ownsBackend = opts.backend === undefined;
    this.openOpts = {
      path: opts.path, readonly: opts.readonly ?? false, direct: opts.direct ?? false, nocache: opts.nocache ?? false, label: 'virtio-blk',
      format: opts.format, passive: opts.passive,
    };
    this.backend = opts.backend ?? openImage(this.openOpts);
    try {
      const host = this.backend.hostSectorSizes;
      const hostL = host.logical !== undefined && isPow2(host.logical) && host.logical >= 512 && host.logical <= 65536 ? host.logical : undefined;
      const hostP = host.physical !== undefined && isPow2(host.physical) && host.physical <= (1 << 20) ? host.physical : undefined;
      const ls = opts.sectorSize ?? hostL ?? VIRTIO_BLK_SECTOR;
      let ps = opts.physicalSectorSize ?? (opts.sectorSize !== undefined ? ls : Math.max(hostP ?? ls, ls));
      if (ps < ls) {
        if (opts.physicalSectorSize !== undefined) {
          throw new UserError(`virtio-blk: physical sector size ${ps} is smaller than the logical sector size ${ls}`);
        }
        ps = ls;
      }
      this.sectorSize = ls;
      this.physicalSectorSize = ps;
      this.readonly = (opts.readonly ?? false) || this.backend.readonly;
      this.serial = serial;
      serialBytes.copy(this.ident);
      this.capacityBytes = Math.floor(this.backend.size / ls) * ls;
      this.capacityBig = BigInt(this.capacityBytes);
      this.onError = opts.onError;

      let f = VIRTIO_COMMON_FEATURES | featureBit(VIRTIO_BLK_F_SEG_MAX) | featureBit(VIRTIO_BLK_F_BLK_SIZE) |
        featureBit(VIRTIO_BLK_F_FLUSH) | featureBit(VIRTIO_BLK_F_TOPOLOGY);
      if (this.readonly) f |= featureBit(VIRTIO_BLK_F_RO);
      else if (!opts.nodelete) f |= featureBit(VIRTIO_BLK_F_DISCARD) | featureBit(VIRTIO_BLK_F_WRITE_ZEROES);
      this.features = f;
      this.buildConfig();
    } catch (e) {
      if (this.ownsBackend) this.backend.close();
      throw e;
    }
  }

  private buildConfig(): void {
    const c = this.config;
    c.writeBigUInt64LE(this.capacityBig / BigInt(VIRTIO_BLK_SECTOR), 0);
    c.writeUInt32LE(0, 8); // size_max: not offered
    c.writeUInt32LE(this.maxQueueSize - 2, 12); // seg_max
    // geometry (16..19) not offered: zeros
    c.writeUInt32LE(this.sectorSize, 20);
    c.writeUInt8(Math.log2(this.physicalSectorSize / this.sectorSize), 24);
    c.writeUInt8(0, 25); // alignment_offset
    c.writeUInt16LE(Math.min(this.physicalSectorSize / this.sectorSize, 0xffff), 26); // min_io_size, logical blocks
    c.writeUInt32LE(0, 28); // opt_io_size
    c.writeUInt8(0, 32); // writeback (CONFIG_WCE not offered; FLUSH implies a writeback cache)
    c.writeUInt16LE(1, 34); // num_queues
    const discard = hasFeature(this.features, VIRTIO_BLK_F_DISCARD);
    const wz = hasFeature(this.features, VIRTIO_BLK_F_WRITE_ZEROES);
    c.writeUInt32LE(discard ? VIRTIO_BLK_MAX_DISCARD_SECTORS : 0, 36);
    c.writeUInt32LE(discard ? VIRTIO_BLK_MAX_DISCARD_SEG : 0, 40);
    c.writeUInt32LE(discard ? this.physicalSectorSize / VIRTIO_BLK_SECTOR : 0, 44);
    c.writeUInt32LE(wz ? VIRTIO_BLK_MAX_WRITE_ZEROES_SECTORS : 0, 48);
    c.writeUInt32LE(wz ? VIRTIO_BLK_MAX_WRITE_ZEROES_SEG : 0, 52);
    c.writeUInt8(wz ? 1 : 0, 56);
  }

  /** Capacity in 512-byte sectors (the config field). */
  get capacitySectors(): bigint {
    return this.capacityBig / BigInt(VIRTIO_BLK_SECTOR);
  }

  // ---- VirtioDevice -------------------------------------------------------------------

  queueMaxChainLen(q: number): number | undefined {
    return q === 0 ? this.maxQueueSize : undefined;
  }

  readConfig(offset: number, size: number): number {
    if (!Number.isInteger(offset) || offset < 0 || !(size === 1 || size === 2 || size === 4)) return 0;
    let v = 0;
    for (let i = size - 1; i >= 0; i--) {
      const at = offset + i;
      v = v * 256 + (at < this.config.length ? this.config[at]! : 0);
    }
    return v;
  }

  writeConfig(_offset: number, _size: number, _value: number): void {
    // Every field is read-only: writeback is writable only with CONFIG_WCE, which is not offered.
  }

  activate(queues: readonly Virtqueue[], mem: GuestMemory, interrupt: VirtioInterrupt, features: bigint): void {
    const q = queues[0];
    this.queue = q !== undefined && q.ready ? q : undefined;
    this.mem = mem;
    this.interrupt = interrupt;
    this.negotiated = features;
  }

  reset(): void {
    this.queue = undefined;
    this.mem = undefined;
    this.interrupt = undefined;
    this.negotiated = 0n;
  }

  /** Close the backend (VM teardown). */
  destroy(): void {
    this.reset();
    if (this.ownsBackend) this.backend.close();
  }

  queueNotify(q: number): void {
    const vq = this.queue, interrupt = this.interrupt;
    if (q !== 0 || !vq || !interrupt) return;
    let pushed = false;
    try {
      for (;;) {
        vq.disableNotifications();
        for (let chain = vq.popChain(true); chain !== undefined; chain = vq.popChain(true)) { // each done before the next
          const used = this.handle(chain);
          chain.markWritten(); // read data went in through host addresses
          vq.pushUsed(chain.head, used);
          pushed = true;
        }
        if (pushed) {
          interrupt.signalUsed(0);
          pushed = false;
        }
        if (!vq.enableNotifications()) break;
      }
    } catch (e) {
      try {
        if (pushed) interrupt.signalUsed(0);
        interrupt.needsReset(e);
      } catch {
        // nothing more to do: never throw out of queueNotify
      }
    }
  }

  // ---- requests -------------------------------------------------------------------------

  /** Snapshots: the image must hold everything the guest was told is written. */
  syncForSave(): void {
    if (!this.readonly) this.backend.flush();
  }

  /**
   * A checkpoint's work on the disk (devices/block/checkpoint.ts), by the
   * instance that does the I/O, its queue quiesced. Throws one line.
   */
  checkpointDisk(op: DiskCheckpointOp): DiskState {
    if (!this.ownsBackend) throw new UserError('virtio-blk: this disk was not opened from a file');
    return checkpointImage(this, this.openOpts, op);
  }

  /** The I/O thread switched the disk to `overlay`: this (passive) instance follows, for its flushes. */
  followOverlay(overlay: string): void { followOverlay(this, this.openOpts, overlay); }

  private report(msg: string): void {
    try {
      this.onError?.(`virtio-blk: ${msg}`);
    } catch {
      // a logger failure must not break the device
    }
  }

  /**
   * Serve one chain; returns the number of bytes written into its writable
   * part (data + status). Throws only VirtqueueError (guest memory trouble),
   * which queueNotify turns into NEEDS_RESET.
   */
  private handle(chain: DescriptorChain): number {
    this.stats.requests++;
    const wlen = chain.writableLen;
    if (wlen === 0) {
      // Nowhere to put the status: give the chain back untouched.
      this.stats.badChains++;
      this.report(`request (head ${chain.head}) without a writable status byte`);
      return 0;
    }
    const dataCap = wlen - 1; // writable bytes before the status byte
    let written: number;
    let status: number;
    try {
      written = this.execute(chain, dataCap);
      status = VIRTIO_BLK_S_OK;
    } catch (e) {
      if (e instanceof VirtqueueError) throw e;
      if (e instanceof GuestMemoryError) throw new VirtqueueError('EVQ_MEMORY', e.message);
      if (e instanceof RequestStatus) {
        status = e.status;
        written = this.partial;
        if (e.why) this.report(e.why);
      } else {
        status = VIRTIO_BLK_S_IOERR;
        written = this.partial;
        this.report(`I/O error: ${e instanceof Error ? e.message : String(e)}`);
      }
      if (status === VIRTIO_BLK_S_IOERR) this.stats.ioErrors++;
      else if (status === VIRTIO_BLK_S_UNSUPP) this.stats.unsupported++;
    } finally {
      this.partial = 0;
    }
    this.statusByte[0] = status;
    chain.write(this.statusByte, dataCap);
    return Math.min(written, dataCap) + 1;
  }

  /** Serve the request; returns the data bytes written for the guest (or throws RequestStatus). */
  private execute(chain: DescriptorChain, dataCap: number): number {
    if (chain.readableLen < VIRTIO_BLK_HEADER_SIZE) {
      throw new RequestStatus(VIRTIO_BLK_S_IOERR, `request header of ${chain.readableLen} bytes (need ${VIRTIO_BLK_HEADER_SIZE})`);
    }
    const hdr = this.header;
    chain.readInto(hdr, 0); // a private copy: read once
    const type = hdr.readUInt32LE(0);
    // the sector as two words: no BigInt on the request path
    const sectorLo = hdr.readUInt32LE(8), sectorHi = hdr.readUInt32LE(12);
    const dataIn = chain.readableLen - VIRTIO_BLK_HEADER_SIZE; // readable bytes after the header

    switch (type) {
      case VIRTIO_BLK_T_IN: {
        this.checkData('read', dataCap);
        const off = this.checkRange('read', sectorLo, sectorHi, dataCap);
        if (this.backend.readv && dataCap > 0 && chain.hostIovec(true, 0, dataCap, this.iov)) {
          try {
            this.backend.readv(this.iov, off);
          } catch (e) {
            throw hostIoError(e);
          }
          return dataCap;
        }
        this.forEachPiece(chain.writable, 0, dataCap, (view, at) => {
          this.io(() => this.backend.read(view, off + at));
          this.partial = at + view.length;
        });
        return dataCap;
      }
      case VIRTIO_BLK_T_OUT: {
        if (this.readonly) throw new RequestStatus(VIRTIO_BLK_S_IOERR, 'write to a read-only disk');
        this.checkData('write', dataIn);
        const off = this.checkRange('write', sectorLo, sectorHi, dataIn);
        if (this.backend.writev && dataIn > 0 && chain.hostIovec(false, VIRTIO_BLK_HEADER_SIZE, dataIn, this.iov)) {
          try {
            this.backend.writev(this.iov, off);
          } catch (e) {
            throw hostIoError(e);
          }
          return 0;
        }
        this.forEachPiece(chain.readable, VIRTIO_BLK_HEADER_SIZE, dataIn, (view, at) => {
          this.io(() => this.backend.write(view, off + at));
        });
        return 0;
      }
      case VIRTIO_BLK_T_FLUSH:
        if (!this.readonly) this.io(() => this.backend.flush());
        return 0;
      case VIRTIO_BLK_T_GET_ID:
        return chain.write(this.ident.subarray(0, Math.min(VIRTIO_BLK_ID_BYTES, dataCap)), 0);
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES:
        this.discardOrZero(chain, type, dataIn);
        return 0;
      default:
        throw new RequestStatus(VIRTIO_BLK_S_UNSUPP);
    }
  }

  private checkData(what: string, len: number): void {
    if (len % VIRTIO_BLK_SECTOR !== 0) {
      throw new RequestStatus(VIRTIO_BLK_S_IOERR, `${what} of ${len} bytes is not a multiple of ${VIRTIO_BLK_SECTOR}`);
    }
  }

  /**
   * Byte offset of the sector (hi * 2^32 + lo) when [sector*512, +len) lies
   * within the capacity; IOERR otherwise. In plain numbers: the capacity is
   * below 2^53 bytes, so a sector that could be in range has hi < 2^12, and
   * then sector * 512 and capacity - len are exact.
   */
  private checkRange(what: string, lo: number, hi: number, len: number): number {
    const start = (hi * TWO_32 + lo) * VIRTIO_BLK_SECTOR;
    if (hi >= 0x1000 || start > this.capacityBytes - len) {
      const sector = (BigInt(hi) << 32n) | BigInt(lo);
      throw new RequestStatus(VIRTIO_BLK_S_IOERR,
        `${what} of ${len} bytes at sector ${sector} beyond the capacity of ${this.capacitySectors} sectors`);
    }
    return start;
  }

  /** Run a backend call; any failure becomes IOERR. */
  private io(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      throw hostIoError(e);
    }
  }

  /**
   * Walk bytes [start, start+len) of a buffer list as live views of guest
   * memory, calling fn(view, position relative to start).
   */
  private forEachPiece(bufs: readonly GuestBuffer[], start: number, len: number,
    fn: (view: Uint8Array, at: number) => void): void {
    const mem = this.mem;
    if (!mem) throw new VirtqueueError('EVQ_NOT_READY', 'virtio-blk: request without guest memory');
    let skip = start, done = 0;
    for (const b of bufs) {
      if (done >= len) break;
      if (skip >= b.len) { skip -= b.len; continue; }
      const k = Math.min(b.len - skip, len - done);
      if (k > 0) fn(mem.slice(b.gpa + skip, k), done);
      done += k;
      skip = 0;
    }
  }

  private discardOrZero(chain: DescriptorChain, type: number, dataIn: number): void {
    const discard = type === VIRTIO_BLK_T_DISCARD;
    const what = discard ? 'discard' : 'write-zeroes';
    if (this.readonly) throw new RequestStatus(VIRTIO_BLK_S_IOERR, `${what} on a read-only disk`);
    const feature = discard ? VIRTIO_BLK_F_DISCARD : VIRTIO_BLK_F_WRITE_ZEROES;
    if (!hasFeature(this.features, feature) || !hasFeature(this.negotiated, feature)) {
      throw new RequestStatus(VIRTIO_BLK_S_UNSUPP, `${what} not negotiated`);
    }
    const maxSeg = discard ? VIRTIO_BLK_MAX_DISCARD_SEG : VIRTIO_BLK_MAX_WRITE_ZEROES_SEG;
    const maxSectors = discard ? VIRTIO_BLK_MAX_DISCARD_SECTORS : VIRTIO_BLK_MAX_WRITE_ZEROES_SECTORS;
    if (dataIn === 0 || dataIn % VIRTIO_BLK_SEGMENT_SIZE !== 0) {
      throw new RequestStatus(VIRTIO_BLK_S_IOERR, `${what} with ${dataIn} bytes of segments`);
    }
    const n = dataIn / VIRTIO_BLK_SEGMENT_SIZE;
    if (n > maxSeg) throw new RequestStatus(VIRTIO_BLK_S_IOERR, `${what} of ${n} segments (max ${maxSeg})`);
    const raw = chain.readAt(VIRTIO_BLK_HEADER_SIZE, dataIn);
    raw.copy(this.segScratch);
    const segs: { off: number; len: number; unmap: boolean }[] = [];
    // Validate every segment before touching the disk.
    for (let i = 0; i < n; i++) {
      const p = i * VIRTIO_BLK_SEGMENT_SIZE;
      const sectorLo = this.segScratch.readUInt32LE(p), sectorHi = this.segScratch.readUInt32LE(p + 4);
      const num = this.segScratch.readUInt32LE(p + 8);
      const flags = this.segScratch.readUInt32LE(p + 12);
      if (discard ? flags !== 0 : (flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0) {
        throw new RequestStatus(VIRTIO_BLK_S_UNSUPP, `${what} segment flags 0x${flags.toString(16)}`);
      }
      if (num > maxSectors) throw new RequestStatus(VIRTIO_BLK_S_IOERR, `${what} of ${num} sectors (max ${maxSectors})`);
      const len = num * VIRTIO_BLK_SECTOR;
      const off = this.checkRange(what, sectorLo, sectorHi, len);
      segs.push({ off, len, unmap: (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0 });
    }
    for (const s of segs) {
      if (discard) this.io(() => { this.backend.discard(s.off, s.len); });
      else this.io(() => this.backend.writeZeroes(s.off, s.len, s.unmap));
    }
  }
}

/** A backend failure, as the IOERR the guest gets. */
function hostIoError(e: unknown): RequestStatus {
  return new RequestStatus(VIRTIO_BLK_S_IOERR, `host I/O error: ${e instanceof Error ? e.message : String(e)}`);
}

const TWO_32 = 0x1_0000_0000;

function checkSectorSize(what: string, n: number): void {
  if (!isPow2(n) || n < VIRTIO_BLK_SECTOR || n > 65536) {
    throw new UserError(`virtio-blk: ${what} ${n} is not a power of two between 512 and 65536`);
  }
}
