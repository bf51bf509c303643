/**
 * Transitional virtio-pci: PCI identity, the legacy I/O BAR driven by a
 * 0.9.5-style driver (the mock driver's legacy layout), the modern
 * interface still on BAR 4, and hostile traffic on the legacy registers
 * between valid requests (testing.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../memory/guest-memory.js';
import { Bus } from '../../bus/bus.js';
import { mmioAllocator, type DeviceContext } from '../../pci/device.js';
import { VirtioPci } from './transport.js';
import { VirtioRnd } from '../../devices/virtio-rnd.js';
import { VirtioBlk } from '../../devices/virtio-blk/device.js';
import { MockSplitQueue } from '../testing/mock-driver.js';
import { VIRTIO_F_VERSION_1, featureBit } from '../constants.js';
import { assertExercised, fuzzVirtioPci, LEGACY_MIN, rndWork } from './testing.js';

const IO = 0x6000, MSIX = 0xc0004000, MODERN = 0xc0000000;
const ACK = 1, DRIVER = 2, DRIVER_OK = 4, FEATURES_OK = 8;

function setup(make: (ctx: DeviceContext) => VirtioPci) {
  const mem = GuestMemory.ofSize(1 << 20);
  const mmio = new Bus('mmio'), pio = new Bus('pio');
  const intx: boolean[] = [];
  const msis: number[] = [];
  let errors = 0;
  const ctx: DeviceContext = {
    mem, pio, mmio,
    irq: () => ({ set: (l) => { intx.push(l); } }),
    msi: (_a, d) => { msis.push(d); },
    guestError: () => { errors++; },
    allocMmio: mmioAllocator(0xc0000000, 0xfec00000),
    allocPio: mmioAllocator(0x6000, 0x10000),
  };
  const fn = make(ctx);
  return { mem, mmio, pio, fn, intx, msis, errors: () => errors };
}

function msixCap(fn: VirtioPci): number {
  for (let p = fn.config.read(0x34, 1); p; p = fn.config.read(p + 1, 1)) if (fn.config.read(p, 1) === 0x11) return p;
  throw new Error('no MSI-X capability');
}

/** A legacy driver's bring-up of queue 0 at `q`'s pages; returns the features it read. */
function legacyInit(pio: Bus, q: MockSplitQueue, guestFeatures?: (host: number) => number, vectors?: () => void): number {
  pio.write(IO + 0x12, 1, 0);
  pio.write(IO + 0x12, 1, ACK);
  pio.write(IO + 0x12, 1, ACK | DRIVER);
  const host = pio.read(IO + 0x00, 4);
  pio.write(IO + 0x04, 4, guestFeatures ? guestFeatures(host) : host);
  pio.write(IO + 0x0e, 2, 0);
  assert.equal(pio.read(IO + 0x0c, 2), q.size, 'legacy queue size is the device maximum');
  pio.write(IO + 0x08, 4, q.pfn);
  vectors?.(); // Linux sets the MSI-X vectors after the reset, with the queues
  pio.write(IO + 0x12, 1, ACK | DRIVER | DRIVER_OK);
  return host;
}

test('a transitional device: ID 0x1000+legacy id, subsystem = virtio type, revision 0, I/O BAR 0, modern caps in BAR 4', () => {
  const { fn } = setup((ctx) => new VirtioPci(ctx, new VirtioRnd(), { slot: 4 }, 'rnd', { transitional: true }));
  assert.equal(fn.config.read(0x00, 2), 0x1af4);
  assert.equal(fn.config.read(0x02, 2), 0x1005);
  assert.equal(fn.config.read(0x08, 1), 0, 'revision 0 (legacy drivers check it)');
  assert.equal(fn.config.read(0x2e, 2), 4, 'subsystem id = VIRTIO_ID_RNG');
  assert.equal(fn.config.read(0x10, 4), IO | 1, 'BAR 0 is an I/O BAR');
  assert.equal(fn.config.read(0x04, 2) & 3, 3, 'I/O and memory decoding on');
  assert.equal(fn.config.read(0x20, 4), MODERN, 'BAR 4: the modern registers');
  const bars: number[] = [];
  for (let p = fn.config.read(0x34, 1); p; p = fn.config.read(p + 1, 1)) if (fn.config.read(p, 1) === 0x09) bars.push(fn.config.read(p + 4, 1));
  assert.deepEqual(bars, [4, 4, 4, 4], 'every virtio capability points at BAR 4');
  // I/O BAR sizing: writing all-ones reads back the size mask with the I/O bit
  fn.config.write(0x10, 4, 0xffffffff);
  assert.equal(fn.config.read(0x10, 4) >>> 0, 0xffffffe1);
  const modern = setup((ctx) => new VirtioPci(ctx, new VirtioRnd(), { slot: 4 }, 'rnd'));
  assert.equal(modern.fn.config.read(0x02, 2), 0x1044);
  assert.equal(modern.fn.config.read(0x08, 1), 1);
});

