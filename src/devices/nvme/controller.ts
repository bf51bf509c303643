/**
 * The NVMe controller's registers (NVMe 1.4, 3.1) and admin queue: CAP,
 * VS, CC/CSTS (enable, disable, shutdown), AQA/ASQ/ACQ, the doorbells, and
 * the admin commands (admin.ts) served on this thread. I/O doorbells go to
 * the I/O queues (io-queues.ts), here or on the I/O thread.
 *
 * A guest that enables the controller with admin queues outside RAM, a
 * page size or command set it does not offer, or rings a doorbell past a
 * queue's end gets CSTS.CFS: nothing more is served until a reset.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { StateReader, StateWriter } from '../../snapshot/state.js';
import { AdminCommands, FEATURE_DEFAULTS } from './admin.js';
import {
  AER_LIMIT, CC_EN, CQE_SIZE, CSTS_CFS, CSTS_RDY, DOORBELLS, NVME_VERSION, REG, SHST_COMPLETE, SQE_SIZE,
} from './constants.js';
import type { ControllerIdentity } from './identify.js';
import type { IoQueueControl, IoQueuesState } from './io-queues.js';
import { CompletionQueue, SubmissionQueue, ringFits } from './queues.js';

/** Timeout the driver waits for CSTS.RDY, in 500 ms units. */
const CAP_TO = 20;
/** CC bits the driver may set: EN, CSS, MPS, AMS, SHN, IOSQES, IOCQES */
const CC_MASK = 0x00fffff1;

/** The I/O queues as the controller drives them, wherever they run. */
export interface IoQueueDriver extends IoQueueControl {
  /** An I/O queue's doorbell written through MMIO (index 2*qid or 2*qid+1). */
  doorbell(idx: number, value: number): unknown;
  /** The I/O queues found the controller fatal. */
  readonly fatal: boolean;
}

export interface ControllerOptions {
  mem: GuestMemory;
  queues: IoQueueDriver;
  identity: ControllerIdentity;
  stats: Float64Array;
  maxq: number;
  maxEntries: number;
  vectors: number;
  /** raise an MSI-X vector */
  signal(vector: number): void;
  /** shutdown: make written data durable */
  flush(): void;
  /** the shadow doorbells were configured (true) or dropped by a reset (false) */
  onDbbuf(on: boolean): void;
  guestError(msg: string): void;
}

export class NvmeController {
  private cc = 0;
  private ready = false;
  private cfs = false;
  private shst = 0;
  private aqa = 0;
  private asq = 0;
  private acq = 0;
  private intms = 0;
  private asqQ: SubmissionQueue | undefined;
  private acqQ: CompletionQueue | undefined;
  private readonly aers: number[] = [];
  private readonly features = new Map<number, number>();
  private readonly irqConfig: Uint8Array;
  private readonly admin: AdminCommands;
  private readonly sqe = new Uint8Array(SQE_SIZE);
  private readonly sqv = new DataView(this.sqe.buffer);
  /** I/O queue doorbell writes that reached this thread as MMIO exits (none once they are ioeventfds) */
  ioDoorbellExits = 0;

  constructor(private readonly o: ControllerOptions) {
    this.irqConfig = new Uint8Array(o.vectors);
    this.admin = new AdminCommands({
      mem: o.mem, queues: o.queues, identity: o.identity, stats: o.stats, maxq: o.maxq, vectors: o.vectors,
      features: this.features, irqConfig: this.irqConfig, aers: this.aers, onDbbuf: () => o.onDbbuf(true),
    });
  }

  get csts(): number {
    return (this.ready ? CSTS_RDY : 0) | (this.cfs || this.o.queues.fatal ? CSTS_CFS : 0) | this.shst;
  }

  private capLo(): number { return ((this.o.maxEntries - 1) | (1 << 16) | (CAP_TO << 24)) >>> 0; }
  /** CSS: the NVM command set; DSTRD, MPSMIN and MPSMAX 0 (4 KiB pages) */
  private capHi(): number { return 1 << 5; }

  read(off: number, size: number): number {
    const word = off & ~3;
    let v: number;
    switch (word) {
      case REG.CAP: v = this.capLo(); break;
      case REG.CAP + 4: v = this.capHi(); break;
      case REG.VS: v = NVME_VERSION; break;
      case REG.INTMS: case REG.INTMC: v = this.intms; break;
      case REG.CC: v = this.cc; break;
      case REG.CSTS: v = this.csts; break;
      case REG.AQA: v = this.aqa; break;
      case REG.ASQ: v = this.asq % 0x1_0000_0000; break;
      case REG.ASQ + 4: v = Math.floor(this.asq / 0x1_0000_0000); break;
      case REG.ACQ: v = this.acq % 0x1_0000_0000; break;
      case REG.ACQ + 4: v = Math.floor(this.acq / 0x1_0000_0000); break;
      default: v = 0; // CMBLOC, CMBSZ, doorbells (write-only) and reserved
    }
    if (size === 4) return v >>> 0;
    return (v >>> ((off & 3) * 8)) & (size === 2 ? 0xffff : 0xff);
  }

