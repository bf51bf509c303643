/**
 * The I/O queues on their I/O thread, without KVM: guest RAM is an
 * anonymous mapping as in a VM, MMIO doorbells go through shared memory and the kick
 * eventfd, shadow doorbells are rung as a KVM ioeventfd would (the kick
 * eventfd alone), interrupts come back as messages; a checkpoint's work on
 * a qcow2 namespace (qemu-img the judge).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { signalEventfd } from '../../host/eventfd.js';
import { GuestMemory } from '../../memory/guest-memory.js';
import { createGuestRam } from '../../memory/ram.js';
import { openImage, Qcow2Backend, type BlockBackend } from '../block/index.js';
import { checkImage } from '../block/qcow2/check.js';
import { createQcow2 } from '../block/qcow2/create.js';
import { mapImage } from '../block/qcow2/map.js';
import { assertOverlay, qemuImg, scratchDir, skipNoQemu } from '../block/qcow2/testing.js';
import { openBackend, type DiskInit } from './disk.js';
import { CSTS_CFS, DOORBELLS, REG, SC } from './constants.js';
import { IoThreadQueues } from './offload.js';
import { RamBlockBackend } from './ram-backend.js';
import { DATA, MEM, NvmeTestDriver, type Completion } from './testing.js';

async function until<T>(f: () => T | undefined, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error('timed out');
    await sleep(2);
  }
}

/** The queues on their thread over a RAM disk, or over the image at `path` (this thread's instance passive, as in a VM). */
function setup(path?: string) {
  const ram = createGuestRam(MEM);
  const mem = new GuestMemory([{ gpa: 0, bytes: ram.bytes, hostAddr: ram.hostAddr }]);
  const ramDisk = path === undefined ? RamBlockBackend.ofMiB(4) : undefined;
  const disk = (stats: SharedArrayBuffer): DiskInit => ({
    ...(ramDisk ? { ram: ramDisk.shared } : { path }), readonly: false, nocache: false, direct: false, sectorSize: 512, dsm: true,
    limits: { maxq: 2, maxEntries: 64, vectors: 3 }, stats,
  });
  const backend: BlockBackend = ramDisk ?? openBackend(disk(new SharedArrayBuffer(64)), 'nvme', true);
  let thread: IoThreadQueues | undefined;
  const d = new NvmeTestDriver({
    mem, backend, maxq: 2,
    queues: (signal, stats) => (thread = new IoThreadQueues(disk(stats.buffer as SharedArrayBuffer),
      { hostAddr: ram.hostAddr, size: MEM, regions: [{ gpa: 0, offset: 0, size: MEM }] }, 'nvme-test', signal, (m) => d.errors.push(m))),
  });
  const close = (): void => { thread!.destroy(); backend.close(); ram.close(); };
  return { d, thread: thread!, backend, close };
}

/** One completion on cq `qid`, waited for. */
const one = (d: NvmeTestDriver, qid: number): Promise<Completion> => until(() => d.reap(qid)[0]);

