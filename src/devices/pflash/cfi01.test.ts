import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Cfi01Flash, CMD, Mode, Pending, SR, type Cfi01Hooks } from './cfi01.js';

const BLOCK = 0x1000;

/** A flash over `blocks` blocks of a pattern, with hooks that record what they are told. */
function flash(blocks = 4) {
  const storage = new Uint8Array(blocks * BLOCK).map((_, i) => (i * 7 + 3) & 0xff);
  const log = { array: [] as boolean[], changed: [] as [number, number][], settles: 0, errors: [] as string[] };
  const hooks: Cfi01Hooks = {
    arrayMode: (on) => log.array.push(on),
    changed: (o, l) => log.changed.push([o, l]),
    settle: () => { log.settles++; },
    guestError: (m) => log.errors.push(m),
  };
  return { f: new Cfi01Flash(storage, BLOCK, hooks), storage, log };
}

/** OVMF's QemuFlashDetected (OvmfPkg/QemuFlashFvbServicesRuntimeDxe/QemuFlash.c), over the bus device. */
function ovmfProbe(f: Cfi01Flash): 'flash' | 'ram' | 'rom' | 'none' {
  let off = 0;
  for (; off < BLOCK; off++) {
    const b = f.read(off, 1);
    if (b !== 0x50 && b !== 0x70 && b !== 0x00) break;
  }
  if (off >= BLOCK) return 'none';
  const original = f.read(off, 1);
  f.write(off, 1, CMD.CLEAR_STATUS);
  let probe = f.read(off, 1);
  if (original !== CMD.CLEAR_STATUS && probe === CMD.CLEAR_STATUS) return 'ram';
  f.write(off, 1, CMD.READ_STATUS);
  probe = f.read(off, 1);
  if (probe === original) return 'rom';
  if (probe === CMD.READ_STATUS) return 'ram';
  if (probe === 0x00) { f.write(off, 1, CMD.READ_ARRAY); return 'flash'; }
  return 'none';
}

/** OVMF's QemuFlashWrite: 0x10 and the byte, for each byte, then read array. */
function ovmfWrite(f: Cfi01Flash, off: number, data: number[]): void {
  for (let i = 0; i < data.length; i++) { f.write(off + i, 1, CMD.PROGRAM); f.write(off + i, 1, data[i]!); }
  if (data.length > 0) f.write(off + data.length - 1, 1, CMD.READ_ARRAY);
}

test("OVMF's probe finds flash, and leaves it in read-array mode with the data unchanged", () => {
  const { f, storage, log } = flash();
  const before = storage.slice();
  assert.equal(ovmfProbe(f), 'flash');
  assert.ok(f.readsArray);
  assert.deepEqual(storage, before);
  assert.deepEqual(log.array, [false, true], 'the slot goes away for the status read and comes back');
  assert.deepEqual(log.errors, []);
});

test("OVMF's probe skips bytes that look like commands or cleared status", () => {
  const { f, storage } = flash();
  storage.fill(0x00, 0, 10); storage[10] = 0x50; storage[11] = 0x70;
  assert.equal(ovmfProbe(f), 'flash');
});

test('program bytes the way OVMF does: status reads in between, then read array', () => {
  const { f, storage, log } = flash();
  f.write(0x100, 1, CMD.PROGRAM);
  assert.equal(f.read(0x100, 1), SR.READY, 'a pending program reads status');
  assert.ok(!f.readsArray);
  f.write(0x100, 1, 0x5a);
  assert.equal(f.read(0x100, 1), SR.READY, 'after programming: status until read array');
  assert.equal(log.settles, 0, 'nothing made durable in the middle of a sequence');
  ovmfWrite(f, 0x101, [1, 2, 3]);
  assert.equal(storage[0x100], 0x5a);
  assert.deepEqual([...storage.subarray(0x101, 0x104)], [1, 2, 3]);
  assert.equal(f.read(0x101, 4), (storage[0x104]! << 24 | 0x030201) >>> 0, 'array reads are little-endian');
  assert.deepEqual(log.changed, [[0x100, 1], [0x101, 1], [0x102, 1], [0x103, 1]]);
  assert.equal(log.settles, 1);
  assert.deepEqual(log.array, [false, true]);
});

