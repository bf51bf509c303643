import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../memory/guest-memory.js';
import {
  VIRTIO_COMMON_FEATURES, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1, VIRTIO_ID_RNG, VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_STATUS_ACKNOWLEDGE as ACK, VIRTIO_STATUS_DRIVER as DRIVER,
  VIRTIO_STATUS_DRIVER_OK as DRIVER_OK, VIRTIO_STATUS_FAILED as FAILED, VIRTIO_STATUS_FEATURES_OK as FEATURES_OK,
  VIRTIO_STATUS_NEEDS_RESET as NEEDS_RESET, VIRTQ_DESC_F_NEXT, featureBit,
} from './constants.js';
import { VirtioCore, type VirtioDevice, type VirtioInterrupt } from './device.js';
import { VirtqueueError, type Virtqueue } from './queue.js';
import { MockSplitQueue } from './testing/mock-driver.js';

/** A tiny virtio-rng-like device: fills every writable buffer with 0x5a. */
class TestRng implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_RNG;
  readonly numQueues = 1;
  readonly maxQueueSize = 16;
  readonly features = VIRTIO_COMMON_FEATURES | featureBit(0);
  readonly configSize = 8;
  cfg = new DataView(new ArrayBuffer(8));
  queues: readonly Virtqueue[] = [];
  irq: VirtioInterrupt | undefined;
  activations = 0;
  resets = 0;
  features_: bigint | undefined;
  refuse = false;

  acceptFeatures(f: bigint): boolean { return !this.refuse || (f & featureBit(0)) === 0n; }
  readConfig(off: number, size: number): number {
    return size === 1 ? this.cfg.getUint8(off) : size === 2 ? this.cfg.getUint16(off, true) : this.cfg.getUint32(off, true);
  }
  writeConfig(off: number, size: number, v: number): void {
    if (off >= 4 && size === 4) this.cfg.setUint32(off, v, true);
  }
  activate(queues: readonly Virtqueue[], _mem: GuestMemory, irq: VirtioInterrupt, features: bigint): void {
    this.queues = queues;
    this.irq = irq;
    this.features_ = features;
    this.activations++;
  }
  queueNotify(q: number): void {
    const vq = this.queues[q]!;
    try {
      for (let c = vq.popChain(); c; c = vq.popChain()) {
        const n = c.write(new Uint8Array(c.writableLen).fill(0x5a));
        vq.pushUsed(c.head, n);
      }
    } catch (e) {
      if (e instanceof VirtqueueError) { this.irq!.needsReset(e); return; }
      throw e;
    }
    this.irq!.signalUsed(q);
  }
  reset(): void {
    this.resets++;
    this.queues = [];
    this.irq = undefined;
  }
}

function setup() {
  const mem = GuestMemory.ofSize(0x10000);
  const dev = new TestRng();
  const events: string[] = [];
  const errors: string[] = [];
  const core = new VirtioCore(dev, mem, {
    raiseQueueInterrupt: (q) => events.push(`queue${q}`),
    raiseConfigInterrupt: () => events.push('config'),
    guestError: (m) => errors.push(m),
  });
  const drv = new MockSplitQueue(mem, 8, { base: 0x1000 });
  return { mem, dev, core, drv, events, errors };
}

const V1 = featureBit(VIRTIO_F_VERSION_1);

/** Linux's virtio_dev_probe order: ACK, DRIVER, features, FEATURES_OK, queues, DRIVER_OK. */
function bringUp(core: VirtioCore, drv: MockSplitQueue, features = V1 | featureBit(VIRTIO_RING_F_INDIRECT_DESC)): void {
  core.writeStatus(ACK);
  core.writeStatus(ACK | DRIVER);
  core.writeDriverFeatures(features);
  core.writeStatus(ACK | DRIVER | FEATURES_OK);
  assert.equal(core.status & FEATURES_OK, FEATURES_OK, 'FEATURES_OK accepted');
  assert.ok(core.setQueueSize(0, drv.size));
  assert.ok(core.setQueueAddress(0, 'desc', BigInt(drv.desc)));
  assert.ok(core.setQueueAddress(0, 'avail', BigInt(drv.avail)));
  assert.ok(core.setQueueAddress(0, 'used', BigInt(drv.used)));
  assert.ok(core.setQueueEnable(0, true));
  core.writeStatus(ACK | DRIVER | FEATURES_OK | DRIVER_OK);
}

