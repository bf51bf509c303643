import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../memory/guest-memory.js';
import { createGuestRam } from '../../memory/ram.js';
import { FileBlockBackend } from '../block/index.js';
import { StateReader, StateWriter } from '../../snapshot/state.js';
import { CSTS_CFS, CSTS_RDY, DOORBELLS, REG, SC } from './constants.js';
import type { IoQueues } from './io-queues.js';
import { ACQ, ASQ, DATA, MEM, NvmeTestDriver, ioCq } from './testing.js';

const ID = 0x200000;

function ready(o?: ConstructorParameters<typeof NvmeTestDriver>[0]): NvmeTestDriver {
  const d = new NvmeTestDriver(o);
  d.enable();
  assert.equal(d.reg(REG.CSTS), CSTS_RDY);
  return d;
}

function withPair(o?: ConstructorParameters<typeof NvmeTestDriver>[0], qid = 1): NvmeTestDriver {
  const d = ready(o);
  assert.equal(d.createCq(qid).status, SC.SUCCESS);
  assert.equal(d.createSq(qid).status, SC.SUCCESS);
  return d;
}

test('registers: CAP, VS, enable sets RDY, disable clears it, shutdown reports SHST complete', () => {
  const d = new NvmeTestDriver({ qsz: 64 });
  assert.equal(d.reg(REG.CAP) & 0xffff, 63, 'MQES');
  assert.ok(d.reg(REG.CAP) & (1 << 16), 'CQR');
  assert.equal(d.reg(REG.CAP + 4) & (1 << 5), 1 << 5, 'NVM command set');
  assert.equal(d.reg(REG.VS), 0x10400);
  d.enable();
  assert.equal(d.reg(REG.CSTS), CSTS_RDY);
  assert.equal(d.reg(REG.ASQ), ASQ);
  assert.equal(d.reg(REG.ACQ), ACQ);
  d.setReg(REG.CC, d.reg(REG.CC) | (1 << 14));
  assert.equal(d.reg(REG.CSTS) & 0xc, 8, 'shutdown complete');
  d.setReg(REG.CC, 0);
  assert.equal(d.reg(REG.CSTS) & CSTS_RDY, 0);
});

test('enabling with admin queues outside RAM or an unoffered page size is controller fatal, until a reset', () => {
  const d = new NvmeTestDriver();
  d.setReg(REG.AQA, 0x001f001f);
  d.setReg(REG.ASQ, 0xfffff000); d.setReg(REG.ACQ, ACQ);
  d.setReg(REG.CC, 1);
  assert.equal(d.reg(REG.CSTS), CSTS_CFS);
  d.setReg(REG.CC, 0);
  assert.equal(d.reg(REG.CSTS), 0);
  d.enable();
  d.setReg(REG.CC, 0);
  d.setReg(REG.CC, 1 | (1 << 7)); // MPS 8 KiB
  assert.equal(d.reg(REG.CSTS) & CSTS_CFS, CSTS_CFS);
});

test('Identify: controller, namespace, active list, descriptors (EUI-64 and NGUID)', () => {
  const d = ready();
  assert.equal(d.admin({ opcode: 0x06, prp1: ID, cdw10: 1 }).status, 0);
  const c = Buffer.from(d.mem.read(ID, 4096));
  assert.equal(c.readUInt16LE(0), 0xfb5d);
  assert.equal(c.toString('latin1', 4, 24).trim(), 'TESTSERIAL');
  assert.equal(c.toString('latin1', 24, 64).trim(), 'bhyve-NVMe');
  assert.equal(c.readUInt16LE(256) & 0x100, 0x100, 'OACS: doorbell buffer config');
  assert.equal(c.readUInt32LE(516), 1, 'one namespace');
  assert.equal(d.admin({ opcode: 0x06, nsid: 1, prp1: ID }).status, 0);
  const ns = Buffer.from(d.mem.read(ID, 4096));
  assert.equal(Number(ns.readBigUInt64LE(0)), (4 << 20) / 512);
  assert.equal(ns.readUInt32LE(128) >>> 16 & 0xff, 9, 'LBADS 512');
  assert.equal(ns.readBigUInt64BE(120), 0x589cfc0000abcd01n);
  assert.equal(d.admin({ opcode: 0x06, nsid: 2, prp1: ID }).status, SC.INVALID_NAMESPACE);
  assert.equal(d.admin({ opcode: 0x06, nsid: 0, prp1: ID, cdw10: 2 }).status, 0);
  assert.equal(d.mem.readU32(ID), 1);
  assert.equal(d.mem.readU32(ID + 4), 0);
  assert.equal(d.admin({ opcode: 0x06, nsid: 1, prp1: ID, cdw10: 3 }).status, 0);
  assert.deepEqual([d.mem.readU8(ID), d.mem.readU8(ID + 1), d.mem.readU8(ID + 12), d.mem.readU8(ID + 13)], [1, 8, 2, 16]);
  assert.equal(d.admin({ opcode: 0x06, prp1: ID, cdw10: 6 }).status, 0, 'the NVM command set\'s controller structure');
  assert.equal(d.admin({ opcode: 0x06, prp1: ID, cdw10: 6, cdw11: 2 << 24 }).status, SC.INVALID_FIELD, 'another command set');
  assert.equal(d.admin({ opcode: 0x06, prp1: ID, cdw10: 0x55 }).status, SC.INVALID_FIELD);
  assert.equal(d.admin({ opcode: 0x06, prp1: MEM, cdw10: 1 }).status, SC.DATA_TRANSFER, 'a PRP outside RAM');
  assert.equal(d.admin({ opcode: 0x06, prp1: ID + 2, cdw10: 1 }).status, SC.PRP_OFFSET_INVALID);
});

