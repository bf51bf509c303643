/**
 * A hostile driver on the modern virtio-pci interface: each episode brings
 * the device to DRIVER_OK with real queues (testing.ts), then mixes valid
 * requests with hostile register writes, chains, MSI-X reprogramming, BAR
 * moves and memory scribbles. The transport and device must never throw,
 * must keep serving valid requests correctly, and every interrupt must use a
 * vector the driver programmed. (virtio-blk's run is with its tests:
 * devices/virtio-blk/pci.fuzz.test.ts.)
 */
import { test } from 'node:test';
import { VirtioRnd } from '../../devices/virtio-rnd.js';
import { assertExercised, fuzzVirtioPci, MODERN_MIN, rndWork } from './testing.js';

for (const irqfd of [true, false]) {
  test(`virtio-rnd, modern interface, ${irqfd ? 'irqfd vectors' : 'KVM_SIGNAL_MSI'}: hostile traffic between valid requests`, (t) => {
    const res = fuzzVirtioPci(new VirtioRnd(), rndWork, { seed: irqfd ? 0x5eed : 0x5eee, steps: 40_000, irqfd });
    t.diagnostic(JSON.stringify({ ...res, violations: res.violations.length }));
    assertExercised(res, MODERN_MIN);
  });
}
