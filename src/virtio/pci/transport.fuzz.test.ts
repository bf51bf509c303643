/**
 * A hostile driver on the modern virtio-pci interface: each episode brings
 * the device to DRIVER_OK with real queues (testing.ts), then mixes valid
 * requests with hostile register writes, chains, MSI-X reprogramming, BAR
 * moves and memory scribbles. The transport and device must never throw,
 * must keep serving valid requests correctly, and every interrupt must use a
 * vector the driver programmed; a read-only image stays bit-identical.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VirtioRnd } from '../../devices/virtio-rnd.js';
import { assertExercised, fuzzVirtioPci, readOnlyDisk, rndWork } from './testing.js';

/** Measured at about twice these (the seeds are fixed): a change that stops the traffic fails here. */
const MIN = { activations: 500, notifies: 10_000, completed: 8000, msis: 4000, guestErrors: 500 };

for (const irqfd of [true, false]) {
  test(`virtio-rnd, modern interface, ${irqfd ? 'irqfd vectors' : 'KVM_SIGNAL_MSI'}: hostile traffic between valid requests`, (t) => {
    const res = fuzzVirtioPci(new VirtioRnd(), rndWork, { seed: irqfd ? 0x5eed : 0x5eee, steps: 40_000, irqfd });
    t.diagnostic(JSON.stringify({ ...res, violations: res.violations.length }));
    assertExercised(res, MIN);
  });
}

test('virtio-blk on a read-only image, modern interface: reads checked, writes refused, the image stays bit-identical', (t) => {
  const disk = readOnlyDisk();
  const before = disk.sha256();
  try {
    const res = fuzzVirtioPci(disk.dev, disk.work, { seed: 0xb10c, steps: 30_000, irqfd: true });
    t.diagnostic(JSON.stringify({ ...res, violations: res.violations.length }));
    assertExercised(res, MIN);
    assert.equal(disk.sha256(), before);
  } finally {
    disk.dev.destroy();
  }
});