test('features: number of queues answers maxq, write cache, coalescing, saved features refused, unknown refused', () => {
  const d = ready({ maxq: 3 });
  assert.deepEqual([d.admin({ opcode: 0x09, cdw10: 7, cdw11: 0x00ff00ff }).result], [0x00020002]);
  assert.equal(d.admin({ opcode: 0x0a, cdw10: 6 }).result, 1);
  assert.equal(d.admin({ opcode: 0x09, cdw10: 6, cdw11: 0 }).status, 0);
  assert.equal(d.admin({ opcode: 0x0a, cdw10: 6 }).result, 0);
  assert.equal(d.admin({ opcode: 0x0a, cdw10: 6 | (1 << 8) }).result, 1, 'default');
  assert.equal(d.admin({ opcode: 0x09, cdw10: 0x80000008 }).status, SC.FEATURE_NOT_SAVEABLE);
  assert.equal(d.admin({ opcode: 0x09, cdw10: 0x77 }).status, SC.INVALID_FIELD);
  assert.equal(d.admin({ opcode: 0x09, cdw10: 9, cdw11: 99 }).status, SC.INVALID_FIELD, 'vector past the table');
  assert.equal(d.admin({ opcode: 0x55 }).status, SC.INVALID_OPCODE);
});

test('log pages: SMART counts I/O, firmware slot, error log; unknown page refused', () => {
  const d = withPair();
  d.rw(1, true, 0, 8);
  d.rw(1, false, 0, 8);
  assert.equal(d.admin({ opcode: 0x02, nsid: 0xffffffff, prp1: ID, cdw10: 2 | (127 << 16) }).status, 0);
  assert.equal(d.mem.readU32(ID + 64), 1, 'host read commands');
  assert.equal(d.mem.readU32(ID + 80), 1, 'host write commands');
  assert.equal(d.admin({ opcode: 0x02, prp1: ID, cdw10: 3 | (127 << 16) }).status, 0);
  assert.equal(d.mem.readU8(ID), 1);
  assert.equal(d.admin({ opcode: 0x02, prp1: ID, cdw10: 1 | (15 << 16) }).status, 0);
  assert.equal(d.admin({ opcode: 0x02, prp1: ID, cdw10: 0x42 }).status, SC.INVALID_LOG_PAGE);
});

