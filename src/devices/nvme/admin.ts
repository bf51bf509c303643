/**
 * The admin command set (NVMe 1.4, 5): Identify, Get Log Page, Get/Set
 * Features, Create/Delete I/O SQ and CQ (through the I/O queues' own
 * checks), Abort, Asynchronous Event Request (held: the controller
 * reports no events, the requests wait until a reset), and Doorbell Buffer
 * Config. Payloads go through the same PRP walk as I/O.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import { ADMIN, AER_LIMIT, DNR, FEAT, MDTS, PAGE, SC } from './constants.js';
import {
  activeNamespaces, firmwareLog, identifyController, identifyNamespace, namespaceDescriptors, smartLog, type ControllerIdentity,
} from './identify.js';
import type { IoQueueControl } from './io-queues.js';
import { PrpWalk } from './prp.js';
import { addr64 } from './queues.js';

/** A command's outcome: its status field and completion DW0; `held` completes later (AER). */
export interface AdminResult { status: number; result: number; held?: boolean }

/** Feature values the driver may set, with their defaults (saved in snapshots). */
export const FEATURE_DEFAULTS: Record<number, number> = {
  [FEAT.ARBITRATION]: 0,
  [FEAT.POWER_MGMT]: 0,
  [FEAT.TEMP_THRESHOLD]: 0x157,
  [FEAT.ERROR_RECOVERY]: 0,
  [FEAT.VOLATILE_WC]: 1,
  [FEAT.IRQ_COALESCE]: 0,
  [FEAT.WRITE_ATOMICITY]: 0,
  [FEAT.ASYNC_EVENT]: 0,
};

export interface AdminContext {
  mem: GuestMemory;
  queues: IoQueueControl;
  identity: ControllerIdentity;
  stats: Float64Array;
  maxq: number;
  vectors: number;
  /** current feature values (FEATURE_DEFAULTS' keys) */
  features: Map<number, number>;
  /** per-vector Interrupt Vector Configuration (coalescing disable bit) */
  irqConfig: Uint8Array;
  /** CIDs of the held Asynchronous Event Requests */
  aers: number[];
  /** the shadow doorbells were configured */
  onDbbuf(): void;
}

const ok = (result = 0): AdminResult => ({ status: SC.SUCCESS, result });
const err = (status: number): AdminResult => ({ status: status | DNR, result: 0 });

export class AdminCommands {
  private readonly prp = new PrpWalk();

  constructor(private readonly c: AdminContext) {}

  execute(sqe: DataView): AdminResult {
    const cdw10 = sqe.getUint32(40, true), cdw11 = sqe.getUint32(44, true);
    const prp1 = addr64(sqe.getUint32(24, true), sqe.getUint32(28, true));
    const prp2 = addr64(sqe.getUint32(32, true), sqe.getUint32(36, true));
    const q = this.c.queues;
    switch (sqe.getUint8(0)) {
      case ADMIN.IDENTIFY: return this.identify(sqe, cdw10 & 0xff, cdw11 >>> 24);
      case ADMIN.GET_LOG_PAGE: return this.logPage(sqe, cdw10, cdw11);
      case ADMIN.SET_FEATURES: return this.setFeature(cdw10, cdw11);
      case ADMIN.GET_FEATURES: return this.getFeature(cdw10, cdw11);
      case ADMIN.CREATE_CQ:
        if (!(cdw11 & 1)) return err(SC.INVALID_FIELD); // CAP.CQR: physically contiguous only
        if (prp1 < 0) return err(SC.INVALID_FIELD);
        return { status: q.createCq(cdw10 & 0xffff, prp1, (cdw10 >>> 16) + 1, cdw11 >>> 16, (cdw11 & 2) !== 0), result: 0 };
      case ADMIN.CREATE_SQ:
        if (!(cdw11 & 1)) return err(SC.INVALID_FIELD);
        if (prp1 < 0) return err(SC.INVALID_FIELD);
        return { status: q.createSq(cdw10 & 0xffff, prp1, (cdw10 >>> 16) + 1, cdw11 >>> 16), result: 0 };
      case ADMIN.DELETE_SQ: return { status: q.deleteSq(cdw10 & 0xffff), result: 0 };
      case ADMIN.DELETE_CQ: return { status: q.deleteCq(cdw10 & 0xffff), result: 0 };
      case ADMIN.ABORT: return ok(1); // commands run to completion once taken: none aborted
      case ADMIN.ASYNC_EVENT:
        if (this.c.aers.length >= AER_LIMIT) return err(SC.AER_LIMIT);
        this.c.aers.push(sqe.getUint16(2, true));
        return { status: SC.SUCCESS, result: 0, held: true };
      case ADMIN.DBBUF_CONFIG: {
        if (prp1 < 0 || prp2 < 0) return err(SC.INVALID_FIELD);
        const status = q.setDbbuf(prp1, prp2);
        if (status === SC.SUCCESS) this.c.onDbbuf();
        return { status, result: 0 };
      }
      default: return err(SC.INVALID_OPCODE);
    }
  }

