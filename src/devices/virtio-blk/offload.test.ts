/**
 * virtio-blk on its I/O thread, without KVM: guest RAM is an anonymous mapping
 * (as in a VM) that the worker views; notifies are eventfd writes (what
 * a KVM ioeventfd does), interrupts an irqfd-like eventfd or a message back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { GuestMemory } from '../../memory/guest-memory.js';
import { createGuestRam } from '../../memory/ram.js';
import { createEventfd, signalEventfd } from '../../host/eventfd.js';
import { libc } from '../../host/libc.js';
import { VirtioCore } from '../../virtio/device.js';
import { driverOk, makeImage } from './testing.js';
import { requestHeader as header } from './request.js';
import { VirtioBlk, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from './index.js';
import { offloadVirtioBlk } from './offload.js';

const RAM = 4 << 20;

function setup() {
  const img = makeImage(1 << 20);
  const ram = createGuestRam(RAM);
  const mem = new GuestMemory([{ gpa: 0, bytes: ram.bytes, hostAddr: ram.hostAddr }]);
  const inner = new VirtioBlk({ path: img.path });
  const errors: string[] = [];
  const dev = offloadVirtioBlk(inner, { path: img.path }, { hostAddr: ram.hostAddr, size: RAM, regions: [{ gpa: 0, offset: 0, size: RAM }] },
    (m) => errors.push(m));
  const raised: number[] = [];
  const guestErrors: string[] = [];
  const core = new VirtioCore(dev, mem, {
    raiseQueueInterrupt: (q) => raised.push(q), raiseConfigInterrupt: () => {}, guestError: (m) => guestErrors.push(m),
  });
  const start = () => {
    core.writeStatus(0);
    const drv = driverOk(core, dev.features, mem);
    assert.ok(core.active);
    return drv;
  };
  const notify = () => signalEventfd(dev.offload.notifyFd(0));
  const close = () => { dev.destroy(); ram.close(); };
  return { img, mem, dev, core, raised, errors, guestErrors, start, notify, close };
}

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await sleep(5);
  }
}

test('requests are served on the I/O thread; completions raise the queue interrupt through the main thread', async () => {
  const s = setup();
  try {
    const drv = s.start();
    const data = Buffer.alloc(8192, 0x3c);
    const w = drv.addChain({ readable: [header(VIRTIO_BLK_T_OUT, 16), data], writable: [1] });
    s.notify();
    await until(() => drv.usedIdx === 1);
    assert.deepEqual(drv.drainUsed(), [{ id: w, len: 1 }]);
    assert.equal(drv.written(w, 1)[0], 0);
    assert.deepEqual(readFileSync(s.img.path).subarray(16 * 512, 16 * 512 + 8192), data);
    await until(() => s.raised.length > 0);
    assert.deepEqual(s.raised, [0]);
    const served = Atomics.load(s.dev.offload.served, 0);
    assert.ok(served >= 1, 'the notify it took is counted (the halt check reads this)');
    const r = drv.addChain({ readable: [header(VIRTIO_BLK_T_IN, 16)], writable: [4096, 4096, 1] });
    s.notify();
    await until(() => drv.usedIdx === 2);
    assert.deepEqual(Buffer.from(drv.written(r, 8192)), data);
    assert.equal(Atomics.load(s.dev.offload.served, 0), served + 1);
  } finally {
    s.close();
  }
});

test('with a direct irqfd the I/O thread signals it itself', async () => {
  const s = setup();
  const efd = createEventfd();
  try {
    Atomics.store(s.dev.offload.directIrq, 0, efd);
    const drv = s.start();
    drv.addChain({ readable: [header(VIRTIO_BLK_T_IN, 0)], writable: [512, 1] });
    s.notify();
    await until(() => drv.usedIdx === 1);
    const b = Buffer.alloc(8);
    await until(() => libc.read(efd, b, 8) === 8);
    assert.ok(b.readBigUInt64LE(0) >= 1n, 'irqfd written');
    await sleep(50);
    assert.deepEqual(s.raised, [], 'the main thread was not asked');
  } finally {
    s.close();
    libc.close(efd);
  }
});

test('quiesce: in-flight work completes, the main thread sees the true ring state, nothing new is taken until unquiesce', async () => {
  const s = setup();
  try {
    const drv = s.start();
    for (let i = 0; i < 20; i++) drv.addChain({ readable: [header(VIRTIO_BLK_T_OUT, i * 8), 4096], writable: [1] });
    s.notify();
    await until(() => drv.usedIdx >= 1); // the I/O thread is at work
    await s.dev.offload.quiesce();
    const q = s.core.queues[0]!;
    const served = drv.usedIdx;
    assert.equal(q.nextUsedIdx, served, 'used index as the worker left it');
    assert.equal(q.nextAvailIdx, served, 'every chain taken was completed');
    drv.addChain({ readable: [header(VIRTIO_BLK_T_IN, 0)], writable: [512, 1] });
    s.notify();
    await sleep(200);
    assert.equal(drv.usedIdx, served, 'quiesced: nothing new is taken');
    s.dev.offload.unquiesce();
    await until(() => drv.usedIdx === 21);
    assert.equal(drv.drainUsed().length, 21);
  } finally {
    s.close();
  }
});

test('reset returns only after the I/O thread let go of the queue', async () => {
  const s = setup();
  try {
    const drv = s.start();
    drv.addChain({ readable: [header(VIRTIO_BLK_T_IN, 0)], writable: [512, 1] });
    s.notify();
    await until(() => drv.usedIdx === 1);
    s.core.writeStatus(0);
    drv.addChain({ readable: [header(VIRTIO_BLK_T_IN, 0)], writable: [512, 1] });
    s.notify();
    await sleep(200);
    assert.equal(drv.usedIdx, 1, 'no request served after reset');
    // and a new activation works again
    const drv2 = s.start();
    drv2.addChain({ readable: [header(VIRTIO_BLK_T_IN, 0)], writable: [512, 1] });
    s.notify();
    await until(() => drv2.usedIdx === 1);
  } finally {
    s.close();
  }
});

test('a hostile chain on the I/O thread sets NEEDS_RESET, through the main thread', async () => {
  const s = setup();
  try {
    const drv = s.start();
    drv.setDesc(0, { addr: 0xffff_ffff_0000n, len: 16, flags: 0, next: 0 });
    drv.publish(0);
    s.notify();
    await until(() => (s.core.status & 0x40) !== 0);
    assert.deepEqual(s.guestErrors, ['virtio-2: needs reset: virtqueue: buffer 0xffffffff0000+0x10 not in guest RAM'],
      'the I/O thread\'s reason reached the main thread\'s core');
    assert.deepEqual(s.errors, [], 'a guest\'s mistake is not a host failure');
    assert.equal(drv.usedIdx, 0, 'the chain was not completed');
  } finally {
    s.close();
  }
});

// The I/O thread warms its request path up on scratch memory before it serves
// the guest (warm-up.ts); the guest's activation may come during it or after.
for (const when of ['during', 'after'] as const) {
  test(`a queue activated ${when} the I/O thread's warm-up is served, and the guest's disk holds only the guest's data`, async () => {
    const saved = process.env.TSHYVE_BLK_WARMUP_LOG;
    process.env.TSHYVE_BLK_WARMUP_LOG = '1'; // read by the worker when it starts
    const s = setup();
    if (saved === undefined) delete process.env.TSHYVE_BLK_WARMUP_LOG; else process.env.TSHYVE_BLK_WARMUP_LOG = saved;
    try {
      if (when === 'after') await until(() => s.errors.some((e) => e.includes('warm-up:')), 30_000);
      const drv = s.start();
      const data = Buffer.alloc(4096, 0x5a);
      drv.addChain({ readable: [header(VIRTIO_BLK_T_OUT, 8), data], writable: [1] });
      s.notify();
      await until(() => drv.usedIdx === 1, 30_000);
      const r = drv.addChain({ readable: [header(VIRTIO_BLK_T_IN, 8)], writable: [4096, 1] });
      s.notify();
      await until(() => drv.usedIdx === 2);
      assert.deepEqual(Buffer.from(drv.written(r, 4096)), data);
      await until(() => s.errors.some((e) => e.includes('warm-up:')));
      const log = s.errors.find((e) => e.includes('warm-up:'))!;
      assert.match(log, /warm-up: \d+ requests in \d+ ms/);
      if (when === 'after') assert.doesNotMatch(log, /stopped/); else assert.match(log, /stopped/);
      const img = readFileSync(s.img.path);
      const expected = Buffer.from(s.img.bytes);
      data.copy(expected, 8 * 512);
      assert.ok(img.equals(expected), 'only the guest\'s write reached the image');
      assert.deepEqual(s.errors.filter((e) => !e.includes('warm-up:')), []);
    } finally {
      s.close();
    }
  });
}