test('queue creation and deletion: the statuses the spec names', () => {
  const d = ready({ maxq: 2, qsz: 64 });
  assert.equal(d.createCq(0).status, SC.INVALID_QUEUE_ID);
  assert.equal(d.createCq(3).status, SC.INVALID_QUEUE_ID);
  assert.equal(d.createCq(1, 65).status, SC.MAX_QUEUE_SIZE);
  assert.equal(d.createCq(1, 16, 3).status, SC.INVALID_VECTOR);
  assert.equal(d.createCq(1, 16, 1, MEM).status, SC.INVALID_FIELD, 'ring outside RAM');
  assert.equal(d.createCq(1, 16, 1, ioCq(1) + 8).status, SC.PRP_OFFSET_INVALID);
  assert.equal(d.admin({ opcode: 0x05, prp1: ioCq(1), cdw10: (15 << 16) | 1, cdw11: 2 }).status, SC.INVALID_FIELD, 'not contiguous');
  assert.equal(d.createSq(1).status, SC.CQ_INVALID);
  assert.equal(d.createCq(1).status, 0);
  assert.equal(d.createCq(1).status, SC.INVALID_QUEUE_ID, 'created twice');
  assert.equal(d.createSq(1).status, 0);
  assert.equal(d.createSq(2, 16, 1).status, 0, 'two SQs on one CQ');
  assert.equal(d.admin({ opcode: 0x04, cdw10: 1 }).status, SC.INVALID_QUEUE_DELETION, 'CQ deleted while in use');
  assert.equal(d.admin({ opcode: 0x00, cdw10: 1 }).status, 0);
  assert.equal(d.admin({ opcode: 0x00, cdw10: 1 }).status, SC.INVALID_QUEUE_ID);
  assert.equal(d.admin({ opcode: 0x00, cdw10: 2 }).status, 0);
  assert.equal(d.admin({ opcode: 0x04, cdw10: 1 }).status, 0);
  assert.equal(d.admin({ opcode: 0x04, cdw10: 0 }).status, SC.INVALID_QUEUE_ID);
});

test('read and write through PRP1 with an offset, PRP2 and a chained PRP list; data lands in the disk', () => {
  const d = withPair({ qsz: 64 });
  const n = 2 * 1024 * 1024 / 512; // 2 MiB: 512 pages, a list that needs more than one list page with an offset start
  const data = new Uint8Array(n * 512);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 12)) & 0xff;
  // pages scattered in reverse, list at 0x300000 (+ a chained page)
  const pageAt = (i: number) => 0x800000 + (600 - i) * 4096;
  const prp1 = pageAt(0) + 0x200; // first page with an offset: one more page at the end
  const pages = Math.ceil((data.length + 0x200) / 4096);
  const list = 0x300000 + 0xff0; // starts 2 entries before the list page's end: chains at once
  let e = list;
  for (let i = 1; i < pages; i++) {
    if ((e + 8) % 4096 === 0) { d.mem.writeU32(e, 0x310000); d.mem.writeU32(e + 4, 0); e = 0x310000; }
    d.mem.writeU32(e, pageAt(i)); d.mem.writeU32(e + 4, 0); e += 8;
  }
  let at = 0;
  for (let i = 0; i < pages; i++) {
    const start = i === 0 ? prp1 : pageAt(i);
    const k = Math.min(data.length - at, 4096 - (start % 4096));
    d.mem.write(start, data.subarray(at, at + k));
    at += k;
  }
  assert.equal(d.rw(1, true, 100, n, prp1, list).status, 0);
  const back = new Uint8Array(data.length);
  d.backend.read(back, 100 * 512);
  assert.deepEqual(back, data);
  for (let i = 0; i < pages; i++) d.mem.fill(pageAt(i), 4096);
  assert.equal(d.rw(1, false, 100, n, prp1, list).status, 0);
  assert.deepEqual(d.mem.read(prp1, 100), data.subarray(0, 100));
  assert.deepEqual(d.mem.read(pageAt(pages - 1), 0x200), data.subarray(data.length - 0x200));
  assert.equal(d.rw(1, true, 0, n + 8, prp1, list).status, SC.INVALID_FIELD, 'past MDTS');
  assert.ok(d.irqs.includes(1), 'the I/O CQ\'s vector');
});

test('hostile I/O: LBA past the end, wrong NSID, PRPs outside RAM or misaligned, a PRP list pointing at itself', () => {
  const d = withPair();
  const lbas = (4 << 20) / 512;
  assert.equal(d.rw(1, false, lbas - 1, 2).status, SC.LBA_OUT_OF_RANGE);
  assert.equal(d.rw(1, false, 2 ** 52, 1).status, SC.LBA_OUT_OF_RANGE);
  assert.equal(d.cmd(1, { opcode: 0x02, nsid: 2, prp1: DATA }).status, SC.INVALID_NAMESPACE);
  assert.equal(d.rw(1, false, 0, 1, MEM).status, SC.DATA_TRANSFER);
  assert.equal(d.rw(1, false, 0, 1, 0x1_0000_0000_0000).status, SC.DATA_TRANSFER);
  assert.equal(d.rw(1, false, 0, 16, DATA, DATA + 0x100).status, SC.PRP_OFFSET_INVALID, 'PRP2 with an offset');
  // list page whose every entry (the last one included) points at itself
  const self = 0x300000;
  for (let i = 0; i < 512; i++) { d.mem.writeU32(self + 8 * i, self); d.mem.writeU32(self + 8 * i + 4, 0); }
  assert.equal(d.rw(1, true, 0, 4096, DATA, self).status, 0, 'bounded: the walk ends with the transfer');
  assert.equal(d.cmd(1, { opcode: 0x77, nsid: 1 }).status, SC.INVALID_OPCODE);
});