  /** Copy `data` (zero-padded to `len`) to the command's data pointer. */
  private give(sqe: DataView, data: Uint8Array, len = data.length): AdminResult {
    const st = this.prp.walk(this.c.mem, sqe.getUint32(24, true), sqe.getUint32(28, true), sqe.getUint32(32, true), sqe.getUint32(36, true), len);
    if (st !== SC.SUCCESS) return err(st);
    let out = data;
    if (data.length < len) { out = new Uint8Array(len); out.set(data); }
    this.prp.copy(this.c.mem, out.subarray(0, len), true);
    return ok();
  }

  private identify(sqe: DataView, cns: number, csi: number): AdminResult {
    const nsid = sqe.getUint32(4, true);
    switch (cns) {
      // the NVM command set's own controller and namespace structures: all zero (no limits, no extended formats)
      case 5: if (csi !== 0) return err(SC.INVALID_FIELD); return nsid === 1 ? this.give(sqe, new Uint8Array(4096)) : err(SC.INVALID_NAMESPACE);
      case 6: return csi === 0 ? this.give(sqe, new Uint8Array(4096)) : err(SC.INVALID_FIELD);
      case 0: return nsid === 1 ? this.give(sqe, identifyNamespace(this.c.identity)) : err(SC.INVALID_NAMESPACE);
      case 1: return this.give(sqe, identifyController(this.c.identity));
      case 2: return nsid >= 0xfffffffe ? err(SC.INVALID_NAMESPACE) : this.give(sqe, activeNamespaces(nsid));
      case 3: return nsid === 1 ? this.give(sqe, namespaceDescriptors(this.c.identity)) : err(SC.INVALID_NAMESPACE);
      default: return err(SC.INVALID_FIELD);
    }
  }

  private logPage(sqe: DataView, cdw10: number, cdw11: number): AdminResult {
    const dwords = ((cdw10 >>> 16) | ((cdw11 & 0xffff) << 16)) >>> 0;
    const len = (dwords + 1) * 4;
    const offLo = sqe.getUint32(48, true), offHi = sqe.getUint32(52, true);
    if (len > PAGE << MDTS || offLo & 3) return err(SC.INVALID_FIELD);
    let page: Uint8Array;
    switch (cdw10 & 0xff) {
      case 0x01: page = new Uint8Array(64); break; // error information: one empty entry
      case 0x02: page = smartLog(this.c.stats); break;
      case 0x03: page = firmwareLog(); break;
      default: return err(SC.INVALID_LOG_PAGE);
    }
    const from = offHi !== 0 ? page.length : Math.min(offLo, page.length);
    return this.give(sqe, page.subarray(from), len);
  }

  private setFeature(cdw10: number, cdw11: number): AdminResult {
    if (cdw10 & 0x80000000) return err(SC.FEATURE_NOT_SAVEABLE);
    const fid = cdw10 & 0xff;
    switch (fid) {
      case FEAT.NUM_QUEUES: {
        // asking for 0xffff of either is invalid; the answer is what there is
        if ((cdw11 & 0xffff) === 0xffff || cdw11 >>> 16 === 0xffff) return err(SC.INVALID_FIELD);
        return ok(this.numQueues());
      }
      case FEAT.IRQ_CONFIG: {
        const iv = cdw11 & 0xffff;
        if (iv >= this.c.vectors) return err(SC.INVALID_FIELD);
        this.c.irqConfig[iv] = (cdw11 >>> 16) & 1;
        return ok();
      }
      default:
        if (!(fid in FEATURE_DEFAULTS)) return err(SC.INVALID_FIELD);
        this.c.features.set(fid, fid === FEAT.VOLATILE_WC ? cdw11 & 1 : cdw11 >>> 0);
        return ok();
    }
  }

  private getFeature(cdw10: number, cdw11: number): AdminResult {
    const fid = cdw10 & 0xff, sel = (cdw10 >>> 8) & 7;
    if (sel === 3) return fid === FEAT.NUM_QUEUES || fid === FEAT.IRQ_CONFIG || fid in FEATURE_DEFAULTS ? ok(0x4) : err(SC.INVALID_FIELD); // changeable, not saveable
    if (sel > 3) return err(SC.INVALID_FIELD);
    switch (fid) {
      case FEAT.NUM_QUEUES: return ok(this.numQueues());
      case FEAT.IRQ_CONFIG: {
        const iv = cdw11 & 0xffff;
        if (iv >= this.c.vectors) return err(SC.INVALID_FIELD);
        return ok(iv | ((sel === 1 ? 0 : this.c.irqConfig[iv]!) << 16));
      }
      default:
        if (!(fid in FEATURE_DEFAULTS)) return err(SC.INVALID_FIELD);
        return ok(sel === 1 ? FEATURE_DEFAULTS[fid]! : this.c.features.get(fid) ?? FEATURE_DEFAULTS[fid]!);
    }
  }

  private numQueues(): number { return ((this.c.maxq - 1) | ((this.c.maxq - 1) << 16)) >>> 0; }
}
