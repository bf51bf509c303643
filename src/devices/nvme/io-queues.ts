/**
 * The I/O queue pairs: the table of I/O submission and completion queues
 * the admin commands create and delete (with the checks and statuses the
 * spec names), their doorbells (MMIO values, or the shadow doorbells of
 * Doorbell Buffer Config with event indexes), and the loop that serves
 * them: fetch, execute (io.ts), post, interrupt. It runs where the I/O
 * runs: on the VM's main thread, or on the controller's I/O thread
 * (io-thread.ts), driven through the same IoQueueControl methods.
 *
 * A doorbell value past its queue's end, or a shadow doorbell that says
 * so, makes the controller fatal (CSTS.CFS): the queues stop until reset.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import { CQE_SIZE, DNR, PAGE, SC, SQE_SIZE } from './constants.js';
import type { IoCommands } from './io.js';
import { CompletionQueue, SubmissionQueue, ringFits } from './queues.js';

export interface CqState { qid: number; base: number; size: number; vector: number; ien: boolean; head: number; tail: number; phase: number }
export interface SqState { qid: number; base: number; size: number; cqid: number; head: number; tail: number }
/** The I/O queues as a snapshot holds them (structured-cloneable). */
export interface IoQueuesState { dbs: number; eis: number; fatal: boolean; cqs: CqState[]; sqs: SqState[] }

/** What the controller asks of its I/O queues, wherever they run; statuses as in a completion. */
export interface IoQueueControl {
  createCq(qid: number, base: number, size: number, vector: number, ien: boolean): number;
  createSq(qid: number, base: number, size: number, cqid: number): number;
  deleteSq(qid: number): number;
  deleteCq(qid: number): number;
  /** Doorbell Buffer Config: shadow doorbells and event indexes (page-aligned gpas). */
  setDbbuf(dbs: number, eis: number): number;
  /** Controller reset: every I/O queue goes, as do the shadow doorbells. */
  reset(): void;
  save(): IoQueuesState;
  /** Install a saved state (checked as guest input would be); throws Error naming what is wrong. */
  restore(s: IoQueuesState): void;
}

export interface IoQueueLimits {
  /** I/O queue pairs (qids 1..maxq) */
  maxq: number;
  /** entries per queue at most (CAP.MQES + 1) */
  maxEntries: number;
  /** MSI-X vectors */
  vectors: number;
}

/** What the log says when the queues make the controller fatal. */
export const FATAL_DOORBELL = 'a doorbell past its queue: controller fatal';

/** Atomics on shared memory are full barriers (lock-prefixed on x86): between an event index store and the shadow doorbell's re-read. */
const fenceWord = new Int32Array(new SharedArrayBuffer(4));
const fence = (): void => { Atomics.add(fenceWord, 0, 0); };
/** Rounds over the queues in one serve() call (each takes up to a queue's worth of commands from every queue). */
const PASSES = 8;

export class IoQueues implements IoQueueControl {
  private readonly sqs: (SubmissionQueue | undefined)[];
  private readonly cqs: (CompletionQueue | undefined)[];
  private dbs = 0;
  private eis = 0;
  fatal = false;
  private readonly sqe = new Uint8Array(SQE_SIZE);
  private readonly sqv = new DataView(this.sqe.buffer);

  /** `signal(vector)` raises an MSI-X vector; `onFatal` is told once the controller is fatal. */
  constructor(private readonly mem: GuestMemory, private readonly io: IoCommands, private readonly limits: IoQueueLimits,
    private readonly signal: (vector: number) => void, private readonly onFatal: () => void) {
    this.sqs = new Array<SubmissionQueue | undefined>(limits.maxq + 1).fill(undefined);
    this.cqs = new Array<CompletionQueue | undefined>(limits.maxq + 1).fill(undefined);
  }

  private validQid(qid: number): boolean { return Number.isInteger(qid) && qid >= 1 && qid <= this.limits.maxq; }

