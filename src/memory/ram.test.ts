/**
 * Guest RAM: anonymous, aligned for huge pages, and the data ranges a save
 * writes (the pages touched; never one the guest wrote left out).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createGuestRam } from './ram.js';

const MiB = 2 ** 20;

test('guest RAM starts 2 MiB aligned and reads as zeros', () => {
  const ram = createGuestRam(6 * MiB + 4096);
  try {
    assert.equal(ram.hostAddr % BigInt(2 * MiB), 0n);
    assert.equal(ram.bytes.length, 6 * MiB + 4096);
    assert.ok(ram.bytes.every((b) => b === 0));
  } finally {
    ram.close();
  }
});

test('data ranges: every page written is in one, untouched 2 MiB regions are not', () => {
  const ram = createGuestRam(16 * MiB + 4096);
  try {
    assert.deepEqual(ram.dataRanges(), [], 'fresh RAM has no data');
    const written = [0x1000, 0x100123, 0x9ff000, 16 * MiB + 100];
    for (const off of written) ram.bytes[off] = 0xa5;
    const ranges = ram.dataRanges();
    const inRange = (off: number) => ranges.some(([a, b]) => a <= off && off < b);
    for (const off of written) assert.ok(inRange(off), `written byte at 0x${off.toString(16)} is in a data range`);
    // a huge page covers at most the 2 MiB around a written byte
    for (const off of [4 * MiB, 7 * MiB, 12 * MiB]) assert.ok(!inRange(off), `untouched 0x${off.toString(16)} is not`);
    for (const [a, b] of ranges) assert.ok(a < b && b <= ram.size && a % 4096 === 0, `[${a}, ${b}) is page aligned, within RAM`);
    for (let i = 1; i < ranges.length; i++) assert.ok(ranges[i]![0] > ranges[i - 1]![1], 'sorted, apart');
  } finally {
    ram.close();
  }
});

test('data ranges without the pagemap: the whole RAM', () => {
  const ram = createGuestRam(2 * MiB);
  ram.close();
  ram.bytes[5] = 1;
  assert.deepEqual(ram.dataRanges(), [[0, 2 * MiB]]);
});
