// Loads a real Debian bzImage (and vmlinux when present) if one is at hand:
// lab/out/guest/vmlinuz, or TSHYVE_TEST_KERNEL / TSHYVE_TEST_VMLINUX.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { GuestMemory } from '../../memory/guest-memory.js';
import { loadLinux } from './linux.js';
import { BP, HDR, HDRS_MAGIC } from './boot-params.js';
import { CMDLINE_ADDR, MiB, ZERO_PAGE_ADDR, e820Map } from '../layout.js';
import { buildAcpiTables } from '../acpi/tables.js';

const MEM = 256 * MiB;
const bz = process.env['TSHYVE_TEST_KERNEL'] ?? 'lab/out/guest/vmlinuz';
const elf = process.env['TSHYVE_TEST_VMLINUX'] ?? 'lab/out/guest/vmlinux';
const CMDLINE = 'console=ttyS0 earlyprintk=serial panic=-1 root=/dev/vda ro';

function boot(kernelPath: string) {
  const mem = GuestMemory.ofSize(MEM);
  const rsdpAddr = buildAcpiTables(mem, { cpus: 2 });
  const initrd = new Uint8Array(5 * MiB + 17).map((_, i) => (i * 31) & 0xff);
  const kernel = new Uint8Array(readFileSync(kernelPath));
  const state = loadLinux(mem, { kernel, initrd, cmdline: CMDLINE, memBytes: MEM, rsdpAddr });
  return { mem, state, kernel, initrd, rsdpAddr };
}

function checkZeroPage(mem: GuestMemory, initrd: Uint8Array, rsdpAddr: number, kernelEnd: number): void {
  const zp = ZERO_PAGE_ADDR;
  assert.equal(mem.readU32(zp + HDR.HEADER), HDRS_MAGIC);
  assert.equal(mem.readU8(zp + HDR.TYPE_OF_LOADER), 0xff);
  const cmd = mem.readU32(zp + HDR.CMD_LINE_PTR);
  assert.equal(cmd, CMDLINE_ADDR);
  assert.equal(new TextDecoder().decode(mem.read(cmd, CMDLINE.length)), CMDLINE);
  assert.equal(mem.readU8(cmd + CMDLINE.length), 0);
  const rd = mem.readU32(zp + HDR.RAMDISK_IMAGE);
  assert.equal(mem.readU32(zp + HDR.RAMDISK_SIZE), initrd.length);
  assert.deepEqual(mem.read(rd, initrd.length), initrd);
  assert.ok(rd >= kernelEnd, `initrd at 0x${rd.toString(16)} overlaps the kernel (ends 0x${kernelEnd.toString(16)})`);
  assert.ok(rd + initrd.length <= Math.min(MEM, mem.readU32(zp + HDR.INITRD_ADDR_MAX) + 1));
  assert.equal(mem.readU8(zp + BP.E820_ENTRIES), e820Map(MEM).length);
  assert.equal(mem.readU64(zp + BP.ACPI_RSDP_ADDR), BigInt(rsdpAddr));
}

test('real bzImage: entry, zero page, cmdline and initrd', { skip: existsSync(bz) ? false : `no kernel at ${bz}` }, () => {
  const { mem, state, kernel, initrd, rsdpAddr } = boot(bz);
  const dv = new DataView(kernel.buffer, kernel.byteOffset);
  const pref = Number(dv.getBigUint64(HDR.PREF_ADDRESS, true));
  const initSize = dv.getUint32(HDR.INIT_SIZE, true);
  assert.equal(kernel[HDR.RELOCATABLE_KERNEL], 1);
  assert.equal(state.rip, pref + 0x200);
  const pm = ((kernel[HDR.SETUP_SECTS] || 4) + 1) * 512;
  assert.deepEqual(mem.read(pref, 4096), kernel.subarray(pm, pm + 4096));
  assert.ok(mem.readU16(ZERO_PAGE_ADDR + HDR.VERSION) >= 0x20e);
  assert.equal(mem.readU32(ZERO_PAGE_ADDR + HDR.CMDLINE_SIZE), dv.getUint32(HDR.CMDLINE_SIZE, true));
  checkZeroPage(mem, initrd, rsdpAddr, pref + initSize);
});

test('real vmlinux (ELF): entry and zero page', { skip: existsSync(elf) ? false : `no vmlinux at ${elf}` }, () => {
  const { mem, state, initrd, rsdpAddr } = boot(elf);
  assert.equal(state.rip, 0x1000000);
  checkZeroPage(mem, initrd, rsdpAddr, 0x1000000);
});