test('legacy virtio-rnd: features without VERSION_1, queue by PFN, notify by port, INTx with ISR', () => {
  const rnd = new VirtioRnd();
  const s = setup((ctx) => new VirtioPci(ctx, rnd, { slot: 4 }, 'rnd', { transitional: true }));
  const q = new MockSplitQueue(s.mem, 64, { base: 0x10000, legacy: true });
  assert.equal(q.used % 4096, 0);
  const host = legacyInit(s.pio, q);
  assert.equal(s.pio.read(IO + 0x12, 1), ACK | DRIVER | DRIVER_OK);
  assert.equal(s.fn.core.legacy, true);
  assert.ok(s.fn.core.active);
  assert.equal(s.fn.core.negotiatedFeatures, BigInt(host));
  assert.equal(s.pio.read(IO + 0x08, 4), q.pfn);
  const head = q.addChain({ writable: [32] });
  s.pio.write(IO + 0x10, 2, 0);
  const used = q.drainUsed();
  assert.deepEqual(used, [{ id: head, len: 32 }]);
  assert.notDeepEqual([...q.written(head, 32)], new Array(32).fill(0xee));
  assert.equal(s.intx.at(-1), true, 'INTx raised');
  assert.equal(s.pio.read(IO + 0x13, 1), 1, 'ISR: queue interrupt');
  assert.equal(s.intx.at(-1), false, 'reading ISR lowers INTx');
  assert.equal(s.pio.read(IO + 0x13, 1), 0);
  // reset through the legacy status register, then the PFN can be cleared
  s.pio.write(IO + 0x12, 1, 0);
  assert.equal(s.fn.core.active, false);
  s.pio.write(IO + 0x08, 4, 0);
  assert.equal(s.pio.read(IO + 0x08, 4), 0);
});

test('legacy: features outside the offered set keep DRIVER_OK from being set; FEATURES_OK is not a legacy bit', () => {
  const s = setup((ctx) => new VirtioPci(ctx, new VirtioRnd(), { slot: 4 }, 'rnd', { transitional: true }));
  const q = new MockSplitQueue(s.mem, 64, { base: 0x10000, legacy: true });
  legacyInit(s.pio, q, () => 0x8000_0000 | 1 << 20);
  assert.equal(s.pio.read(IO + 0x12, 1) & DRIVER_OK, 0);
  assert.equal(s.fn.core.active, false);
  s.pio.write(IO + 0x12, 1, ACK | DRIVER | FEATURES_OK);
  assert.equal(s.pio.read(IO + 0x12, 1) & FEATURES_OK, 0);
});