  write(off: number, size: number, value: number): void {
    if (off >= DOORBELLS) {
      if (size === 4 && !(off & 3)) this.doorbell((off - DOORBELLS) >> 2, value >>> 0);
      return;
    }
    if (size !== 4 || off & 3) return; // registers are written as dwords
    const v = value >>> 0;
    switch (off) {
      case REG.INTMS: this.intms = (this.intms | v) >>> 0; break;
      case REG.INTMC: this.intms = (this.intms & ~v) >>> 0; break;
      case REG.CC: this.writeCc(v); break;
      case REG.AQA: if (!this.ready) this.aqa = v & 0x0fff0fff; break;
      case REG.ASQ: if (!this.ready) this.asq = this.asq - (this.asq % 0x1_0000_0000) + ((v & 0xfffff000) >>> 0); break;
      case REG.ASQ + 4: if (!this.ready) this.asq = (v & 0x1fffff) * 0x1_0000_0000 + (this.asq % 0x1_0000_0000); break;
      case REG.ACQ: if (!this.ready) this.acq = this.acq - (this.acq % 0x1_0000_0000) + ((v & 0xfffff000) >>> 0); break;
      case REG.ACQ + 4: if (!this.ready) this.acq = (v & 0x1fffff) * 0x1_0000_0000 + (this.acq % 0x1_0000_0000); break;
      default: break; // read-only or reserved; NSSR is not offered
    }
  }

  private writeCc(v: number): void {
    const was = this.cc;
    this.cc = v & CC_MASK;
    if ((was & CC_EN) && !(v & CC_EN)) this.resetController();
    else if (!(was & CC_EN) && (v & CC_EN)) this.enable();
    if (((v >>> 14) & 3) !== 0 && ((was >>> 14) & 3) === 0) { // shutdown notification
      try { this.o.flush(); } catch (e) { this.o.guestError(`shutdown flush: ${(e as Error).message}`); }
      this.shst = SHST_COMPLETE;
    }
  }

  private enable(): void {
    const mem = this.o.mem;
    const sqs = (this.aqa & 0xfff) + 1, cqs = ((this.aqa >>> 16) & 0xfff) + 1;
    const css = (this.cc >>> 4) & 7, mps = (this.cc >>> 7) & 0xf;
    if (css !== 0 || mps !== 0 || sqs < 2 || cqs < 2 || !ringFits(mem, this.asq, sqs, SQE_SIZE) || !ringFits(mem, this.acq, cqs, CQE_SIZE)) {
      this.o.guestError(`enabled with an unusable admin queue or page size (AQA 0x${this.aqa.toString(16)}, CC 0x${this.cc.toString(16)})`);
      this.cfs = true;
      return;
    }
    this.acqQ = new CompletionQueue(0, this.acq, cqs, 0, true);
    this.asqQ = new SubmissionQueue(0, this.asq, sqs, this.acqQ);
    this.shst = 0;
    this.ready = true;
  }

  /** Controller reset (CC.EN 1 to 0, or PCI reset): every queue and held request goes, features return to defaults. */
  resetController(): void {
    this.ready = false;
    this.cfs = false;
    this.asqQ = undefined;
    this.acqQ = undefined;
    this.aers.length = 0;
    this.features.clear();
    this.irqConfig.fill(0);
    this.o.queues.reset();
    this.o.onDbbuf(false);
  }

  /** Full reset (PCI function reset): registers too. */
  reset(): void {
    this.resetController();
    this.cc = 0; this.shst = 0; this.aqa = 0; this.asq = 0; this.acq = 0; this.intms = 0;
  }

  private doorbell(idx: number, value: number): void {
    if (!this.ready || this.cfs || this.o.queues.fatal) return;
    if (idx >= 2) { this.ioDoorbellExits++; this.o.queues.doorbell(idx, value); return; }
    const q = idx === 0 ? this.asqQ! : this.acqQ!;
    if (value >= q.size) {
      this.o.guestError(`admin ${idx === 0 ? 'submission' : 'completion'} queue doorbell ${value} past the queue's ${q.size} entries`);
      this.cfs = true;
      return;
    }
    if (idx === 0) this.asqQ!.tail = value; else this.acqQ!.head = value;
    this.serveAdmin();
  }

  private serveAdmin(): void {
    const sq = this.asqQ!, cq = this.acqQ!, mem = this.o.mem;
    for (let n = 0; sq.head !== sq.tail && !cq.full() && n < sq.size && this.ready; n++) {
      sq.fetch(mem, this.sqe);
      const r = this.admin.execute(this.sqv);
      if (!r.held && this.acqQ === cq) cq.post(mem, r.result, 0, sq.head, this.sqv.getUint16(2, true), r.status);
    }
    if (cq.pending) { cq.pending = false; this.o.signal(0); }
  }

