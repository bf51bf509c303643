import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Bus } from '../../bus/bus.js';
import { MEM_READONLY } from '../../kvm/abi.js';
import { UserError } from '../../errors.js';
import { StateReader, StateWriter, SnapshotError } from '../../snapshot/state.js';
import { CMD, SR } from './cfi01.js';
import { createFirmwareFlash, varsSizeFor, type FirmwareFlash, type MapMemory } from './flash.js';
import { checkFirmwareFiles } from '../firmware.js';

const OVMF = '/usr/share/OVMF';
const CODE_4M = 0x37c000, VARS_4M = 0x84000;

/** The VM's mapMemory, keeping the mapped slots by guest address. */
function fakeMap() {
  const slots = new Map<number, { gpa: number; size: number; flags: number }>();
  const map: MapMemory = (gpa, size, _host, opts) => {
    slots.set(gpa, { gpa, size, flags: opts.readOnly ? MEM_READONLY : 0 });
    return { unmap: () => slots.delete(gpa) };
  };
  return { map, slots };
}

function tmp(): string { return mkdtempSync(join(tmpdir(), 'tshyve-pflash-')); }
const pattern = (n: number, k: number) => Buffer.from(new Uint8Array(n).map((_, i) => (i * k + 1) & 0xff));

async function make(dir: string, opts: { rom?: number; vars?: Buffer | 'none'; romName?: string } = {}) {
  const romPath = join(dir, opts.romName ?? 'OVMF_CODE_4M.fd');
  if (!existsSync(romPath)) writeFileSync(romPath, pattern(opts.rom ?? CODE_4M, 3));
  let varsPath: string | undefined;
  if (opts.vars !== 'none') {
    varsPath = join(dir, 'vm.vars');
    if (!existsSync(varsPath)) writeFileSync(varsPath, opts.vars ?? pattern(VARS_4M, 5));
  }
  const bus = new Bus('mmio');
  const { map, slots } = fakeMap();
  checkFirmwareFiles(romPath, varsPath);
  const flash = await createFirmwareFlash({ romPath, varsPath, map, bus, guestError: () => {} });
  return { flash, bus, slots, romPath, varsPath };
}

/** devices/firmware.ts's checks, which run before the flash is built. */
const check = async (rom: string, vars: string | undefined) => checkFirmwareFiles(rom, vars);

async function refused(p: Promise<unknown>, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof UserError && re.test(e.message) && !e.message.includes('\n'));
}

/** OVMF's QemuFlashWrite through the MMIO bus. */
function busWrite(bus: Bus, addr: number, data: number[]): void {
  for (let i = 0; i < data.length; i++) { bus.write(addr + i, 1, CMD.PROGRAM); bus.write(addr + i, 1, data[i]!); }
  bus.write(addr + data.length - 1, 1, CMD.READ_ARRAY);
}

test('the VARS size a ROM needs: the next power of two minus the ROM', () => {
  assert.equal(varsSizeFor(CODE_4M), VARS_4M);
  assert.equal(varsSizeFor(0x1e0000), 0x20000);
  assert.equal(varsSizeFor(0x200000), 0);
});

test('CODE ends at 4 GiB on a read-only slot, VARS right below it; the probe switches the VARS slot', async () => {
  const dir = tmp();
  try {
    const { flash, bus, slots } = await make(dir);
    assert.equal(flash.codeBase, 0x1_0000_0000 - CODE_4M);
    assert.equal(flash.varsBase, 0xffc00000);
    assert.deepEqual(slots.get(flash.codeBase), { gpa: flash.codeBase, size: CODE_4M, flags: MEM_READONLY });
    assert.deepEqual(slots.get(0xffc00000), { gpa: 0xffc00000, size: VARS_4M, flags: MEM_READONLY });
    assert.deepEqual(bus.unpostedRanges(), [0xffc00000, flash.codeBase], 'VARS writes are not posted');
    bus.write(0xffc00000, 1, CMD.CLEAR_STATUS);
    assert.ok(slots.has(0xffc00000), 'clear status stays in read-array mode');
    bus.write(0xffc00000, 1, CMD.READ_STATUS);
    assert.ok(!slots.has(0xffc00000), 'status mode: reads must exit');
    assert.equal(bus.read(0xffc00000, 1), 0, 'the probe reads cleared status: flash');
    bus.write(0xffc00000, 1, CMD.READ_ARRAY);
    assert.deepEqual(slots.get(0xffc00000), { gpa: 0xffc00000, size: VARS_4M, flags: MEM_READONLY });
    // CODE: writes dropped.
    bus.write(flash.codeBase + 16, 1, CMD.ERASE);
    bus.write(flash.codeBase + 16, 1, CMD.CONFIRM);
    assert.equal(bus.read(flash.codeBase + 16, 1), pattern(CODE_4M, 3)[16]);
    flash.destroy();
    assert.ok(!slots.has(flash.codeBase) && !slots.has(0xffc00000), 'destroy removes both slots');
    assert.equal(bus.read(flash.codeBase, 1), 0xff, 'and the bus ranges');
  } finally { rmSync(dir, { recursive: true }); }
});