test('the probe sequence activates the device; notify, used buffers and the interrupt flow', () => {
  const { core, dev, drv, events } = setup();
  assert.equal(core.deviceFeatureWord(0), Number(VIRTIO_COMMON_FEATURES & 0xffffffffn) | 1);
  assert.equal(core.deviceFeatureWord(1), 1, 'VERSION_1 is bit 32');
  assert.equal(core.deviceFeatureWord(2), 0);
  assert.equal(core.queue(0)!.maxSize, 16);
  assert.equal(core.queue(0)!.size, 16, 'size reads as the maximum before the driver writes it');
  bringUp(core, drv);
  assert.equal(core.status, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
  assert.equal(dev.activations, 1);
  assert.equal(core.active, true);
  assert.equal(dev.features_, V1 | featureBit(VIRTIO_RING_F_INDIRECT_DESC));
  assert.equal(core.queue(0)!.indirectDesc, true);
  assert.equal(core.queue(0)!.eventIdx, false);

  const h = drv.addChain({ writable: [4, 4] });
  core.notifyQueue(0);
  assert.deepEqual(drv.popUsed(), { id: h, len: 8 });
  assert.deepEqual([...drv.written(h, 8)], new Array(8).fill(0x5a));
  assert.deepEqual(events, ['queue0']);
  const hi = drv.addChain({ writable: [3] }, { indirect: true });
  core.notifyQueue(0);
  assert.deepEqual(drv.popUsed(), { id: hi, len: 3 });
  core.notifyQueue(0);
  assert.deepEqual(events, ['queue0', 'queue0'], 'no interrupt without new used entries');
  core.notifyQueue(5);
});

test('EVENT_IDX negotiated reaches the queue and suppresses interrupts', () => {
  const { core, drv, events } = setup();
  bringUp(core, drv, V1 | featureBit(VIRTIO_RING_F_EVENT_IDX));
  assert.equal(core.queue(0)!.eventIdx, true);
  drv.setUsedEvent(1);
  drv.addChain({ writable: [1] });
  core.notifyQueue(0);
  assert.deepEqual(events, [], 'used idx 1 has not passed used_event 1');
  drv.addChain({ writable: [1] });
  core.notifyQueue(0);
  assert.deepEqual(events, ['queue0']);
});

test('feature negotiation: subset of offered, VERSION_1 required, device veto, frozen after FEATURES_OK', () => {
  {
    const { core } = setup();
    core.writeStatus(ACK | DRIVER);
    core.writeDriverFeatures(V1 | featureBit(VIRTIO_F_ACCESS_PLATFORM));
    core.writeStatus(ACK | DRIVER | FEATURES_OK);
    assert.equal(core.status & FEATURES_OK, 0, 'not offered');
    // the driver may retry with a good set
    core.writeDriverFeatures(V1);
    core.writeStatus(ACK | DRIVER | FEATURES_OK);
    assert.equal(core.status & FEATURES_OK, FEATURES_OK);
    assert.equal(core.negotiatedFeatures, V1);
    core.writeDriverFeatureWord(0, 1);
    assert.equal(core.driverFeatures, V1, 'frozen after FEATURES_OK');
  }
  {
    const { core } = setup();
    core.writeStatus(ACK | DRIVER);
    core.writeDriverFeatures(featureBit(VIRTIO_RING_F_INDIRECT_DESC));
    core.writeStatus(ACK | DRIVER | FEATURES_OK);
    assert.equal(core.status & FEATURES_OK, 0, 'legacy driver (no VERSION_1) refused');
  }
  {
    const { core, dev } = setup();
    dev.refuse = true;
    core.writeStatus(ACK | DRIVER);
    core.writeDriverFeatures(V1 | 1n);
    core.writeStatus(ACK | DRIVER | FEATURES_OK);
    assert.equal(core.status & FEATURES_OK, 0, 'device vetoed');
  }
  {
    const { core } = setup();
    core.writeStatus(ACK | DRIVER);
    core.writeDriverFeatureWord(1, 1);
    core.writeDriverFeatureWord(0, 1);
    core.writeDriverFeatureWord(7, 0);
    assert.equal(core.driverFeatureWord(0), 1);
    assert.equal(core.driverFeatureWord(1), 1);
    assert.equal(core.driverFeatures, V1 | 1n);
  }
});

test('status transitions: order enforced, no clearing without reset, 0 resets everything', () => {
  const { core, dev, drv } = setup();
  core.writeStatus(DRIVER);
  assert.equal(core.status, 0, 'DRIVER without ACKNOWLEDGE dropped');
  core.writeStatus(ACK | FEATURES_OK);
  assert.equal(core.status, ACK, 'FEATURES_OK without DRIVER dropped');
  core.writeStatus(ACK | DRIVER | DRIVER_OK);
  assert.equal(core.status, ACK | DRIVER, 'DRIVER_OK without FEATURES_OK dropped');
  assert.equal(dev.activations, 0);
  core.writeStatus(ACK);
  assert.equal(core.status, ACK | DRIVER, 'bits cannot be cleared');
  core.writeStatus(ACK | DRIVER | NEEDS_RESET);
  assert.equal(core.status & NEEDS_RESET, 0, 'the driver cannot set NEEDS_RESET');
  core.writeStatus(0);
  assert.equal(core.status, 0);

  bringUp(core, drv);
  drv.addChain({ writable: [4] });
  core.notifyQueue(0);
  const resetsBefore = dev.resets;
  core.writeStatus(0);
  assert.equal(dev.resets, resetsBefore + 1);
  assert.equal(core.status, 0);
  assert.equal(core.active, false);
  assert.equal(core.driverFeatures, 0n);
  const q = core.queue(0)!;
  assert.equal(q.ready, false);
  assert.equal(q.size, 16);
  assert.equal(q.descTable, 0n);
  assert.equal(q.nextAvailIdx, 0);
  // a fresh driver can bring it up again on a fresh ring
  const drv2 = new MockSplitQueue(core.mem, 8, { base: 0x4000 });
  bringUp(core, drv2);
  assert.equal(dev.activations, 2);
  const h = drv2.addChain({ writable: [2] });
  core.notifyQueue(0);
  assert.deepEqual(drv2.popUsed(), { id: h, len: 2 });
  core.writeStatus(core.status | FAILED);
  assert.equal(core.status & FAILED, FAILED);
  drv2.addChain({ writable: [2] });
  core.notifyQueue(0);
  assert.equal(drv2.popUsed(), undefined, 'no processing after FAILED');
});

test('queue configuration is refused when enabled, and after DRIVER_OK also sets NEEDS_RESET', () => {
  const { core, drv, events, errors } = setup();
  core.writeStatus(ACK | DRIVER);
  assert.equal(core.setQueueSize(3, 8), false, 'no such queue');
  core.setQueueSize(0, 8);
  core.setQueueEnable(0, true);
  assert.equal(core.setQueueSize(0, 4), false, 'enabled');
  assert.equal(core.queue(0)!.size, 8);
  assert.equal(core.setQueueEnable(0, false), false, 'disable is not allowed');
  assert.equal(core.status & NEEDS_RESET, 0);
  core.writeStatus(0);

  bringUp(core, drv);
  assert.deepEqual(events, []);
  assert.equal(core.setQueueAddress(0, 'desc', 0x8000n), false);
  assert.equal(core.queue(0)!.descTable, BigInt(drv.desc));
  assert.equal(core.status & NEEDS_RESET, NEEDS_RESET);
  assert.deepEqual(events, ['config']);
  drv.addChain({ writable: [1] });
  core.notifyQueue(0);
  assert.equal(drv.popUsed(), undefined, 'no processing in NEEDS_RESET');
  core.writeStatus(core.status);
  assert.equal(core.status & NEEDS_RESET, NEEDS_RESET, 'sticky until reset');
  core.writeStatus(0);
  assert.equal(core.status, 0);
  assert.ok(errors.length > 0);
});

test('a bad queue at DRIVER_OK sets NEEDS_RESET instead of activating', () => {
  const { core, dev, drv, events } = setup();
  core.writeStatus(ACK | DRIVER);
  core.writeDriverFeatures(V1);
  core.writeStatus(ACK | DRIVER | FEATURES_OK);
  core.setQueueSize(0, 8);
  core.setQueueAddress(0, 'desc', BigInt(drv.desc + 8)); // misaligned
  core.setQueueAddress(0, 'avail', BigInt(drv.avail));
  core.setQueueAddress(0, 'used', 0xffff_ffff_0000_0000n);
  core.setQueueEnable(0, true);
  core.writeStatus(ACK | DRIVER | FEATURES_OK | DRIVER_OK);
  assert.equal(dev.activations, 0);
  assert.equal(core.active, false);
  assert.equal(core.status & NEEDS_RESET, NEEDS_RESET);
  assert.deepEqual(events, ['config']);
});

test('a hostile chain makes the device report NEEDS_RESET through its interrupt', () => {
  const { core, drv, events } = setup();
  bringUp(core, drv);
  drv.setDesc(0, { addr: 0x100, len: 1, flags: VIRTQ_DESC_F_NEXT, next: 0 });
  drv.publish(0);
  core.notifyQueue(0);
  assert.equal(core.status & NEEDS_RESET, NEEDS_RESET);
  assert.deepEqual(events, ['config']);
  core.notifyQueue(0);
  assert.deepEqual(events, ['config'], 'once');
});

test('config space: bounds-checked access and generation changes', () => {
  const { core, dev, events } = setup();
  dev.cfg.setUint32(0, 0x11223344, true);
  assert.equal(core.readConfig(0, 4), 0x11223344);
  assert.equal(core.readConfig(1, 2), 0x2233);
  assert.equal(core.readConfig(6, 4), 0, 'past the end');
  assert.equal(core.readConfig(0, 3), 0, 'bad size');
  core.writeConfig(4, 4, 0xabcd);
  assert.equal(core.readConfig(4, 4), 0xabcd);
  core.writeConfig(8, 1, 1);
  const g = core.configGeneration;
  core.signalConfig();
  assert.equal(core.configGeneration, (g + 1) & 0xff);
  assert.deepEqual(events, [], 'no config interrupt before DRIVER_OK');
});

test('save and restore: a restored device goes on with the same queue indices; hostile saved state is refused', async () => {
  const { StateWriter, StateReader, SnapshotError } = await import('../snapshot/state.js');
  const { core, drv, mem } = setup();
  bringUp(core, drv, V1 | featureBit(VIRTIO_RING_F_EVENT_IDX));
  for (let i = 0; i < 3; i++) { drv.addChain({ writable: [2] }); core.notifyQueue(0); }
  assert.equal(drv.drainUsed().length, 3);
  const w = new StateWriter();
  core.saveState(w);
  const saved = JSON.parse(JSON.stringify(w.obj));
  // A chain the driver made while the VM was saved: the restore kicks the queue.
  const pending = drv.addChain({ writable: [4] });

  const dev2 = new TestRng();
  const core2 = new VirtioCore(dev2, mem, { raiseQueueInterrupt: () => {}, raiseConfigInterrupt: () => {} });
  core2.restoreState(new StateReader(saved, 'virtio'));
  assert.equal(core2.status, core.status);
  assert.equal(core2.active, true);
  assert.equal(dev2.activations, 1, 'the device was activated again');
  assert.equal(core2.queue(0)!.nextAvailIdx, 3);
  assert.equal(core2.queue(0)!.eventIdx, true);
  core2.kickQueues();
  assert.deepEqual(drv.popUsed(), { id: pending, len: 4 }, 'the restored device served the chain at index 3');

  const refuse = (edit: (s: any) => void, re: RegExp) => {
    const s = JSON.parse(JSON.stringify(saved));
    edit(s);
    const c = new VirtioCore(new TestRng(), mem, { raiseQueueInterrupt: () => {}, raiseConfigInterrupt: () => {} });
    assert.throws(() => c.restoreState(new StateReader(s, 'virtio')), (e: unknown) => e instanceof SnapshotError && re.test((e as Error).message));
  };
  refuse((s) => { s.queues[0]['nextAvail$u16'] = 3 + 9; }, /in flight exceed size 8/);
  refuse((s) => { s.queues[0]['size$u16'] = 3; }, /queues\[0\]/);
  refuse((s) => { s.queues[0]['desc$u64'] = 'fffffffffffff000'; }, /queues\[0\]/);
  refuse((s) => { s.queues.push(s.queues[0]); }, /2 entries, at most 1/);
  refuse((s) => { s['negotiated$u64'] = 'ffffffffffffffff'; }, /does not offer/);
  refuse((s) => { s['status$u8'] = ACK; }, /must have status DRIVER_OK/);
  refuse((s) => { s.queues[0]['maxSize$u16'] = 32; }, /maxSize 32/);
});