test('legacy virtio-blk: device config at 0x14, at 0x18 with MSI-X; a write lands in the file and reads back', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-legacy-'));
  const img = join(dir, 'disk.img');
  writeFileSync(img, Buffer.alloc(1 << 20));
  const blk = new VirtioBlk({ path: img });
  const s = setup((ctx) => new VirtioPci(ctx, blk, { slot: 5 }, 'blk', { transitional: true }));
  try {
    assert.equal(s.fn.config.read(0x02, 2), 0x1001);
    const cap = () => s.pio.read(IO + 0x14, 4) + s.pio.read(IO + 0x18, 4) * 2 ** 32;
    assert.equal(cap(), 2048, 'capacity (512-byte sectors) at 0x14 without MSI-X');
    // with MSI-X enabled: two vector registers, the config moves to 0x18
    s.fn.config.write(msixCap(s.fn) + 2, 2, 0x8000);
    assert.equal(s.pio.read(IO + 0x18, 4), 2048);
    s.mmio.write(MSIX + 16, 4, 0xfee00000); s.mmio.write(MSIX + 24, 4, 0x51); s.mmio.write(MSIX + 28, 4, 0);
    const q = new MockSplitQueue(s.mem, 256, { base: 0x10000, legacy: true });
    legacyInit(s.pio, q, undefined, () => {
      s.pio.write(IO + 0x14, 2, 0);
      assert.equal(s.pio.read(IO + 0x14, 2), 0, 'config vector');
      s.pio.write(IO + 0x16, 2, 1);
      assert.equal(s.pio.read(IO + 0x16, 2), 1, 'queue vector');
    });
    assert.ok(s.fn.core.active);
    const data = Buffer.alloc(1024, 0x5a);
    const hdr = Buffer.alloc(16); hdr.writeUInt32LE(1, 0); hdr.writeBigUInt64LE(4n, 8); // OUT at sector 4
    const w = q.addChain({ readable: [hdr, data], writable: [1] });
    s.pio.write(IO + 0x10, 2, 0);
    assert.deepEqual(q.drainUsed(), [{ id: w, len: 1 }]);
    assert.equal(q.written(w, 1)[0], 0, 'VIRTIO_BLK_S_OK');
    assert.deepEqual(s.msis, [0x51], 'completion on the queue vector');
    assert.deepEqual(readFileSync(img).subarray(2048, 3072), data);
    const rh = Buffer.alloc(16); rh.writeUInt32LE(0, 0); rh.writeBigUInt64LE(4n, 8); // IN
    const r = q.addChain({ readable: [rh], writable: [1024, 1] });
    s.pio.write(IO + 0x10, 2, 0);
    assert.deepEqual(q.drainUsed(), [{ id: r, len: 1025 }]);
    assert.deepEqual(Buffer.from(q.written(r, 1024)), data);
  } finally {
    blk.destroy();
  }
});

test('a modern driver still works on a transitional device (BAR 4), and must accept VERSION_1', () => {
  const s = setup((ctx) => new VirtioPci(ctx, new VirtioRnd(), { slot: 4 }, 'rnd', { transitional: true }));
  const w = (o: number, sz: number, v: number) => s.mmio.write(MODERN + o, sz, v);
  w(0x14, 1, 0); w(0x14, 1, 1); w(0x14, 1, 3);
  w(0x08, 4, 1); w(0x0c, 4, 1);
  w(0x14, 1, 0x0b);
  assert.equal(s.mmio.read(MODERN + 0x14, 1) & FEATURES_OK, FEATURES_OK);
  assert.equal(s.fn.core.legacy, false);
  assert.equal(s.fn.core.negotiatedFeatures & featureBit(VIRTIO_F_VERSION_1), featureBit(VIRTIO_F_VERSION_1));
  // legacy writes cannot switch an initialised driver to the other interface
  s.pio.write(IO + 0x04, 4, 0);
  assert.equal(s.fn.core.legacy, false);
});

test('hostile traffic on the legacy registers between valid requests (virtio-rnd; virtio-blk\'s run is in devices/virtio-blk/pci.fuzz.test.ts)', (t) => {
  const res = fuzzVirtioPci(new VirtioRnd(), rndWork, { seed: 0x1e6ac7, steps: 20_000, legacy: true, irqfd: false });
  t.diagnostic(JSON.stringify({ ...res, violations: res.violations.length }));
  assertExercised(res, LEGACY_MIN);
});

test('`legacy` in -s and pci.B.S.F.virtio.transitional both make a device transitional', async () => {
  await import('../../devices/all.js');
  const { ConfigTree } = await import('../../config/tree.js');
  const { parsePciSlotOption } = await import('../../cli/args.js');
  const { virtioPciOptions } = await import('./transport.js');
  const c = new ConfigTree();
  parsePciSlotOption(c, '5,virtio-blk,/tmp/x.img,ro,legacy');
  parsePciSlotOption(c, '4,virtio-rnd,legacy');
  parsePciSlotOption(c, '6,virtio-console,legacy,a=/tmp/a.sock');
  parsePciSlotOption(c, '7,virtio-rnd');
  c.set('pci.0.8.0.device', 'virtio-rnd');
  c.set('pci.0.8.0.virtio.transitional', 'true');
  const t = (slot: number) => virtioPciOptions(c.node(`pci.0.${slot}.0`)!).transitional;
  assert.deepEqual([t(5), t(4), t(6), t(7), t(8)], [true, true, true, false, true]);
  assert.equal(c.get('pci.0.5.0.path'), '/tmp/x.img');
  assert.equal(c.get('pci.0.6.0.port.0.name'), 'a');
});