test('VARFILE: programs and erases reach the file and persist into the next run', async () => {
  const dir = tmp();
  try {
    const first = await make(dir);
    const base = first.flash.varsBase;
    busWrite(first.bus, base + 0x1000 + 5, [0xde, 0xad, 0xbe, 0xef]);
    let file = readFileSync(first.varsPath!);
    assert.deepEqual([...file.subarray(0x1005, 0x1009)], [0xde, 0xad, 0xbe, 0xef], 'written when the flash is back in read-array mode');
    first.bus.write(base + 0x3000, 1, CMD.ERASE);
    first.bus.write(base + 0x3000, 1, CMD.CONFIRM);
    file = readFileSync(first.varsPath!);
    assert.ok(file.subarray(0x3000, 0x4000).every((b) => b === 0xff), 'an erase is written when it completes');
    assert.equal(first.bus.read(base + 0x3000, 1), SR.READY);
    // A program the guest never ends with read array reaches the file when the VM ends.
    first.bus.write(base + 0x20, 1, CMD.PROGRAM);
    first.bus.write(base + 0x20, 1, 0x77);
    assert.equal(readFileSync(first.varsPath!)[0x20], pattern(VARS_4M, 5)[0x20]);
    first.flash.destroy();
    assert.equal(readFileSync(first.varsPath!)[0x20], 0x77);
    const second = await make(dir);
    assert.deepEqual([...second.flash.vars.subarray(0x1005, 0x1009)], [0xde, 0xad, 0xbe, 0xef]);
    assert.equal(second.flash.vars[0x3000], 0xff);
    assert.equal(second.flash.vars[0x2fff], pattern(VARS_4M, 5)[0x2fff], 'nothing else changed');
    second.flash.destroy();
  } finally { rmSync(dir, { recursive: true }); }
});

test('without VARFILE: the template beside the ROM, in memory; erased flash without one', async () => {
  const dir = tmp();
  try {
    const template = pattern(VARS_4M, 9);
    writeFileSync(join(dir, 'OVMF_VARS_4M.fd'), template);
    const a = await make(dir, { vars: 'none', romName: 'OVMF_CODE_4M.secboot.fd' });
    assert.deepEqual(Buffer.from(a.flash.vars), template);
    busWrite(a.bus, a.flash.varsBase, [1, 2, 3]);
    assert.deepEqual(readFileSync(join(dir, 'OVMF_VARS_4M.fd')), template, 'the template is never written');
    assert.deepEqual([...a.flash.vars.subarray(0, 3)], [1, 2, 3]);
    a.flash.destroy();
    const b = await make(dir, { vars: 'none', romName: 'OTHER_CODE.fd', rom: CODE_4M });
    assert.ok(b.flash.vars.every((x) => x === 0xff), 'erased: OVMF formats it');
    b.flash.destroy();
  } finally { rmSync(dir, { recursive: true }); }
});

test('bad ROMs and VARFILEs are refused with one line', async () => {
  const dir = tmp();
  try {
    await refused(make(dir, { vars: pattern(VARS_4M - 0x1000, 1) }), /VARFILE .* is 536576 bytes, bootrom .* needs a 540672-byte variable store/);
    rmSync(join(dir, 'vm.vars'));
    await refused(make(dir, { romName: 'odd.fd', rom: 0x1234, vars: 'none' }), /not a whole number of 4 KiB pages/);
    await refused(make(dir, { romName: 'big.fd', rom: 0x1000000 + 0x1000, vars: 'none' }), /is 16781312 bytes, more than the 16 MiB firmware window/);
    await refused(make(dir, { romName: 'empty.fd', rom: 0, vars: 'none' }), /is 0 bytes/);
    await refused(make(dir, { romName: 'whole.fd', rom: 0x200000 }), /holds its own variable store .* takes no VARFILE/);
    await refused(check(join(dir, 'missing.fd'), undefined), /cannot read bootrom .*missing\.fd/);
    await refused(check(join(dir, 'whole.fd'), dir), /variable file .* is not a regular file/);
    await refused(check(join(dir, 'OVMF_CODE_4M.fd'), dir), /variable file .* is not a regular file/);
    const whole = await make(dir, { romName: 'whole.fd', vars: 'none' });
    assert.equal(whole.flash.varsSize, 0, 'a whole volume has no VARS flash');
    assert.equal(whole.slots.size, 1);
    whole.flash.destroy();
  } finally { rmSync(dir, { recursive: true }); }
});