  // ---- save / restore ----

  saveState(w: StateWriter, queues: IoQueuesState): void {
    w.u32('cc', this.cc).bool('ready', this.ready).bool('cfs', this.cfs).u8('shst', this.shst).u32('aqa', this.aqa)
      .u64('asq', this.asq).u64('acq', this.acq).u32('intms', this.intms);
    const sq = this.asqQ, cq = this.acqQ;
    w.u16('asqHead', sq?.head ?? 0).u16('asqTail', sq?.tail ?? 0).u16('acqHead', cq?.head ?? 0).u16('acqTail', cq?.tail ?? 0).u8('acqPhase', cq?.phase ?? 1);
    w.b64('aers', Uint8Array.from(this.aers.flatMap((c) => [c & 0xff, c >> 8])));
    w.arr('features', [...this.features], (fw, [fid, v]) => { fw.u8('fid', fid).u32('value', v); });
    w.b64('irqConfig', this.irqConfig);
    w.obj_('io', (iw) => {
      iw.u64('dbs', queues.dbs).u64('eis', queues.eis).bool('fatal', queues.fatal);
      iw.arr('cqs', queues.cqs, (qw, c) => {
        qw.u16('qid', c.qid).u64('base', c.base).u16('size', c.size - 1).u16('vector', c.vector).bool('ien', c.ien)
          .u16('head', c.head).u16('tail', c.tail).u8('phase', c.phase);
      });
      iw.arr('sqs', queues.sqs, (qw, s) => {
        qw.u16('qid', s.qid).u64('base', s.base).u16('size', s.size - 1).u16('cqid', s.cqid).u16('head', s.head).u16('tail', s.tail);
      });
    });
  }

  /** Read and check everything; returns the I/O queues' state for the caller to install, after the registers. */
  restoreState(r: StateReader): IoQueuesState {
    const cc = r.u32('cc') & CC_MASK, ready = r.bool('ready'), cfs = r.bool('cfs'), shst = r.u8('shst', SHST_COMPLETE);
    if (shst & 3) r.fail('shst', 'not a CSTS.SHST value');
    const aqa = r.u32('aqa') & 0x0fff0fff, asq = r.safe('asq'), acq = r.safe('acq'), intms = r.u32('intms');
    const sqHead = r.u16('asqHead'), sqTail = r.u16('asqTail'), cqHead = r.u16('acqHead'), cqTail = r.u16('acqTail'), phase = r.u8('acqPhase', 1);
    const aerBytes = r.b64('aers', [0, 2 * AER_LIMIT]);
    if (aerBytes.length % 2) r.fail('aers', 'odd length');
    const features = r.arr('features', 32).map((f) => [f.u8('fid'), f.u32('value')] as const);
    for (const [fid] of features) if (!(fid in FEATURE_DEFAULTS)) r.fail('features', `feature ${fid} is not one the controller has`);
    const irq = r.b64('irqConfig', this.irqConfig.length);
    const io = r.obj('io');
    const maxq = this.o.maxq;
    const queues: IoQueuesState = {
      dbs: io.safe('dbs'), eis: io.safe('eis'), fatal: io.bool('fatal'),
      cqs: io.arr('cqs', maxq).map((q) => ({
        qid: q.u16('qid'), base: q.safe('base'), size: q.u16('size') + 1, vector: q.u16('vector'), ien: q.bool('ien'),
        head: q.u16('head'), tail: q.u16('tail'), phase: q.u8('phase', 1),
      })),
      sqs: io.arr('sqs', maxq).map((q) => ({
        qid: q.u16('qid'), base: q.safe('base'), size: q.u16('size') + 1, cqid: q.u16('cqid'), head: q.u16('head'), tail: q.u16('tail'),
      })),
    };
    this.reset();
    this.cc = cc; this.aqa = aqa; this.asq = asq; this.acq = acq; this.intms = intms;
    if (ready) {
      this.enable();
      if (!this.ready) r.fail('ready', 'the admin queues of the snapshot are not usable');
      const sq = this.asqQ!, cq = this.acqQ!;
      if (sqHead >= sq.size || sqTail >= sq.size || cqHead >= cq.size || cqTail >= cq.size) r.fail('asqHead', 'an admin queue index is past its queue');
      sq.head = sqHead; sq.tail = sqTail; cq.head = cqHead; cq.tail = cqTail; cq.phase = phase;
    }
    this.cfs = cfs; this.shst = shst;
    for (let i = 0; i < aerBytes.length; i += 2) this.aers.push(aerBytes.readUInt16LE(i));
    for (const [fid, v] of features) this.features.set(fid, v);
    this.irqConfig.set(irq);
    return queues;
  }

  /** After a restore: go on with what the admin queue holds. */
  kick(): void {
    if (this.ready && !this.cfs) this.serveAdmin();
  }
}
