/**
 * The NVM command set on one namespace: Read, Write, Flush, Write Zeroes
 * and Dataset Management (deallocate), over a devices/block backend. Every
 * field the guest controls is checked here: the NSID, the LBA range
 * against the namespace, the transfer against MDTS, the data pointers
 * (prp.ts). Host failures become media or internal error statuses.
 *
 * Data moves with one preadv/pwritev per command straight into or out of
 * the guest's pages when the backend and the memory allow, else page by
 * page. Nothing is allocated per command.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import { IoVecs } from '../../memory/iovec.js';
import { BlockIoError, type BlockBackend } from '../block/backend.js';
import { DNR, IO, MDTS, PAGE, SC } from './constants.js';
import { PrpWalk } from './prp.js';

export interface Namespace {
  backend: BlockBackend;
  /** LBA size in bytes: 512 or 4096 */
  sectorSize: number;
  readonly: boolean;
  /** Dataset Management / deallocate offered */
  dsm: boolean;
}

/** Counters the SMART log reports: commands and 512-byte units. */
export const enum Stat { READS, WRITES, READ_UNITS, WRITE_UNITS, COUNT }

const MAX_BYTES = PAGE << MDTS;
const DSM_RANGES = 256;

export class IoCommands {
  private readonly prp = new PrpWalk();
  private readonly iov = new IoVecs((1 << MDTS) + 1);
  private readonly ranges = new Uint8Array(16 * DSM_RANGES);
  private readonly rdv = new DataView(this.ranges.buffer);
  readonly lbas: number;

  /** `stats` (Stat.COUNT numbers) may be shared memory another thread reads. */
  constructor(private readonly mem: GuestMemory, readonly ns: Namespace, readonly stats: Float64Array) {
    this.lbas = Math.floor(ns.backend.size / ns.sectorSize);
  }

  /** Execute the command in `sqe` (its 64 bytes); returns the status field. */
  execute(sqe: DataView): number {
    const opcode = sqe.getUint8(0);
    const nsid = sqe.getUint32(4, true);
    if (opcode === IO.FLUSH) {
      if (nsid !== 1 && nsid !== 0xffffffff) return SC.INVALID_NAMESPACE | DNR;
      return this.flush(SC.INTERNAL);
    }
    if (nsid !== 1) return SC.INVALID_NAMESPACE | DNR;
    switch (opcode) {
      case IO.READ: return this.readWrite(sqe, false);
      case IO.WRITE: return this.readWrite(sqe, true);
      case IO.WRITE_ZEROES: return this.writeZeroes(sqe);
      case IO.DSM: return this.ns.dsm ? this.dsm(sqe) : SC.INVALID_OPCODE | DNR;
      default: return SC.INVALID_OPCODE | DNR;
    }
  }

  /** The byte range of SLBA (CDW10-11) and NLB (CDW12, 0's based), or a status (negative). */
  private range(sqe: DataView): number {
    const hi = sqe.getUint32(44, true);
    const slba = hi * 0x1_0000_0000 + sqe.getUint32(40, true);
    const nlb = (sqe.getUint32(48, true) & 0xffff) + 1;
    if (hi >= 0x200000 || slba + nlb > this.lbas) return -1;
    this.nlb = nlb;
    return slba * this.ns.sectorSize;
  }
  private nlb = 0;

  private readWrite(sqe: DataView, write: boolean): number {
    const off = this.range(sqe);
    if (off < 0) return SC.LBA_OUT_OF_RANGE | DNR;
    const len = this.nlb * this.ns.sectorSize;
    if (len > MAX_BYTES) return SC.INVALID_FIELD | DNR;
    if (write && this.ns.readonly) return SC.NS_WRITE_PROTECTED | DNR;
    const st = this.prp.walk(this.mem, sqe.getUint32(24, true), sqe.getUint32(28, true), sqe.getUint32(32, true), sqe.getUint32(36, true), len);
    if (st !== SC.SUCCESS) return st | DNR;
    try {
      this.transfer(write, off, len);
    } catch (e) {
      return failed(e, write ? SC.WRITE_FAULT : SC.UNRECOVERED_READ);
    }
    const s = this.stats;
    s[write ? Stat.WRITES : Stat.READS]! += 1;
    s[write ? Stat.WRITE_UNITS : Stat.READ_UNITS]! += len / 512;
    // FUA: this write reaches stable storage before it completes
    if (write && (sqe.getUint32(48, true) & (1 << 30))) return this.flush(SC.WRITE_FAULT);
    return SC.SUCCESS;
  }