test('a VARFILE that cannot be written is refused with one line', async (t) => {
  const dir = tmp();
  try {
    const rom = join(dir, 'OVMF_CODE_4M.fd');
    writeFileSync(rom, pattern(CODE_4M, 3));
    let varsPath = join(dir, 'ro.vars');
    writeFileSync(varsPath, pattern(VARS_4M, 1));
    chmodSync(varsPath, 0o444);
    if (process.getuid?.() === 0) {
      // root writes through file modes: a sysfs attribute without a write method refuses it.
      varsPath = '/sys/devices/system/cpu/cpu0/topology/core_id';
      if (!existsSync(varsPath)) { t.skip('running as root and no read-only sysfs attribute to try'); return; }
    }
    await refused(check(rom, varsPath), /variable file .* is not writable/);
  } finally { rmSync(dir, { recursive: true }); }
});

function save(f: FirmwareFlash): StateReader {
  const w = new StateWriter();
  f.saveState(w);
  return new StateReader(JSON.parse(JSON.stringify(w.obj)), 'pflash');
}

test('snapshot: mode, status and the store are saved and restored (into VARFILE too); another ROM is refused', async () => {
  const dir = tmp(), dir2 = tmp();
  try {
    const a = await make(dir);
    busWrite(a.bus, a.flash.varsBase + 0x10, [7, 8, 9]);
    a.bus.write(a.flash.varsBase, 1, CMD.ERASE); // pending: reads status
    const state = save(a.flash);
    const b = await make(dir2);
    b.flash.restoreState(state);
    assert.ok(!b.slots.has(0xffc00000), 'restored out of read-array mode: the VARS slot is away');
    assert.equal(b.bus.read(b.flash.varsBase, 1), SR.READY);
    assert.deepEqual([...b.flash.vars.subarray(0x10, 0x13)], [7, 8, 9]);
    assert.deepEqual([...readFileSync(b.varsPath!).subarray(0x10, 0x13)], [7, 8, 9], 'the VARFILE holds the restored store');
    b.bus.write(b.flash.varsBase, 1, CMD.CONFIRM);
    assert.equal(b.flash.vars[0], 0xff, 'the restored erase completes');
    b.flash.destroy();
    // A damaged state: refused before anything changes.
    const c = await make(dir2);
    const before = Buffer.from(c.flash.vars);
    const w = new StateWriter();
    a.flash.saveState(w);
    const bad: Record<string, unknown> = { ...w.obj };
    bad['vars$b64'] = Buffer.alloc(16).toString('base64');
    assert.throws(() => c.flash.restoreState(new StateReader(bad, 'pflash')), SnapshotError);
    bad['vars$b64'] = Buffer.from(a.flash.vars).toString('base64');
    bad['pending$u8'] = 9;
    assert.throws(() => c.flash.restoreState(new StateReader(bad, 'pflash')), SnapshotError);
    assert.deepEqual(Buffer.from(c.flash.vars), before);
    c.flash.destroy();
    a.flash.destroy();
    writeFileSync(join(dir2, 'OVMF_CODE_4M.fd'), pattern(CODE_4M, 4));
    const d = await make(dir2);
    assert.throws(() => d.flash.restoreState(state), /another firmware image/);
    d.flash.destroy();
  } finally { rmSync(dir, { recursive: true }); rmSync(dir2, { recursive: true }); }
});