test('a read-only namespace refuses writes, zeroes and deallocation; reads work', () => {
  const d = withPair({ readonly: true });
  assert.equal(d.rw(1, true, 0, 1).status, SC.NS_WRITE_PROTECTED);
  assert.equal(d.cmd(1, { opcode: 0x08, nsid: 1, cdw12: 0 }).status, SC.NS_WRITE_PROTECTED);
  assert.equal(d.rw(1, false, 0, 1).status, 0);
  assert.equal(d.admin({ opcode: 0x06, nsid: 1, prp1: ID }).status, 0);
  assert.equal(d.mem.readU8(ID + 99) & 1, 1, 'NSATTR: write protected');
});

test('flush, write zeroes and deallocate (DSM) clear the blocks', () => {
  const d = withPair();
  d.mem.fill(DATA, 4096, 0xaa);
  assert.equal(d.rw(1, true, 8, 8).status, 0);
  assert.equal(d.cmd(1, { opcode: 0x00, nsid: 0xffffffff }).status, 0);
  assert.equal(d.cmd(1, { opcode: 0x08, nsid: 1, cdw10: 8, cdw12: 3 | (1 << 25) }).status, 0);
  const b = new Uint8Array(4096);
  d.backend.read(b, 8 * 512);
  assert.deepEqual([b[0], b[2047], b[2048]], [0, 0, 0xaa]);
  // one range: 4 blocks at 12
  d.mem.fill(0x200000, 16);
  d.mem.writeU32(0x200000 + 4, 4); d.mem.writeU32(0x200000 + 8, 12);
  assert.equal(d.cmd(1, { opcode: 0x09, nsid: 1, prp1: 0x200000, cdw10: 0, cdw11: 4 }).status, 0);
  d.backend.read(b, 8 * 512);
  assert.equal(b[4095], 0);
  d.mem.writeU32(0x200000 + 8, 8190);
  assert.equal(d.cmd(1, { opcode: 0x09, nsid: 1, prp1: 0x200000, cdw10: 0, cdw11: 4 }).status, SC.LBA_OUT_OF_RANGE);
  const off = withPair({ dsm: false });
  assert.equal(off.cmd(1, { opcode: 0x09, nsid: 1, prp1: 0x200000, cdw11: 4 }).status, SC.INVALID_OPCODE);
});

test('a doorbell past its queue\'s end makes the controller fatal; a reset recovers', () => {
  const d = withPair();
  d.setReg(DOORBELLS + 8, 16);
  assert.equal(d.reg(REG.CSTS) & CSTS_CFS, CSTS_CFS);
  d.setReg(REG.CC, 0);
  assert.equal(d.reg(REG.CSTS), 0);
  d.enable();
  d.setReg(DOORBELLS, 32);
  assert.equal(d.reg(REG.CSTS) & CSTS_CFS, CSTS_CFS, 'admin queue too');
});

test('a full completion queue holds submissions until the driver frees entries', () => {
  const d = ready();
  assert.equal(d.createCq(1, 4).status, 0);
  assert.equal(d.createSq(1, 16).status, 0);
  for (let i = 0; i < 6; i++) d.put(1, { opcode: 0x00, nsid: 1 });
  d.ring(1);
  assert.equal(d.reap(1).length, 3, 'a 4-entry CQ holds 3');
  assert.equal(d.reap(1).length, 3, 'the head doorbell lets the rest complete');
});