test('0x40 programs as 0x10 does; a wider write programs as many bytes', () => {
  const { f, storage } = flash();
  f.write(0x10, 1, CMD.PROGRAM_ALT); f.write(0x10, 4, 0xddccbbaa);
  f.write(0, 1, CMD.READ_ARRAY);
  assert.deepEqual([...storage.subarray(0x10, 0x14)], [0xaa, 0xbb, 0xcc, 0xdd]);
});

test('block erase: 0x20 then 0xD0 erases the block holding the address, reads status until read array', () => {
  const { f, storage, log } = flash();
  const before = storage.slice();
  f.write(BLOCK + 0x123, 1, CMD.ERASE);
  assert.equal(storage[BLOCK], before[BLOCK], 'nothing erased before the confirmation');
  f.write(BLOCK + 0x123, 1, CMD.CONFIRM);
  assert.ok(storage.subarray(BLOCK, 2 * BLOCK).every((b) => b === 0xff));
  assert.deepEqual(storage.subarray(0, BLOCK), before.subarray(0, BLOCK));
  assert.deepEqual(storage.subarray(2 * BLOCK), before.subarray(2 * BLOCK));
  assert.equal(f.read(BLOCK, 1), SR.READY);
  assert.deepEqual(log.changed, [[BLOCK, BLOCK]]);
  assert.equal(log.settles, 1, 'an erase is made durable when it completes');
  // OVMF erases the next block at once, without read array in between.
  f.write(2 * BLOCK, 1, CMD.ERASE); f.write(2 * BLOCK, 1, CMD.CONFIRM);
  assert.ok(storage.subarray(2 * BLOCK, 3 * BLOCK).every((b) => b === 0xff));
  f.write(0, 1, CMD.READ_ARRAY);
  assert.equal(f.read(0, 1), before[0]);
  assert.deepEqual(log.errors, []);
});

test('erase cancelled by read array erases nothing; any other second cycle is a sequence error', () => {
  const { f, storage, log } = flash();
  const before = storage.slice();
  f.write(0, 1, CMD.ERASE); f.write(0, 1, CMD.READ_ARRAY);
  assert.ok(f.readsArray);
  assert.deepEqual(storage, before);
  f.write(0, 1, CMD.ERASE); f.write(0, 1, 0x12);
  assert.deepEqual(storage, before);
  assert.ok(f.readsArray, 'back in read-array mode');
  f.write(0, 1, CMD.READ_STATUS);
  assert.equal(f.read(0, 1), SR.READY | SR.SEQUENCE_ERROR);
  assert.equal(log.errors.length, 1);
  f.write(0, 1, CMD.CLEAR_STATUS);
  f.write(0, 1, CMD.READ_STATUS);
  assert.equal(f.read(0, 1), 0, 'clear status clears every bit, as QEMU (OVMF checks for 0x00)');
});

test('unknown commands: read-array mode, error status, reported', () => {
  const { f, log } = flash();
  f.write(0, 1, CMD.READ_STATUS);
  f.write(7, 1, 0xe8); // write to buffer: not offered
  assert.ok(f.readsArray);
  f.write(0, 1, CMD.READ_STATUS);
  assert.equal(f.read(0, 1) & SR.SEQUENCE_ERROR, SR.SEQUENCE_ERROR);
  assert.match(log.errors[0]!, /unsupported command 0xe8/);
});