  private transfer(write: boolean, off: number, len: number): void {
    const b = this.ns.backend, p = this.prp, mem = this.mem;
    if (p.native && (write ? b.writev : b.readv) && this.iov.fill(p.segs, 0, p.count, 0, len)) {
      if (write) b.writev!(this.iov, off);
      else {
        b.readv!(this.iov, off);
        // the data went into guest RAM past GuestMemory (mem.slice below marks its own):
        // a live migration must send these pages again
        mem.markDirtyPieces(p.segs, 0, p.count);
      }
    } else {
      let at = off;
      for (let i = 0; i < p.count; i++) {
        const page = mem.slice(p.segs[3 * i]!, p.segs[3 * i + 1]!);
        if (write) b.write(page, at); else b.read(page, at);
        at += page.length;
      }
    }
  }

  private writeZeroes(sqe: DataView): number {
    const off = this.range(sqe);
    if (off < 0) return SC.LBA_OUT_OF_RANGE | DNR;
    if (this.ns.readonly) return SC.NS_WRITE_PROTECTED | DNR;
    const deac = this.ns.dsm && (sqe.getUint32(48, true) & (1 << 25)) !== 0;
    try {
      this.ns.backend.writeZeroes(off, this.nlb * this.ns.sectorSize, deac);
      return SC.SUCCESS;
    } catch (e) {
      return failed(e, SC.WRITE_FAULT);
    }
  }

  private dsm(sqe: DataView): number {
    const nr = (sqe.getUint32(40, true) & 0xff) + 1;
    const deallocate = (sqe.getUint32(44, true) & 4) !== 0;
    if (!deallocate) return SC.SUCCESS; // attributes only: hints we may ignore
    if (this.ns.readonly) return SC.NS_WRITE_PROTECTED | DNR;
    const st = this.prp.walk(this.mem, sqe.getUint32(24, true), sqe.getUint32(28, true), sqe.getUint32(32, true), sqe.getUint32(36, true), nr * 16);
    if (st !== SC.SUCCESS) return st | DNR;
    const buf = this.ranges.subarray(0, nr * 16);
    this.prp.copy(this.mem, buf, false);
    const ss = this.ns.sectorSize, dv = this.rdv;
    for (let i = 0; i < nr; i++) { // all checked before any is dropped
      const n = dv.getUint32(16 * i + 4, true), hi = dv.getUint32(16 * i + 12, true);
      if (hi >= 0x200000 || hi * 0x1_0000_0000 + dv.getUint32(16 * i + 8, true) + n > this.lbas) return SC.LBA_OUT_OF_RANGE | DNR;
    }
    try {
      for (let i = 0; i < nr; i++) {
        const n = dv.getUint32(16 * i + 4, true);
        const slba = dv.getUint32(16 * i + 12, true) * 0x1_0000_0000 + dv.getUint32(16 * i + 8, true);
        if (n > 0) this.ns.backend.discard(slba * ss, n * ss);
      }
    } catch (e) {
      return failed(e, SC.INTERNAL);
    }
    return SC.SUCCESS;
  }

  private flush(onError: number): number {
    try {
      this.ns.backend.flush();
      return SC.SUCCESS;
    } catch (e) {
      return failed(e, onError);
    }
  }
}

/** A failed command's status: a host I/O error gives `onError`, a guest page gone bad a data transfer error. */
function failed(e: unknown, onError: number): number {
  return (e instanceof BlockIoError ? onError : SC.DATA_TRANSFER) | DNR;
}