test('shadow doorbells: I/O doorbells are read from the shadow buffer; event indexes follow', () => {
  const d = withPair();
  const dbs = 0x600000, eis = 0x601000;
  assert.equal(d.admin({ opcode: 0x7c, prp1: dbs, prp2: eis }).status, 0);
  assert.equal(d.admin({ opcode: 0x7c, prp1: dbs + 8, prp2: eis }).status, SC.INVALID_FIELD);
  d.put(1, { opcode: 0x00, nsid: 1 });
  d.put(1, { opcode: 0x00, nsid: 1 });
  d.mem.writeU32(dbs + 8, 2); // shadow SQ1 tail
  d.setReg(DOORBELLS + 8, 0); // the MMIO value does not count, only the shadow's
  const c = d.reap(1);
  assert.equal(c.length, 2);
  assert.equal(d.ctrl.ioDoorbellExits, 2, 'the SQ tail and CQ head doorbells that were exits are counted');
  assert.equal(d.mem.readU32(eis + 8), 2, 'SQ event index at the tail seen');
  d.mem.writeU32(dbs + 8, 99);
  (d.queues as IoQueues).serve();
  assert.equal(d.reg(REG.CSTS) & CSTS_CFS, CSTS_CFS, 'a shadow tail past the end is fatal');
});

test('asynchronous event requests are held, up to the limit; a reset drops them', () => {
  const d = ready();
  for (let i = 0; i < 4; i++) { d.put(0, { opcode: 0x0c }); d.ring(0); }
  assert.equal(d.reap(0).length, 0, 'held');
  assert.equal(d.admin({ opcode: 0x0c }).status, SC.AER_LIMIT);
  assert.equal(d.admin({ opcode: 0x08, cdw10: 0 }).result, 1, 'abort: not aborted');
});

test('save and restore: registers, admin and I/O queues (head, tail, phase), held AERs, shadow doorbells; I/O goes on', () => {
  const d = withPair();
  assert.equal(d.dbbuf(0x600000, 0x601000).status, 0);
  d.put(0, { opcode: 0x0c }); d.ring(0);
  for (let i = 0; i < 20; i++) assert.equal(d.cmd(1, { opcode: 0, nsid: 1 }).status, 0);
  d.mem.fill(DATA, 512, 0x5a);
  assert.equal(d.rw(1, true, 0, 1).status, 0);
  const w = new StateWriter();
  d.ctrl.saveState(w, d.queues.save());
  const json = JSON.parse(JSON.stringify(w.obj)) as unknown;
  const e = new NvmeTestDriver({ backend: d.backend });
  e.mem.write(0, d.mem.read(0, MEM));
  e.queues.restore(e.ctrl.restoreState(new StateReader(json, 'nvme')));
  e.adopt(d);
  assert.equal(e.reg(REG.CSTS), CSTS_RDY);
  const c = e.rw(1, false, 0, 1, DATA + 4096);
  assert.equal(c.status, 0, 'phase carried over the wrap');
  assert.equal(e.mem.readU8(DATA + 4096), 0x5a);
  for (let i = 0; i < 3; i++) { e.put(0, { opcode: 0x0c }); e.ring(0); }
  assert.equal(e.admin({ opcode: 0x0c }).status, SC.AER_LIMIT, 'the held AER was kept');
  // a hostile snapshot: a queue index past its queue
  const bad = JSON.parse(JSON.stringify(w.obj)) as { io: { sqs: Record<string, unknown>[] } };
  bad.io.sqs[0]!['tail$u16'] = 99;
  const f = new NvmeTestDriver({ backend: d.backend });
  f.mem.write(0, d.mem.read(0, MEM));
  assert.throws(() => f.queues.restore(f.ctrl.restoreState(new StateReader(bad, 'nvme'))), /head or tail out of range/);
});

test('a read marks the pages it filled as dirty, on the vectored path too (a live migration sends them again)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-nvme-dirty-'));
  const ram = createGuestRam(MEM);
  const img = join(dir, 'disk.img');
  writeFileSync(img, Buffer.alloc(1 << 20, 0x5a));
  const backend = FileBlockBackend.open({ path: img });
  try {
    const dirty = new Uint8Array(MEM / 4096);
    const mem = new GuestMemory([{ gpa: 0, bytes: ram.bytes, hostAddr: ram.hostAddr }], dirty);
    const d = withPair({ mem, backend });
    const page = 0x900000 / 4096;
    dirty.fill(0);
    assert.equal(d.rw(1, false, 8, 16, 0x900000, 0x901000).status, 0);
    assert.deepEqual([...dirty.subarray(page - 1, page + 3)], [0, 1, 1, 0], 'the two pages the read filled');
    assert.equal(d.mem.read(0x901fff, 1)[0], 0x5a);
  } finally {
    backend.close(); ram.close(); rmSync(dir, { recursive: true });
  }
});