  createCq(qid: number, base: number, size: number, vector: number, ien: boolean): number {
    if (!this.validQid(qid) || this.cqs[qid]) return SC.INVALID_QUEUE_ID | DNR;
    if (!Number.isInteger(size) || size < 2 || size > this.limits.maxEntries) return SC.MAX_QUEUE_SIZE | DNR;
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.limits.vectors) return SC.INVALID_VECTOR | DNR;
    if (base % PAGE) return SC.PRP_OFFSET_INVALID | DNR;
    if (!ringFits(this.mem, base, size, CQE_SIZE)) return SC.INVALID_FIELD | DNR;
    this.cqs[qid] = new CompletionQueue(qid, base, size, vector, ien);
    this.initShadow(qid, 1, 0);
    return SC.SUCCESS;
  }

  createSq(qid: number, base: number, size: number, cqid: number): number {
    if (!this.validQid(qid) || this.sqs[qid]) return SC.INVALID_QUEUE_ID | DNR;
    const cq = this.validQid(cqid) ? this.cqs[cqid] : undefined;
    if (!cq) return SC.CQ_INVALID | DNR;
    if (!Number.isInteger(size) || size < 2 || size > this.limits.maxEntries) return SC.MAX_QUEUE_SIZE | DNR;
    if (base % PAGE) return SC.PRP_OFFSET_INVALID | DNR;
    if (!ringFits(this.mem, base, size, SQE_SIZE)) return SC.INVALID_FIELD | DNR;
    this.sqs[qid] = new SubmissionQueue(qid, base, size, cq);
    this.initShadow(qid, 0, 0);
    return SC.SUCCESS;
  }

  deleteSq(qid: number): number {
    if (!this.validQid(qid) || !this.sqs[qid]) return SC.INVALID_QUEUE_ID | DNR;
    this.sqs[qid] = undefined; // commands run to completion as they are taken: none is left to abort
    return SC.SUCCESS;
  }

  deleteCq(qid: number): number {
    if (!this.validQid(qid) || !this.cqs[qid]) return SC.INVALID_QUEUE_ID | DNR;
    if (this.sqs.some((sq) => sq?.cq.qid === qid)) return SC.INVALID_QUEUE_DELETION | DNR;
    this.cqs[qid] = undefined;
    return SC.SUCCESS;
  }

  setDbbuf(dbs: number, eis: number): number {
    if (dbs % PAGE || eis % PAGE) return SC.INVALID_FIELD | DNR;
    if (dbs === 0 || eis === 0 || dbs === eis || !this.mem.contains(dbs, PAGE) || !this.mem.contains(eis, PAGE)) return SC.INVALID_FIELD | DNR;
    this.dbs = dbs;
    this.eis = eis;
    // the shadows start from where the queues are
    for (let q = 1; q <= this.limits.maxq; q++) {
      const sq = this.sqs[q], cq = this.cqs[q];
      if (sq) this.initShadow(q, 0, sq.tail);
      if (cq) this.initShadow(q, 1, cq.head);
    }
    return SC.SUCCESS;
  }

  /** Shadow doorbell and event index `which` (0 SQ tail, 1 CQ head) of queue qid, when configured. */
  private initShadow(qid: number, which: number, value: number): void {
    if (this.dbs === 0) return;
    const off = 8 * qid + 4 * which;
    this.mem.writeU32(this.dbs + off, value);
    this.mem.writeU32(this.eis + off, value);
  }

  reset(): void {
    this.sqs.fill(undefined);
    this.cqs.fill(undefined);
    this.dbs = 0;
    this.eis = 0;
    this.fatal = false;
  }

  /** Stop serving: a guest error the spec leaves to the controller. */
  private fail(): void {
    if (this.fatal) return;
    this.fatal = true;
    this.onFatal();
  }

  /** A doorbell register written through MMIO: index 2*qid (SQ tail) or 2*qid+1 (CQ head), qid >= 1. Returns serve()'s answer. */
  doorbell(idx: number, value: number): boolean {
    return this.setDoorbell(idx, value) && this.serve();
  }

  /** Take a doorbell's value without serving (a save takes what was rung); false when nothing is to be served. */
  setDoorbell(idx: number, value: number): boolean {
    const qid = idx >> 1;
    if (this.fatal || !this.validQid(qid)) return false;
    if (this.dbs === 0) { // with shadow doorbells, the write only says "look"
      const q = idx & 1 ? this.cqs[qid] : this.sqs[qid];
      if (!q) return false;
      if (value >= q.size) { this.fail(); return false; }
      if (idx & 1) (q as CompletionQueue).head = value; else (q as SubmissionQueue).tail = value;
    }
    return true;
  }

  /** Read a queue's shadow doorbell; false (fatal) when it is past the queue's end. */
  private readShadow(qid: number, which: number, size: number): number {
    const v = this.mem.readU32(this.dbs + 8 * qid + 4 * which);
    if (v >= size) { this.fail(); return -1; }
    return v;
  }

  /**
   * Serve every submission queue until none has work its completion queue
   * has room for, or for at most PASSES rounds over the queues (so that a
   * guest that keeps submitting cannot keep the thread from its control
   * calls). Returns true when work may be left: call again soon.
   */
  serve(): boolean {
    const mem = this.mem, shadow = this.dbs !== 0;
    let more = true;
    for (let pass = 0; more && !this.fatal; pass++) {
      if (pass === PASSES) return true;
      more = false;
      for (let q = 1; q <= this.limits.maxq && !this.fatal; q++) {
        const sq = this.sqs[q];
        if (!sq) continue;
        const cq = sq.cq;
        if (shadow) {
          const t = this.readShadow(q, 0, sq.size);
          if (t < 0) return false;
          sq.tail = t;
        }
        let n = 0;
        while (sq.head !== sq.tail && n < sq.size) {
          if (cq.full()) {
            if (!shadow) break;
            const h = this.readShadow(cq.qid, 1, cq.size);
            if (h < 0) return false;
            cq.head = h;
            if (cq.full()) { // ask to be told when the driver makes room
              mem.writeU32(this.eis + 8 * cq.qid + 4, h);
              fence();
              const again = this.readShadow(cq.qid, 1, cq.size);
              if (again < 0) return false;
              if (again === h) break;
              cq.head = again;
            }
          }
          sq.fetch(mem, this.sqe);
          const status = this.io.execute(this.sqv);
          cq.post(mem, 0, q, sq.head, this.sqv.getUint16(2, true), status);
          n++;
        }
        if (n > 0) more = true;
        if (shadow && sq.head === sq.tail) {
          // tell the driver to ring at its next write, then look again: it may have written meanwhile
          mem.writeU32(this.eis + 8 * q, sq.tail);
          fence();
          const t = this.readShadow(q, 0, sq.size);
          if (t < 0) return false;
          if (t !== sq.tail) more = true;
        }
        this.raise(cq);
      }
    }
    return false;
  }

  private raise(cq: CompletionQueue): void {
    if (!cq.pending) return;
    cq.pending = false;
    if (cq.ien) this.signal(cq.vector);
  }

  save(): IoQueuesState {
    const cqs: CqState[] = [], sqs: SqState[] = [];
    for (const cq of this.cqs) {
      if (cq) cqs.push({ qid: cq.qid, base: cq.base, size: cq.size, vector: cq.vector, ien: cq.ien, head: cq.head, tail: cq.tail, phase: cq.phase });
    }
    for (const sq of this.sqs) {
      if (sq) sqs.push({ qid: sq.qid, base: sq.base, size: sq.size, cqid: sq.cq.qid, head: sq.head, tail: sq.tail });
    }
    return { dbs: this.dbs, eis: this.eis, fatal: this.fatal, cqs, sqs };
  }

  restore(s: IoQueuesState): void {
    this.reset();
    try {
      for (const c of s.cqs) {
        const st = this.createCq(c.qid, c.base, c.size, c.vector, c.ien);
        if (st !== SC.SUCCESS) throw new Error(`completion queue ${c.qid}: status 0x${st.toString(16)}`);
        const cq = this.cqs[c.qid]!;
        if (c.head >= c.size || c.tail >= c.size || (c.phase !== 0 && c.phase !== 1)) throw new Error(`completion queue ${c.qid}: head, tail or phase out of range`);
        cq.head = c.head; cq.tail = c.tail; cq.phase = c.phase;
      }
      for (const q of s.sqs) {
        const st = this.createSq(q.qid, q.base, q.size, q.cqid);
        if (st !== SC.SUCCESS) throw new Error(`submission queue ${q.qid}: status 0x${st.toString(16)}`);
        const sq = this.sqs[q.qid]!;
        if (q.head >= q.size || q.tail >= q.size) throw new Error(`submission queue ${q.qid}: head or tail out of range`);
        sq.head = q.head; sq.tail = q.tail;
      }
      // after the queues: creating them must not write the guest's shadow doorbells
      if (s.dbs !== 0 || s.eis !== 0) {
        if (s.dbs % PAGE || s.eis % PAGE || !this.mem.contains(s.dbs, PAGE) || !this.mem.contains(s.eis, PAGE)) throw new Error('shadow doorbells outside RAM');
        this.dbs = s.dbs; this.eis = s.eis;
      }
      this.fatal = s.fatal;
    } catch (e) {
      this.reset();
      throw e;
    }
  }
}
