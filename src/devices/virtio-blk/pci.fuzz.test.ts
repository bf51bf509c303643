/**
 * virtio-blk under the hostile virtio-pci driver (virtio/pci/testing.ts), on
 * a read-only image, through the modern interface and the legacy one of a
 * transitional device: reads checked, writes refused, every interrupt one
 * the driver programmed, and the image stays bit-identical.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assertExercised, fuzzVirtioPci, LEGACY_MIN, MODERN_MIN } from '../../virtio/pci/testing.js';
import { readOnlyDisk } from './testing.js';

test('virtio-blk on a read-only image, modern interface: reads checked, writes refused, the image stays bit-identical', (t) => {
  const disk = readOnlyDisk();
  const before = disk.sha256();
  try {
    const res = fuzzVirtioPci(disk.dev, disk.work, { seed: 0xb10c, steps: 30_000, irqfd: true });
    t.diagnostic(JSON.stringify({ ...res, violations: res.violations.length }));
    assertExercised(res, MODERN_MIN);
    assert.equal(disk.sha256(), before);
  } finally {
    disk.dev.destroy();
  }
});

test('virtio-blk on a read-only image, hostile traffic on the legacy registers between valid requests: the image stays bit-identical', (t) => {
  const disk = readOnlyDisk();
  const before = disk.sha256();
  try {
    const res = fuzzVirtioPci(disk.dev, disk.work, { seed: 0x1e6ac8, steps: 20_000, legacy: true, irqfd: true });
    t.diagnostic(JSON.stringify({ ...res, violations: res.violations.length }));
    assertExercised(res, LEGACY_MIN);
    assert.equal(disk.sha256(), before);
  } finally {
    disk.dev.destroy();
  }
});
