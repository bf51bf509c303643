/**
 * Tests' NVMe driver: a controller with its I/O queues on this thread over
 * plain guest memory (GuestMemory.ofSize) and a RAM or file disk, and the
 * driver side: admin and I/O submission queues written as Linux writes
 * them, doorbells through the registers, completions read by phase.
 */
import { GuestMemory } from '../../memory/guest-memory.js';
import type { BlockBackend } from '../block/backend.js';
import { CC_EN, DOORBELLS, REG } from './constants.js';
import { NvmeController, type IoQueueDriver } from './controller.js';
import { IoCommands, Stat } from './io.js';
import { IoQueues } from './io-queues.js';
import { RamBlockBackend } from './ram-backend.js';

export const MEM = 16 << 20;
/** where tests place things in guest memory */
export const ASQ = 0x10000, ACQ = 0x20000, DATA = 0x100000;
export const ioSq = (qid: number): number => 0x40000 + qid * 0x10000;
export const ioCq = (qid: number): number => 0x48000 + qid * 0x10000;

export interface Completion { result: number; sqhd: number; sqid: number; cid: number; status: number }

export interface SqeFields {
  opcode: number; nsid?: number; prp1?: number; prp2?: number;
  cdw10?: number; cdw11?: number; cdw12?: number; cdw13?: number;
}

export interface TestSetup {
  backend?: BlockBackend;
  readonly?: boolean;
  dsm?: boolean;
  maxq?: number;
  qsz?: number;
  sectorSize?: number;
  /** guest memory (default: MEM bytes of plain buffer) */
  mem?: GuestMemory;
  /** I/O queues other than local ones on this thread (the I/O thread's) */
  queues?: (signal: (vector: number) => void, stats: Float64Array) => IoQueueDriver;
}

export class NvmeTestDriver {
  readonly mem: GuestMemory;
  readonly backend: BlockBackend;
  readonly queues: IoQueueDriver;
  readonly ctrl: NvmeController;
  readonly stats = new Float64Array(new SharedArrayBuffer(8 * Stat.COUNT));
  readonly irqs: number[] = [];
  readonly errors: string[] = [];
  readonly sectorSize: number;
  /** driver-side state per qid: sq tail, cq head, expected phase, sizes */
  private readonly sq = new Map<number, { tail: number; size: number; base: number }>();
  private readonly cq = new Map<number, { head: number; phase: number; size: number; base: number }>();
  private cid = 0;
  /** shadow doorbells, once dbbuf() configured them */
  private dbs = 0;

  constructor(o: TestSetup = {}) {
    this.mem = o.mem ?? GuestMemory.ofSize(MEM);
    this.backend = o.backend ?? RamBlockBackend.ofMiB(4);
    this.sectorSize = o.sectorSize ?? 512;
    const maxq = o.maxq ?? 4, qsz = o.qsz ?? 64, vectors = maxq + 1;
    const ns = { backend: this.backend, sectorSize: this.sectorSize, readonly: o.readonly ?? false, dsm: o.dsm ?? true };
    const signal = (v: number): void => { this.irqs.push(v); };
    this.queues = o.queues?.(signal, this.stats)
      ?? new IoQueues(this.mem, new IoCommands(this.mem, ns, this.stats), { maxq, maxEntries: qsz, vectors }, signal, () => this.errors.push('fatal'));
    this.ctrl = new NvmeController({
      mem: this.mem, queues: this.queues, stats: this.stats, maxq, maxEntries: qsz, vectors,
      identity: {
        serial: 'TESTSERIAL', maxEntries: qsz, readonly: ns.readonly, dsm: ns.dsm, eui64: 0x589cfc0000abcd01n,
        sectorSize: this.sectorSize, lbas: Math.floor(this.backend.size / this.sectorSize),
      },
      signal, flush: () => this.backend.flush(), onDbbuf: () => {}, guestError: (m) => this.errors.push(m),
    });
  }

  reg(off: number): number { return this.ctrl.read(off, 4); }
  setReg(off: number, v: number): void { this.ctrl.write(off, 4, v); }

  /** Enable with admin queues of `size` entries, as Linux does. */
  enable(size = 32): void {
    this.setReg(REG.AQA, ((size - 1) << 16) | (size - 1));
    this.setReg(REG.ASQ, ASQ); this.setReg(REG.ASQ + 4, 0);
    this.setReg(REG.ACQ, ACQ); this.setReg(REG.ACQ + 4, 0);
    this.mem.fill(ACQ, 16 * size);
    this.setReg(REG.CC, CC_EN | (6 << 16) | (4 << 20));
    this.sq.clear(); this.cq.clear(); this.dbs = 0;
    this.sq.set(0, { tail: 0, size, base: ASQ });
    this.cq.set(0, { head: 0, phase: 1, size, base: ACQ });
  }