const haveOvmf = existsSync(join(OVMF, 'OVMF_CODE_4M.fd')) && existsSync(join(OVMF, 'OVMF_VARS_4M.fd'));
test("Debian's OVMF: 4M and 2M builds fit, the template is found, OVMF's probe finds flash, mismatches refused",
  { skip: haveOvmf ? false : `Debian's OVMF is not installed (${OVMF}: apt-get install ovmf)` }, async () => {
    const dir = tmp();
    try {
      for (const [code, vars, base] of [['OVMF_CODE_4M.fd', 'OVMF_VARS_4M.fd', 0xffc00000], ['OVMF_CODE.fd', 'OVMF_VARS.fd', 0xffe00000]] as const) {
        if (!existsSync(join(OVMF, code))) continue;
        const bus = new Bus('mmio');
        const f = await createFirmwareFlash({ romPath: join(OVMF, code), map: fakeMap().map, bus });
        assert.equal(f.varsBase, base);
        assert.deepEqual(Buffer.from(f.vars), readFileSync(join(OVMF, vars)), 'the in-memory store starts as the template');
        assert.equal(Buffer.from(f.vars.subarray(0x28, 0x2c)).toString('latin1'), '_FVH', 'a firmware volume');
        // QemuFlashDetected: the first byte that is neither 0x50, 0x70 nor 0x00, clear status, read status.
        let off = 0;
        while ([0x50, 0x70, 0x00].includes(bus.read(base + off, 1))) off++;
        bus.write(base + off, 1, CMD.CLEAR_STATUS);
        bus.write(base + off, 1, CMD.READ_STATUS);
        assert.equal(bus.read(base + off, 1), 0x00);
        bus.write(base + off, 1, CMD.READ_ARRAY);
        f.destroy();
        const copy = join(dir, vars);
        copyFileSync(join(OVMF, vars), copy);
        const g = await createFirmwareFlash({ romPath: join(OVMF, code), varsPath: copy, map: fakeMap().map, bus: new Bus('mmio') });
        g.destroy();
      }
      copyFileSync(join(OVMF, 'OVMF_VARS_4M.fd'), join(dir, 'v4'));
      if (existsSync(join(OVMF, 'OVMF_CODE.fd'))) {
        await refused(check(join(OVMF, 'OVMF_CODE.fd'), join(dir, 'v4')),
          /is 540672 bytes, bootrom .* needs a 131072-byte variable store/);
      }
    } finally { rmSync(dir, { recursive: true }); }
  });

test('snapshot mid-sequence: the restored flash goes on exactly as the original (mode, pending command, status, store, VARFILE)', async () => {
  let seed = 0x5eed1234;
  const rnd = (n: number) => { seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5; return (seed >>> 0) % n; };
  const cmds = [CMD.READ_ARRAY, CMD.PROGRAM, CMD.PROGRAM_ALT, CMD.ERASE, CMD.CONFIRM, CMD.CLEAR_STATUS, CMD.READ_STATUS, CMD.READ_ID, CMD.CFI_QUERY, CMD.LOCK_SETUP, 0x42];
  // accesses in the first two blocks and anywhere else, writes mostly commands
  const ops = Array.from({ length: 3000 }, () => ({
    write: rnd(2) === 0, size: [1, 1, 2, 4][rnd(4)]!, off: rnd(4) ? rnd(0x2000) : rnd(VARS_4M - 4),
    value: rnd(3) ? cmds[rnd(cmds.length)]! : rnd(0x100),
  }));
  type Made = Awaited<ReturnType<typeof make>>;
  /** One access; a read in read-array mode is KVM's (the slot), otherwise the device's. */
  const step = (x: Made, op: typeof ops[number]): number | undefined => {
    if (op.write) { x.bus.write(x.flash.varsBase + op.off, op.size, op.value); return undefined; }
    if (x.slots.has(x.flash.varsBase)) return Buffer.from(x.flash.vars).readUIntLE(op.off, op.size);
    return x.bus.read(x.flash.varsBase + op.off, op.size);
  };
  for (const cut of [700, 1500, 2400]) {
    const dirs = [tmp(), tmp()];
    try {
      const a = await make(dirs[0]!);
      for (const op of ops.slice(0, cut)) step(a, op);
      const b = await make(dirs[1]!);
      b.flash.restoreState(save(a.flash));
      ops.slice(cut).forEach((op, i) => {
        assert.equal(step(b, op), step(a, op), `access ${cut + i} after a snapshot at ${cut}`);
        assert.equal(b.slots.has(b.flash.varsBase), a.slots.has(a.flash.varsBase), `read-array mode after access ${cut + i}`);
      });
      assert.deepEqual(Buffer.from(b.flash.vars), Buffer.from(a.flash.vars));
      // read array writes the store back to VARFILE
      for (const x of [a, b]) x.bus.write(x.flash.varsBase, 1, CMD.READ_ARRAY);
      assert.deepEqual(readFileSync(b.varsPath!), Buffer.from(b.flash.vars), 'the restored VARFILE holds the store');
      assert.deepEqual(readFileSync(b.varsPath!), readFileSync(a.varsPath!), 'both VARFILEs hold the same store');
      for (const x of [a, b]) x.flash.destroy();
    } finally { for (const d of dirs) rmSync(d, { recursive: true }); }
  }
});