test('I/O on the I/O thread: queues created by admin commands, MMIO doorbells, then shadow doorbells rung as an ioeventfd does', async () => {
  const { d, thread, backend, close } = setup();
  try {
    d.enable();
    assert.equal(d.createCq(1).status, 0);
    assert.equal(d.createSq(1).status, 0);
    assert.equal(d.createSq(1).status, SC.INVALID_QUEUE_ID, 'the thread\'s answer');
    d.mem.fill(DATA, 4096, 0x77);
    d.put(1, { opcode: 0x01, nsid: 1, prp1: DATA, cdw10: 16, cdw12: 7 });
    d.ring(1);
    assert.equal((await one(d, 1)).status, 0);
    const b = new Uint8Array(4096);
    backend.read(b, 16 * 512);
    assert.equal(b[4095], 0x77);
    await until(() => (d.irqs.includes(1) ? true : undefined));
    // quiesced, an MMIO doorbell is not served, but a save holds it
    thread.quiesce();
    d.put(1, { opcode: 0x00, nsid: 1 });
    d.ring(1);
    assert.deepEqual(thread.save().sqs.map((q) => [q.head, q.tail]), [[1, 2]], 'the rung tail is in the saved state');
    thread.unquiesce();
    assert.equal((await one(d, 1)).status, 0);
    // shadow doorbells: the register write is not seen; only the kick
    assert.equal(d.dbbuf(0x600000, 0x601000).status, 0);
    d.put(1, { opcode: 0x02, nsid: 1, prp1: DATA + 4096, cdw10: 16, cdw12: 7 });
    d.mem.writeU32(0x600008, 3);
    signalEventfd(thread.kickFd);
    assert.equal((await one(d, 1)).status, 0);
    assert.equal(d.mem.readU8(DATA + 4096 + 4095), 0x77);
    assert.equal(d.mem.readU32(0x601008), 3, 'event index');
    // save and restore through the thread
    const s = thread.save();
    assert.deepEqual(s.sqs.map((q) => [q.qid, q.head, q.tail]), [[1, 3, 3]]);
    thread.restore(s);
    assert.throws(() => thread.restore({ ...s, sqs: [{ ...s.sqs[0]!, tail: 99 }] }), /out of range/);
    thread.restore(s);
    thread.quiesce();
    d.put(1, { opcode: 0x00, nsid: 1 });
    d.mem.writeU32(0x600008, 4);
    signalEventfd(thread.kickFd);
    await sleep(100);
    assert.equal(d.reap(1).length, 0, 'quiesced: nothing taken');
    thread.unquiesce();
    assert.equal((await one(d, 1)).status, 0);
    // a shadow tail past the end: fatal, seen in CSTS
    d.mem.writeU32(0x600008, 40);
    signalEventfd(thread.kickFd);
    await until(() => ((d.reg(REG.CSTS) & CSTS_CFS) ? true : undefined));
    d.setReg(REG.CC, 0);
    assert.equal(d.reg(REG.CSTS) & CSTS_CFS, 0, 'reset clears it');
    assert.equal(d.reg(DOORBELLS), 0);
  } finally {
    close();
  }
});

test('a qcow2 namespace on the I/O thread: writes allocate clusters, deallocate discards them, the image checks clean', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-nvme-qcow2-'));
  const path = join(dir, 'disk.qcow2');
  createQcow2(path, { size: 4 << 20, clusterSize: 65536 });
  const { d, backend, close } = setup(path);
  try {
    assert.ok(backend instanceof Qcow2Backend, 'probed as qcow2');
    d.enable();
    assert.equal(d.createCq(1).status, 0);
    assert.equal(d.createSq(1).status, 0);
    d.mem.fill(DATA, 4096, 0x77);
    for (const slba of [0, 128, 256]) { // clusters 0, 1 and 2 (128 sectors of 512 bytes each)
      d.put(1, { opcode: 0x01, nsid: 1, prp1: DATA, cdw10: slba, cdw12: 7 });
      d.ring(1);
      assert.equal((await one(d, 1)).status, 0);
    }
    // deallocate all of cluster 1 and half of cluster 2 (which keeps its data)
    d.mem.fill(0x200000, 32);
    d.mem.writeU32(0x200000 + 4, 128); d.mem.writeU32(0x200000 + 8, 128);
    d.mem.writeU32(0x200000 + 16 + 4, 64); d.mem.writeU32(0x200000 + 16 + 8, 320);
    d.put(1, { opcode: 0x09, nsid: 1, prp1: 0x200000, cdw10: 1, cdw11: 4 });
    d.ring(1);
    assert.equal((await one(d, 1)).status, 0);
    d.put(1, { opcode: 0x02, nsid: 1, prp1: DATA + 8192, cdw10: 256, cdw12: 7 });
    d.ring(1);
    assert.equal((await one(d, 1)).status, 0);
    assert.equal(d.mem.readU8(DATA + 8192 + 4095), 0x77);
  } finally {
    close();
  }
  try {
    const img = openImage({ path, readonly: true });
    assert.ok(img instanceof Qcow2Backend);
    const b = new Uint8Array(4096);
    img.read(b, 0);
    assert.equal(b[4095], 0x77, 'the thread\'s write is in the image');
    img.read(b, 128 * 512);
    assert.equal(b[0], 0, 'deallocated');
    assert.deepEqual(mapImage(img).filter((r) => r.data).map((r) => [r.start, r.length]), [[0, 65536], [131072, 65536]], 'cluster 1 is gone');
    const c = checkImage(img, false);
    assert.deepEqual([c.corruptions, c.leaks, c.flagErrors], [0, 0, 0], c.messages.join('; '));
    img.close();
    let qemuImg = true;
    try { execFileSync('qemu-img', ['--version'], { stdio: 'ignore' }); } catch { qemuImg = false; }
    if (qemuImg) execFileSync('qemu-img', ['check', '-q', path]); // throws on a non-zero exit: errors or leaks
  } finally {
    rmSync(dir, { recursive: true });
  }
});