  /** Write a command at qid's tail (no doorbell); returns its CID. */
  put(qid: number, f: SqeFields, cid = this.cid++ & 0xffff): number {
    const q = this.sq.get(qid)!;
    const a = q.base + q.tail * 64;
    this.mem.fill(a, 64);
    this.mem.writeU32(a, f.opcode | (cid << 16));
    this.mem.writeU32(a + 4, f.nsid ?? 0);
    this.mem.writeU32(a + 24, (f.prp1 ?? 0) % 0x1_0000_0000); this.mem.writeU32(a + 28, Math.floor((f.prp1 ?? 0) / 0x1_0000_0000));
    this.mem.writeU32(a + 32, (f.prp2 ?? 0) % 0x1_0000_0000); this.mem.writeU32(a + 36, Math.floor((f.prp2 ?? 0) / 0x1_0000_0000));
    [f.cdw10, f.cdw11, f.cdw12, f.cdw13].forEach((v, i) => this.mem.writeU32(a + 40 + 4 * i, v ?? 0));
    q.tail = (q.tail + 1) % q.size;
    return cid;
  }

  /** The SQ tail doorbell, as Linux rings it: the shadow first when configured (I/O queues), then the register. */
  ring(qid: number): void {
    const tail = this.sq.get(qid)!.tail;
    if (this.dbs && qid > 0) this.mem.writeU32(this.dbs + 8 * qid, tail);
    this.setReg(DOORBELLS + 8 * qid, tail);
  }

  /** Doorbell Buffer Config. */
  dbbuf(dbs: number, eis: number): Completion {
    const c = this.admin({ opcode: 0x7c, prp1: dbs, prp2: eis });
    if (c.status === 0) this.dbs = dbs;
    return c;
  }

  /** Completions posted on cq `qid` since the last call; the head doorbell follows. */
  reap(qid: number): Completion[] {
    const q = this.cq.get(qid)!;
    const out: Completion[] = [];
    for (;;) {
      const a = q.base + q.head * 16;
      const dw3 = this.mem.readU32(a + 12);
      if (((dw3 >>> 16) & 1) !== q.phase) break;
      const dw2 = this.mem.readU32(a + 8);
      out.push({ result: this.mem.readU32(a), sqhd: dw2 & 0xffff, sqid: dw2 >>> 16, cid: dw3 & 0xffff, status: (dw3 >>> 17) & 0x7fff });
      q.head++;
      if (q.head === q.size) { q.head = 0; q.phase ^= 1; }
    }
    if (out.length) {
      if (this.dbs && qid > 0) this.mem.writeU32(this.dbs + 8 * qid + 4, q.head);
      this.setReg(DOORBELLS + 8 * qid + 4, q.head);
    }
    return out;
  }

  /** Submit one command on qid, ring, and return its completion (status without DNR). */
  cmd(qid: number, f: SqeFields, cqid = qid): Completion {
    this.put(qid, f);
    this.ring(qid);
    const c = this.reap(cqid);
    if (c.length !== 1) throw new Error(`expected one completion, got ${c.length}`);
    return { ...c[0]!, status: c[0]!.status & 0x3fff };
  }

  admin(f: SqeFields): Completion { return this.cmd(0, f); }

  createCq(qid: number, size = 16, vector = qid, base = ioCq(qid)): Completion {
    if (this.mem.contains(base, 16 * size)) this.mem.fill(base, 16 * size); // what the driver sees, not the test of a bad base
    const c = this.admin({ opcode: 0x05, prp1: base, cdw10: ((size - 1) << 16) | qid, cdw11: (vector << 16) | 3 });
    if (c.status === 0) this.cq.set(qid, { head: 0, phase: 1, size, base });
    return c;
  }

  createSq(qid: number, size = 16, cqid = qid, base = ioSq(qid)): Completion {
    const c = this.admin({ opcode: 0x01, prp1: base, cdw10: ((size - 1) << 16) | qid, cdw11: (cqid << 16) | 1 });
    if (c.status === 0) this.sq.set(qid, { tail: 0, size, base });
    return c;
  }

  /** Driver-side view of a queue the controller already has (after a restore). */
  adopt(from: NvmeTestDriver): void {
    for (const [k, v] of from.sq) this.sq.set(k, { ...v });
    for (const [k, v] of from.cq) this.cq.set(k, { ...v });
    this.dbs = from.dbs;
  }

  /** I/O: read or write `nlb` blocks at `slba` through data at `prp1`/`prp2`. */
  rw(qid: number, write: boolean, slba: number, nlb: number, prp1 = DATA, prp2 = 0): Completion {
    return this.cmd(qid, { opcode: write ? 0x01 : 0x02, nsid: 1, prp1, prp2, cdw10: slba % 0x1_0000_0000, cdw11: Math.floor(slba / 0x1_0000_0000), cdw12: nlb - 1 });
  }
}
