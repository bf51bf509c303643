/**
 * The I/O queues on their I/O thread, without KVM: guest RAM is a memfd
 * mapping as in a VM, MMIO doorbells go through shared memory and the kick
 * eventfd, shadow doorbells are rung as a KVM ioeventfd would (the kick
 * eventfd alone), interrupts come back as messages.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { signalEventfd } from '../../host/eventfd.js';
import { libc } from '../../host/libc.js';
import { GuestMemory } from '../../memory/guest-memory.js';
import { createGuestRam } from '../../memory/ram.js';
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

function setup() {
  const ram = createGuestRam(MEM, 'tshyve-nvme-test');
  const mem = new GuestMemory([{ gpa: 0, bytes: ram.bytes, hostAddr: ram.hostAddr }]);
  const backend = RamBlockBackend.ofMiB(4);
  let thread: IoThreadQueues | undefined;
  const d = new NvmeTestDriver({
    mem, backend, maxq: 2,
    queues: (signal, stats) => (thread = new IoThreadQueues({
      ram: backend.shared, readonly: false, nocache: false, direct: false, sectorSize: 512, dsm: true,
      limits: { maxq: 2, maxEntries: 64, vectors: 3 }, stats: stats.buffer as SharedArrayBuffer,
    }, { hostAddr: ram.hostAddr, size: MEM, regions: [{ gpa: 0, offset: 0, size: MEM }] }, 'nvme-test', signal, (m) => d.errors.push(m))),
  });
  const close = (): void => { thread!.destroy(); libc.close(ram.memfd); };
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