/** A qcow2 or raw namespace on its thread with one I/O queue pair, written through guest commands. */
async function writer(path: string) {
  const s = setup(path);
  s.d.enable();
  assert.equal(s.d.createCq(1).status, 0);
  assert.equal(s.d.createSq(1).status, 0);
  const write = async (slba: number, byte: number) => {
    s.d.mem.fill(DATA, 8192, byte);
    s.d.put(1, { opcode: 0x01, nsid: 1, prp1: DATA, prp2: DATA + 4096, cdw10: slba, cdw12: 15 });
    s.d.ring(1);
    assert.equal((await one(s.d, 1)).status, 0, 'the write succeeded');
  };
  return { ...s, write };
}

function readImage(path: string, off: number, len: number): Buffer {
  const b = openImage({ path, readonly: true });
  try { const out = Buffer.alloc(len); b.read(out, off); return out; } finally { b.close(); }
}
const sha = (f: string): string => createHash('sha256').update(readFileSync(f)).digest('hex');

test('an internal checkpoint of a qcow2 namespace on the I/O thread: qemu-img lists the snapshot, and applying it gives back the bytes of its time', { skip: skipNoQemu }, async () => {
  const s = scratchDir();
  const disk = s.path('d.qcow2');
  createQcow2(disk, { size: 1 << 20, clusterSize: 4096 });
  const w = await writer(disk);
  try {
    await w.write(16, 0xa1);
    w.thread.quiesce();
    assert.deepEqual(await w.thread.checkpointDisk({ t: 'internal', name: 'vm.ckp' }), { path: disk, format: 'qcow2', readonly: false, snapshot: 'vm.ckp' });
    // again under the same name: replaced, not refused
    await w.thread.checkpointDisk({ t: 'internal', name: 'vm.ckp' });
    w.thread.unquiesce();
    await w.write(16, 0xb2);
  } finally {
    w.close();
  }
  const list = qemuImg('snapshot', '-l', disk);
  assert.equal(list.status, 0, list.out);
  assert.equal(list.out.match(/vm\.ckp/g)?.length, 1, list.out);
  assert.equal(qemuImg('check', disk).status, 0);
  assert.deepEqual(readImage(disk, 16 * 512, 8192), Buffer.alloc(8192, 0xb2));
  assert.equal(qemuImg('snapshot', '-a', 'vm.ckp', disk).status, 0);
  assert.deepEqual(readImage(disk, 16 * 512, 8192), Buffer.alloc(8192, 0xa1));
  s.done();
});

test('an external checkpoint of a qcow2 namespace on the I/O thread: it goes on in an overlay whose backing file stays as it was', { skip: skipNoQemu }, async () => {
  const s = scratchDir();
  const base = s.path('base.qcow2'), overlay = s.path('vm.ckp.pci.0.4.0.qcow2');
  createQcow2(base, { size: 1 << 20, clusterSize: 4096 });
  const w = await writer(base);
  let baseSum: string | undefined;
  try {
    await w.write(16, 0xa1);
    w.thread.quiesce();
    // an existing file is never replaced: one line, and the namespace goes on as it was
    writeFileSync(overlay, 'x');
    await assert.rejects(w.thread.checkpointDisk({ t: 'external', overlay }), (e: Error) => /EEXIST/.test(e.message) && !e.message.includes('\n'));
    assert.equal(readFileSync(overlay, 'utf8'), 'x');
    unlinkSync(overlay);
    assert.deepEqual(await w.thread.checkpointDisk({ t: 'external', overlay }), { path: base, format: 'qcow2', readonly: false, overlay });
    w.thread.unquiesce();
    baseSum = sha(base);
    await w.write(16, 0xb2);
    await w.write(300, 0xb2);
  } finally {
    w.close();
  }
  assertOverlay(overlay, base, 'qcow2', 1 << 20);
  assert.equal(sha(base), baseSum, 'the backing file is untouched by writes after the checkpoint');
  assert.deepEqual(readImage(base, 16 * 512, 8192), Buffer.alloc(8192, 0xa1));
  assert.deepEqual(readImage(overlay, 16 * 512, 8192), Buffer.alloc(8192, 0xb2));
  assert.equal(qemuImg('check', base).status, 0);
  s.done();
});
