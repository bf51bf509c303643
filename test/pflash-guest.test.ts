/**
 * Level 2: the firmware flash under a real vCPU on this host's /dev/kvm. A
 * guest program (test/guests/pflash.asm) drives it as OVMF does; its reads
 * right after its writes show that the VARS slot changes before the vCPU
 * goes on (unposted writes), and a loop over the array shows that read-array
 * reads are memory, not exits.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine, ConfigTree, ExitCode } from '../src/index.js';
import { createFirmwareFlash } from '../src/devices/pflash/flash.js';
import { MEM_READONLY } from '../src/kvm/abi.js';
import { kvmUnavailable, guestBin } from './helpers.js';

const skip = kvmUnavailable() ?? (guestBin('pflash') ? undefined : 'guest program pflash.bin not built (nasm missing: run scripts/setup.sh)');
const pattern = (n: number, k: number) => new Uint8Array(n).map((_, i) => (i * k + 1) & 0xff);
const hex = (b: number) => b.toString(16).padStart(2, '0');

test('a guest probes, programs and erases the VARS flash, reads it as memory, and cannot write CODE', { skip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-pflash-guest-'));
  try {
    const rom = pattern(0x37c000, 3), vars = pattern(0x84000, 5);
    writeFileSync(join(dir, 'code.fd'), rom);
    writeFileSync(join(dir, 'vars.fd'), vars);
    const c = new ConfigTree();
    for (const [k, v] of Object.entries({
      cpus: '1', sockets: '1', cores: '1', threads: '1', 'memory.size': '16M', name: 'pflash',
      'boot.raw': guestBin('pflash')!, 'lpc.com1.path': join(dir, 'com1.txt'),
    })) c.set(k, v);
    const m = await Machine.create(c);
    let slot = 1; // past guest RAM's one slot
    const flash = await createFirmwareFlash({ romPath: join(dir, 'code.fd'), varsPath: join(dir, 'vars.fd'), map: (gpa, size, host) => { m.vm.setUserMemoryRegion(slot, gpa, size, host, MEM_READONLY); const s = slot++; return { unmap: () => m.vm.setUserMemoryRegion(s, gpa, 0, 0n) }; }, bus: m.mmio });
    const timer = setTimeout(() => void m.finish(ExitCode.ERROR, 'timed out'), 60_000);
    const code = await m.run();
    clearTimeout(timer);
    const mmioExits = m.exitStats?.mmio ?? 0;
    flash.destroy();
    assert.equal(code, ExitCode.POWEROFF, m.errorMessage);
    const expected = [vars[3]!, vars[3]!, 0x00, 0x00, 0x80, 0xa5, 0x80, 0xff, rom[0x100]!].map(hex).join(' ');
    assert.equal(readFileSync(join(dir, 'com1.txt'), 'latin1'), `${expected} \nD\n`);
    assert.ok(mmioExits < 100, `${mmioExits} MMIO exits: the 64K array reads must not exit`);
    const file = readFileSync(join(dir, 'vars.fd'));
    assert.equal(file[0x10], 0xa5, 'the program reached VARFILE');
    assert.ok(file.subarray(0x1000, 0x2000).every((b) => b === 0xff), 'the erase reached VARFILE');
    assert.equal(file[0x2000], vars[0x2000]);
  } finally { rmSync(dir, { recursive: true }); }
});
