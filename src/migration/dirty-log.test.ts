import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Vm } from '../kvm/kvm.js';
import { DirtyLog } from './dirty-log.js';
import { PAGE } from './ram-pages.js';

test('harvest: KVM\'s logs of every slot (one not 32-page aligned) and the devices\' map, joined in page order; then all clear', () => {
  // slot 0: pages 0-39; slot 1: pages 40-199 (its bit 0 is page 40)
  const slots = [{ slot: 0, gpa: 0, size: 40 * PAGE, ramOffset: 0, hostAddr: 0n }, { slot: 1, gpa: 1 << 30, size: 160 * PAGE, ramOffset: 40 * PAGE, hostAddr: 0n }];
  const logs = new Map<number, number[]>([[0, [0, 31, 32, 39]], [1, [0, 1, 23, 24, 100, 159]]]);
  const vm = {
    getDirtyLog: (slot: number, bm: Buffer) => {
      bm.fill(0);
      for (const b of logs.get(slot) ?? []) bm[b >> 3]! |= 1 << (b & 7);
      logs.delete(slot);
    },
    setUserMemoryRegion: () => {},
  } as unknown as Vm;
  const map = new Uint8Array(new SharedArrayBuffer(200));
  const log = new DirtyLog(vm, slots, map);
  map[5] = 1; // forgotten by start()
  log.start();
  for (const p of [3, 31, 64, 199]) map[p] = 1;
  assert.deepEqual([...log.harvest()], [0, 3, 31, 32, 39, 40, 41, 63, 64, 140, 199]);
  assert.ok(map.every((x) => x === 0), 'the devices\' map is cleared');
  assert.deepEqual([...log.harvest()], []);
});
