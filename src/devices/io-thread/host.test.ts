/**
 * The I/O-thread host with a two-queue test device (testing/echo-device.ts),
 * without KVM: guest RAM is a memfd mapping as in a VM, notifies are eventfd
 * writes (what a KVM ioeventfd does), interrupts an irqfd-like eventfd or a
 * message back to the main thread.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { GuestMemory } from '../../memory/guest-memory.js';
import { createGuestRam } from '../../memory/ram.js';
import { createEventfd, signalEventfd } from '../../host/eventfd.js';
import { libc } from '../../host/libc.js';
import { VirtioCore } from '../../virtio/device.js';
import { VIRTIO_F_VERSION_1, VIRTIO_STATUS_NEEDS_RESET, featureBit } from '../../virtio/constants.js';
import { MockSplitQueue } from '../../virtio/testing/mock-driver.js';
import { IoThreadHost } from './host.js';
import { StateReader, StateWriter } from '../../snapshot/state.js';
import { EchoDevice, HOLD, type EchoInit } from './testing/echo-device.js';

const RAM = 1 << 20;

function setup(init: EchoInit = {}, waitMs?: number, openAfter?: Promise<void>) {
  const ram = createGuestRam(RAM);
  const mem = new GuestMemory([{ gpa: 0, bytes: ram.bytes, hostAddr: ram.hostAddr }]);
  const errors: string[] = [];
  const guestErrors: string[] = [];
  const inner = new EchoDevice();
  const threadName = `echo-io@${process.hrtime.bigint() % 1000n}`;
  const dev = new IoThreadHost<EchoInit>(inner, {
    worker: new URL('./testing/echo-worker.js', import.meta.url), init,
    ram: { hostAddr: ram.hostAddr, size: RAM, regions: [{ gpa: 0, offset: 0, size: RAM }] },
    label: 'echo', threadName, onError: (m) => errors.push(m), ...(waitMs !== undefined && { waitMs }), ...(openAfter && { openAfter }),
  });
  const raised: number[] = [];
  const core = new VirtioCore(dev, mem, {
    raiseQueueInterrupt: (q) => raised.push(q), raiseConfigInterrupt: () => {}, guestError: (m) => guestErrors.push(m),
  });
  const start = (): MockSplitQueue[] => {
    core.writeStatus(0);
    core.writeStatus(1); core.writeStatus(3);
    core.writeDriverFeatures(featureBit(VIRTIO_F_VERSION_1));
    core.writeStatus(0x0b);
    const drvs = [0, 1].map((q) => {
      const drv = new MockSplitQueue(mem, 16, { base: 0x10000 * (q + 1), dataEnd: 0x10000 * (q + 2) });
      drv.configure(core.queues[q]!);
      return drv;
    });
    core.writeStatus(0x0f);
    return drvs;
  };
  const notify = (q: number) => signalEventfd(dev.offload.notifyFd(q));
  const close = () => { dev.destroy(); ram.close(); };
  return { mem, dev, inner, core, raised, errors, guestErrors, threadName, start, notify, close };
}

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await sleep(5);
  }
}

const threadNames = (): string[] => readdirSync('/proc/self/task').map((t) => {
  try { return readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim(); } catch { return ''; }
});

test('both queues are served on the named I/O thread; completions raise each queue\'s interrupt through the main thread', async () => {
  const s = setup();
  try {
    assert.equal(s.dev.numQueues, 2);
    assert.equal(s.dev.readConfig(0, 4), 0xec40, 'config from the main thread\'s model');
    assert.notEqual(s.dev.offload.notifyFd(0), s.dev.offload.notifyFd(1));
    assert.equal(s.dev.offload.directIrq.length, 2);
    const [d0, d1] = s.start() as [MockSplitQueue, MockSplitQueue];
    assert.ok(s.core.active);
    const a = d0.addChain({ readable: [Buffer.from('zero')], writable: [8] });
    const b = d1.addChain({ readable: [Buffer.from('one')], writable: [8] });
    s.notify(0); s.notify(1);
    await until(() => d0.usedIdx === 1 && d1.usedIdx === 1);
    assert.deepEqual(d0.drainUsed(), [{ id: a, len: 5 }]);
    assert.deepEqual(Buffer.from(d0.written(a, 5)), Buffer.from('\x00zero'));
    assert.deepEqual(d1.drainUsed(), [{ id: b, len: 4 }]);
    assert.deepEqual(Buffer.from(d1.written(b, 4)), Buffer.from('\x01one'));
    await until(() => s.raised.length === 2);
    assert.deepEqual([...s.raised].sort(), [0, 1]);
    assert.ok(Atomics.load(s.dev.offload.served, 0) >= 2, 'each queue\'s notify is counted');
    assert.ok(threadNames().includes(s.threadName), `a thread named ${s.threadName}`);
    // only queue 1 this time: queue 0 sees nothing
    d1.addChain({ readable: [Buffer.from('x')], writable: [2] });
    s.notify(1);
    await until(() => d1.usedIdx === 2);
    assert.equal(d0.usedIdx, 1);
    assert.deepEqual(s.errors, []);
  } finally {
    s.close();
  }
});

test('with a direct irqfd for queue 1 the I/O thread signals it itself; queue 0 still goes through the main thread', async () => {
  const s = setup();
  const efd = createEventfd();
  try {
    Atomics.store(s.dev.offload.directIrq, 1, efd);
    const [d0, d1] = s.start() as [MockSplitQueue, MockSplitQueue];
    d1.addChain({ readable: [1], writable: [4] });
    s.notify(1);
    await until(() => d1.usedIdx === 1);
    const b = Buffer.alloc(8);
    await until(() => libc.read(efd, b, 8) === 8);
    assert.equal(b.readBigUInt64LE(0), 1n, 'irqfd written once');
    d0.addChain({ readable: [1], writable: [4] });
    s.notify(0);
    await until(() => s.raised.length > 0);
    await sleep(50);
    assert.deepEqual(s.raised, [0], 'the main thread was asked for queue 0 only');
  } finally {
    s.close();
    libc.close(efd);
  }
});

test('quiesce hands both queues\' ring state back, and nothing new is taken until unquiesce', async () => {
  const s = setup();
  try {
    const drvs = s.start();
    for (const [q, drv] of drvs.entries()) for (let i = 0; i <= q + 2; i++) drv.addChain({ readable: [4], writable: [8] });
    s.notify(0); s.notify(1);
    await until(() => drvs[0]!.usedIdx === 3 && drvs[1]!.usedIdx === 4);
    const [q0, q1] = s.core.queues as [typeof s.core.queues[0], typeof s.core.queues[0]];
    assert.equal(q0.nextUsedIdx + q1.nextUsedIdx, 0, 'the main thread\'s queues have not moved yet');
    await s.dev.offload.quiesce();
    assert.deepEqual([q0.nextAvailIdx, q0.nextUsedIdx], [3, 3], 'queue 0 as the worker left it');
    assert.deepEqual([q1.nextAvailIdx, q1.nextUsedIdx], [4, 4], 'queue 1 as the worker left it');
    for (const drv of drvs) drv.addChain({ readable: [4], writable: [8] });
    s.notify(0); s.notify(1);
    await sleep(200);
    assert.deepEqual(drvs.map((d) => d.usedIdx), [3, 4], 'quiesced: nothing new is taken');
    s.dev.offload.unquiesce();
    await until(() => drvs[0]!.usedIdx === 4 && drvs[1]!.usedIdx === 5);
  } finally {
    s.close();
  }
});

test('reset waits for the I/O thread, bounded: a stuck request gives NEEDS_RESET\'s reason and a prompt return; the device works after', async () => {
  const gate = new Int32Array(new SharedArrayBuffer(4));
  const s = setup({ gate: gate.buffer as SharedArrayBuffer }, 300);
  try {
    let [d0, d1] = s.start() as [MockSplitQueue, MockSplitQueue];
    d0.addChain({ readable: [1], writable: [4] });
    s.notify(0);
    await until(() => d0.usedIdx === 1);
    s.core.writeStatus(0); // an idle thread lets go at once
    assert.equal(s.guestErrors.length, 0);
    d0.addChain({ readable: [1], writable: [4] });
    s.notify(0);
    await sleep(100);
    assert.equal(d0.usedIdx, 1, 'no request served after reset');

    [d0, d1] = s.start() as [MockSplitQueue, MockSplitQueue];
    d1.addChain({ readable: [Buffer.of(HOLD)], writable: [4] });
    s.notify(1);
    await sleep(100); // the thread is in the held request
    const t0 = Date.now();
    s.core.writeStatus(0);
    const took = Date.now() - t0;
    assert.ok(took >= 250 && took < 2000, `reset returned after ${took} ms`);
    assert.ok(s.guestErrors.some((e) => e.includes('echo I/O thread did not stop in time')), s.guestErrors.join('; '));
    Atomics.store(gate, 0, 1); Atomics.notify(gate, 0);

    [d0, d1] = s.start() as [MockSplitQueue, MockSplitQueue];
    d1.addChain({ readable: [1], writable: [4] });
    s.notify(1);
    await until(() => d1.usedIdx === 1);
    assert.equal(s.core.status & VIRTIO_STATUS_NEEDS_RESET, 0);
  } finally {
    Atomics.store(gate, 0, 1); Atomics.notify(gate, 0);
    s.close();
  }
});

test('destroy is bounded: a thread stuck in a request is terminated', async () => {
  const gate = new Int32Array(new SharedArrayBuffer(4));
  const s = setup({ gate: gate.buffer as SharedArrayBuffer }, 300);
  const [d0] = s.start() as [MockSplitQueue];
  d0.addChain({ readable: [Buffer.of(HOLD)], writable: [4] });
  s.notify(0);
  await sleep(100);
  const t0 = Date.now();
  s.close();
  const took = Date.now() - t0;
  assert.ok(took >= 250 && took < 2000, `destroy returned after ${took} ms`);
  s.close(); // twice is harmless
});

test('a thread whose model cannot be built is reported; activation sets NEEDS_RESET and destroy does not wait', async () => {
  const s = setup({ fail: 'no disk here' });
  try {
    await until(() => s.errors.length > 0);
    assert.deepEqual(s.errors, ['echo I/O thread failed: no disk here']);
    s.start();
    assert.equal(s.core.active, false);
    assert.ok(s.core.status & VIRTIO_STATUS_NEEDS_RESET);
    assert.ok(s.guestErrors.some((e) => e.includes('I/O thread failed: no disk here')), s.guestErrors.join('; '));
  } finally {
    const t0 = Date.now();
    s.close();
    assert.ok(Date.now() - t0 < 200, 'no wait for a dead thread');
  }
});

test('an activation during the warm-up ends it, and its queues are served', async () => {
  const s = setup({ warmUp: true });
  try {
    await sleep(50); // the thread is in its warm-up
    const [, d1] = s.start() as [MockSplitQueue, MockSplitQueue];
    d1.addChain({ readable: [Buffer.from('w')], writable: [4] });
    s.notify(1);
    await until(() => d1.usedIdx === 1);
    await until(() => s.errors.length > 0);
    assert.deepEqual(s.errors, ['echo warm-up stopped']);
  } finally {
    s.close();
  }
});

test('openAfter: the thread warms up, makes its model only once the gate opens, then serves; a stop before that ends it promptly', async () => {
  let open!: () => void;
  const created = new SharedArrayBuffer(4);
  const s = setup({ warmUp: true, created }, undefined, new Promise((r) => { open = r; }));
  try {
    await sleep(300);
    assert.equal(Atomics.load(new Int32Array(created), 0), 0, 'no model (no storage opened) before the gate');
    open();
    await until(() => Atomics.load(new Int32Array(created), 0) === 1);
    assert.deepEqual(s.errors, ['echo warm-up stopped']);
    const [d0] = s.start() as [MockSplitQueue, MockSplitQueue];
    d0.addChain({ readable: [Buffer.from('g')], writable: [4] });
    s.notify(0);
    await until(() => d0.usedIdx === 1);
  } finally {
    s.close();
  }
  const never = setup({}, undefined, new Promise(() => {}));
  await until(() => threadNames().includes(never.threadName));
  const t0 = Date.now();
  never.close();
  assert.ok(Date.now() - t0 < 2000, `destroy before the gate took ${Date.now() - t0} ms`);
  await until(() => !threadNames().includes(never.threadName));
});

test('a model with saveState is refused unless its state lives on the main thread (mainThreadState): then it is saved and restored there', () => {
  let restored = -1;
  const inner = Object.assign(new EchoDevice(), {
    saveState: (w: StateWriter) => { w.u8('x', 7); },
    restoreState: (r: StateReader) => { restored = r.u8('x'); },
  });
  const ram = createGuestRam(RAM);
  const opts = {
    worker: new URL('./testing/echo-worker.js', import.meta.url), init: {},
    ram: { hostAddr: ram.hostAddr, size: RAM, regions: [{ gpa: 0, offset: 0, size: RAM }] },
    label: 'echo', threadName: 'echo-state', onError: () => {},
  };
  try {
    assert.throws(() => new IoThreadHost<EchoInit>(inner, opts), /device state would stay on its I\/O thread, unsaved/);
    const dev = new IoThreadHost<EchoInit>(inner, { ...opts, mainThreadState: true });
    try {
      const w = new StateWriter();
      dev.saveState!(w);
      dev.restoreState!(new StateReader(w.obj, 'device'));
      assert.equal(restored, 7);
    } finally {
      dev.destroy();
    }
  } finally {
    ram.close();
  }
});

test('a model\'s own fds (pollFds): onReadable on each readiness while the queues are served, once more at activation and unquiesce, never while quiesced', async () => {
  const own = createEventfd();
  const seen = new Int32Array(new SharedArrayBuffer(4));
  const s = setup({ ownFd: own, seen: seen.buffer as SharedArrayBuffer });
  try {
    signalEventfd(own);
    await sleep(100);
    assert.equal(Atomics.load(seen, 0), 0, 'not before the queues are served');
    s.start();
    await until(() => Atomics.load(seen, 0) === 1);
    signalEventfd(own);
    await until(() => Atomics.load(seen, 0) === 2);
    await sleep(50);
    assert.equal(Atomics.load(seen, 0), 2, 'edge-triggered: once per readiness');
    await s.dev.offload.quiesce();
    signalEventfd(own);
    await sleep(100);
    assert.equal(Atomics.load(seen, 0), 2, 'quiesced: not passed on');
    s.dev.offload.unquiesce();
    await until(() => Atomics.load(seen, 0) === 3);
    assert.deepEqual(s.errors, []);
  } finally {
    s.close();
    libc.close(own);
  }
});