test('read identifier and CFI query, then read array', () => {
  const { f, storage } = flash(132);
  f.write(0, 1, CMD.READ_ID);
  assert.equal(f.read(0, 1), 0x89);
  assert.equal(f.read(1, 1), 0x18);
  assert.equal(f.read(2, 1), 0);
  assert.equal(f.read(0x1000, 1), 0x89, 'the identifier repeats every 256 bytes');
  f.write(0, 1, CMD.CFI_QUERY);
  assert.equal(String.fromCharCode(f.read(0x10, 1), f.read(0x11, 1), f.read(0x12, 1)), 'QRY');
  assert.equal(f.read(0x13, 2), 0x0001, 'Intel/Sharp command set');
  assert.equal(f.read(0x2c, 1), 1, 'one erase region');
  assert.equal(f.read(0x2d, 2) + 1, 132, 'block count');
  assert.equal(f.read(0x2f, 2) * 256, BLOCK, 'block size');
  assert.equal(f.read(0x2a, 1), 0, 'no write buffer');
  f.write(0, 1, CMD.READ_ARRAY);
  assert.equal(f.read(0, 1), storage[0]);
});

test('block lock commands are accepted and lock nothing', () => {
  const { f, storage, log } = flash();
  f.write(0, 1, CMD.LOCK_SETUP); f.write(0, 1, 0x01);
  assert.equal(f.read(0, 1), SR.READY);
  ovmfWrite(f, 0, [0x42]);
  assert.equal(storage[0], 0x42);
  assert.deepEqual(log.errors, []);
});

test('accesses at the last bytes stay inside the store', () => {
  const { f, storage } = flash(1);
  assert.equal(f.read(BLOCK - 1, 4), (storage[BLOCK - 1]! | 0xffffff00) >>> 0);
  f.write(BLOCK - 1, 1, CMD.PROGRAM); f.write(BLOCK - 1, 4, 0x11223344);
  f.write(0, 1, CMD.READ_ARRAY);
  assert.equal(storage[BLOCK - 1], 0x44);
  assert.equal(storage.length, BLOCK);
});

test('state round trip: a saved mode is restored and the hooks told which way reads go', () => {
  const { f } = flash();
  f.write(0, 1, CMD.ERASE);
  const s = f.state;
  assert.deepEqual(s, { mode: Mode.ARRAY, pending: Pending.ERASE, status: SR.READY });
  const { f: g, log } = flash();
  g.setState(s);
  assert.deepEqual(log.array, [false]);
  assert.equal(g.read(0, 1), SR.READY);
  g.write(0, 1, CMD.CONFIRM);
  assert.equal(g.storage[0], 0xff, 'the restored flash finishes the erase');
});

test('fuzz: 10^5 random accesses never throw, stay inside the store, and the hooks stay consistent', () => {
  const { f, storage, log } = flash(8);
  let seed = 0x2545f491;
  const rnd = (n: number) => { seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5; return (seed >>> 0) % n; };
  const cmds = [0xff, 0x10, 0x40, 0x20, 0xd0, 0x50, 0x70, 0x90, 0x98, 0x60, 0x01, 0x00, 0xf0, 0xe8];
  let mapped = true;
  for (let i = 0; i < 100_000; i++) {
    const size = [1, 2, 4, 8][rnd(4)]!;
    const off = rnd(storage.length);
    if (rnd(2)) {
      const v = rnd(3) ? cmds[rnd(cmds.length)]! : rnd(0x100000000);
      const before = log.array.length;
      f.write(off, size, v);
      if (log.array.length > before) mapped = log.array.at(-1)!;
    } else {
      const v = f.read(off, size);
      assert.ok(Number.isInteger(v) && v >= 0 && v <= 0xffffffff);
    }
    assert.equal(mapped, f.readsArray, `hooks out of step after access ${i}`);
    assert.equal(storage.length, 8 * BLOCK);
  }
  assert.ok(log.changed.every(([o, l]) => o >= 0 && l > 0 && o + l <= storage.length));
  // Whatever the fuzzing left, the documented recovery works.
  f.write(0, 1, CMD.READ_ARRAY);
  assert.ok(f.readsArray);
  assert.equal(ovmfProbe(f), 'flash');
});
